import sys
from pathlib import Path

# this workflow's own package, found from the script's folder (nothing installs it into a conda env)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pancreas_mtl.logs import log_to_file
from pancreas_mtl.nnunet_env import set_nnunet_paths

# nnU-Net starts worker processes with "spawn", which re-imports this module
if __name__ == "__main__":
    log_to_file(snakemake.log[0])
    set_nnunet_paths(**snakemake.params.nnunet_paths)

    from pancreas_mtl.gpu_slots import prepare_gpu_job
    from pancreas_mtl.scratch import stage_preprocessed_for_job

    prepare_gpu_job(snakemake.config["train"]["device"])
    stage_preprocessed_for_job(Path(snakemake.input.plans).parent, snakemake.config["node_local_scratch"])

    from pancreas_mtl.training.run import train_fold

    train_fold(
        snakemake.params.dataset_id,
        snakemake.params.configuration,
        int(snakemake.wildcards.fold),
        snakemake.params.plans_identifier,
        snakemake.params.train,
        threads=snakemake.threads,
        # read here, not a rule param: a new mirror batch or step must not retrain a model
        predict=snakemake.config["predict"],
    )
