import sys
from pathlib import Path

# this workflow's own package, found from the script's folder (nothing installs it into a conda env)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pancreas_mtl.logs import log_to_file

# nnU-Net starts worker processes with "spawn", which re-imports this module
if __name__ == "__main__":
    log_to_file(snakemake.log[0])

    from pancreas_mtl.gpu_slots import prepare_gpu_job

    prepare_gpu_job(snakemake.config["train"]["device"])

    from pancreas_mtl.inference.predictor import predict_images

    predict_images(
        snakemake.input.model,
        snakemake.input.images,
        snakemake.output[0],
        checkpoint=snakemake.params.checkpoint,
        device=snakemake.params.device,
        tta=snakemake.params.tta,
        step_size=snakemake.params.step_size,
        mirror_batch=snakemake.params.mirror_batch,
        threads=snakemake.threads,
    )
