from pancreas_mtl.logs import log_to_file

log_to_file(snakemake.log[0])

from pancreas_mtl.evaluation.baseline import run_baseline

run_baseline(
    snakemake.input.raw,
    snakemake.input.subtypes,
    snakemake.input.predictions,
    snakemake.output.metrics,
)
