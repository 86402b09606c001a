import sys
from pathlib import Path

# this workflow's own package, found from the script's folder (nothing installs it into a conda env)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pancreas_mtl.logs import log_to_file

log_to_file(snakemake.log[0])

from pancreas_mtl.evaluation.validation import plot_split_overlays

plot_split_overlays(
    snakemake.input.predictions,
    snakemake.input.raw,
    snakemake.input.subtypes,
    snakemake.params.split,
    snakemake.output[0],
    test_labels_dir=snakemake.input.get("test_labels"),
)
