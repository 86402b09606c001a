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

    from pancreas_mtl.planning import plan_and_preprocess

    plan_and_preprocess(
        snakemake.params.dataset_id,
        snakemake.params.planner,
        snakemake.params.configuration,
        snakemake.params.custom_configuration,
        num_processes=snakemake.threads,
        splits_file=snakemake.input.splits,
        subtype_table=snakemake.input.subtypes,
    )
