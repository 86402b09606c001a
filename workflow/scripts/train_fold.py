from pancreas_mtl.logs import log_to_file
from pancreas_mtl.nnunet_env import set_nnunet_paths

# nnU-Net starts worker processes with "spawn", which re-imports this module
if __name__ == "__main__":
    log_to_file(snakemake.log[0])
    set_nnunet_paths(**snakemake.params.nnunet_paths)

    from pancreas_mtl.training.run import train_fold

    train_fold(
        snakemake.params.dataset_id,
        snakemake.params.configuration,
        int(snakemake.wildcards.fold),
        snakemake.params.plans_identifier,
        snakemake.params.train,
        threads=snakemake.threads,
    )
