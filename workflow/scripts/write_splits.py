from pancreas_mtl.logs import log_to_file

log_to_file(snakemake.log[0])

from pancreas_mtl.nnunet_dataset import write_splits_for_table

write_splits_for_table(
    snakemake.input.subtypes,
    snakemake.output.splits,
    cv_folds=snakemake.params.cv_folds,
    seed=snakemake.params.seed,
)
