import sys
from pathlib import Path

# this workflow's own package, found from the script's folder (nothing installs it into a conda env)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pancreas_mtl.logs import log_to_file

log_to_file(snakemake.log[0])

from pancreas_mtl.inference.model_package import pack_model

pack_model(
    snakemake.params.model,
    snakemake.params.folds,
    snakemake.output[0],
    checkpoints=snakemake.params.checkpoints,
)
