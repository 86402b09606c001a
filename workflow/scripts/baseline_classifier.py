import sys
from pathlib import Path

# this workflow's own package, found from the script's folder (nothing installs it into a conda env)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pancreas_mtl.logs import log_to_file

log_to_file(snakemake.log[0])

from pancreas_mtl.evaluation.baseline import run_baseline

run_baseline(
    snakemake.input.raw,
    snakemake.input.subtypes,
    snakemake.input.train_predictions,
    snakemake.input.predictions,
    snakemake.output.metrics,
    test_prediction_dir=snakemake.input.test_predictions,
    test_labels_dir=snakemake.params.test_labels or None,
)
