import sys
from pathlib import Path

# this workflow's own package, found from the script's folder (nothing installs it into a conda env)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pancreas_mtl.logs import log_to_file

# worker processes started with "spawn" re-import this module
if __name__ == "__main__":
    log_to_file(snakemake.log[0])

    from pancreas_mtl.demo import make_demo_cohort

    make_demo_cohort(
        snakemake.output.cohort,
        n_train=snakemake.params.n_train,
        n_validation=snakemake.params.n_validation,
        n_test=snakemake.params.n_test,
        seed=snakemake.params.seed,
        workers=snakemake.threads,
        n_subtypes=snakemake.params.n_subtypes,
        difficulty=snakemake.params.difficulty,
        size=snakemake.params.size,
        test_labels_dir=snakemake.output.test_labels,
    )
