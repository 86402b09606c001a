from pancreas_mtl.logs import log_to_file, set_nnunet_paths

# nnU-Net starts worker processes with "spawn", which re-imports this module
if __name__ == "__main__":
    log_to_file(snakemake.log[0])
    set_nnunet_paths(**snakemake.params.nnunet_paths)

    from pancreas_mtl.training.run import train_fold
    from pancreas_mtl.training.settings import settings_from_config

    train_fold(
        snakemake.params.dataset_id,
        snakemake.params.configuration,
        int(snakemake.wildcards.fold),
        snakemake.params.plans_identifier,
        snakemake.params.head,
        settings_from_config(snakemake.params.train),
        device=snakemake.params.device,
        threads=snakemake.threads,
        data_augmentation_workers=snakemake.params.train["data_augmentation_workers"],
    )
