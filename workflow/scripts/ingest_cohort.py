import sys
from pathlib import Path

# this workflow's own package, found from the script's folder (nothing installs it into a conda env)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pancreas_mtl.logs import log_to_file

# worker processes started with "spawn" re-import this module
if __name__ == "__main__":
    log_to_file(snakemake.log[0])

    from pancreas_mtl.cohort import write_raw_dataset

    write_raw_dataset(
        snakemake.input.cohort,
        snakemake.output.raw,
        subtype_table=snakemake.output.subtypes,
        label_fix_report=snakemake.output.label_fix_report,
        dataset_name=snakemake.params.dataset_name,
        label_tolerance=snakemake.params.label_tolerance,
        workers=snakemake.threads,
    )
