import sys
from pathlib import Path

# this workflow's own package, found from the script's folder (nothing installs it into a conda env)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pancreas_mtl.logs import log_to_file

log_to_file(snakemake.log[0])

from pancreas_mtl.evaluation.validation import evaluate_validation

evaluate_validation(
    snakemake.input.predictions,
    snakemake.input.raw,
    snakemake.input.subtypes,
    output_dir=snakemake.params.output_dir,
    confusion_png=snakemake.output.confusion,
    dsc_png=snakemake.output.dsc,
    reliability_png=snakemake.output.reliability,
    test_prediction_dir=snakemake.input.get("test_predictions"),
    test_labels_dir=snakemake.input.get("test_labels"),
)
