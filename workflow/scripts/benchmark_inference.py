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

    from pancreas_mtl.gpu_slots import prepare_gpu_job

    prepare_gpu_job(snakemake.config["train"]["device"])

    from pancreas_mtl.inference.benchmark import benchmark_inference
    from pancreas_mtl.inference.predictor import split_images

    benchmark_inference(
        snakemake.params.model,
        snakemake.params.folds,
        snakemake.params.dataset_id,
        snakemake.params.configuration,
        snakemake.params.plans_identifier,
        snakemake.params.trainer,
        split_images(snakemake.input.raw, snakemake.input.subtypes, "test")[: snakemake.params.cases],
        Path(snakemake.output.speed).parent,
        device=snakemake.params.device,
        tta=snakemake.params.tta,
        repeats=snakemake.params.repeats,
        warmup=snakemake.params.warmup,
        checkpoint=snakemake.params.checkpoint,
        step_size=snakemake.params.step_size,
    )
