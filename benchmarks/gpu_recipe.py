"""The GPU recipe at real scale, against stock nnU-Net, in one run (about 8 minutes on one GPU).

On real-size synthetic cases (`demo.size: real`: about 59 x 117 x 180 voxels at 2.0 x 0.73 x 0.73 mm)
planned as config/gpu.yaml plans them (nnUNetPlannerResEncM, 3d_fullres), it measures

- seconds per training iteration of stock nnUNetTrainer and of nnUNetTrainerMultiTask, same plans
  and data, AMP on, each compiled as nnU-Net decides (`_do_i_compile`: CUDA and nnUNet_compile
  not false), after warm-up steps that include the compilation (timed apart);
- whether the head's features stayed finite in every step (fp16 overflow was issue 9, defect 1);
- peak GPU memory of each arm (training and inference);
- inference seconds per case of ours (`load_predictor`) and of stock `nnUNetPredictor` on the same
  model and cases with the same test-time mirroring, and the mean mask Dice of ours vs stock;

writes them as JSON and prints a Markdown table for docs/performance.md.
Targets (issue 9): training step <= 1.10x stock's, inference <= 1.0x stock's per case, mask Dice
vs stock >= 0.99.

Usage:
    python benchmarks/gpu_recipe.py [--work DIR] [--json PATH]   # on a CUDA machine
    python benchmarks/gpu_recipe.py --dry-cpu                    # tiny, on CPU: proves the script runs

`--dry-cpu` runs every step at toy size on the CPU (quick demo cases, a small derived
configuration, two iterations, one case); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

DATASET_ID = 509
DATASET_NAME = "GpuRecipe"
TARGETS = {"training_ratio_max": 1.10, "inference_ratio_max": 1.0, "mask_dice_min": 0.99}
# the dry run's configuration: tiny, derived as the default config derives 3d_cpu
DRY_CONFIGURATION = {
    "base": "3d_fullres",
    "spacing": [2.5, 1.5, 1.5],
    "patch_size": [16, 32, 32],
    "features_per_stage": [8, 16, 32],
    "batch_size": 2,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "results_gpu_recipe",
                        help="working folder: cohort, nnU-Net trees, predictions (reused when rerun)")
    parser.add_argument("--json", type=Path, default=None,
                        help="report file (default: WORK/gpu_recipe.json)")
    parser.add_argument("--train-cases", type=int, default=6, help="training cases (default 6)")
    parser.add_argument("--validation-cases", type=int, default=3, help="validation cases (default 3)")
    parser.add_argument("--test-cases", type=int, default=3, help="timed inference cases (default 3)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed training steps per arm, compilation included (default 5)")
    parser.add_argument("--iterations", type=int, default=25,
                        help="timed training steps per arm (default 25)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data augmentation processes (default: CPUs - 2, at most 12)")
    parser.add_argument("--no-tta", action="store_true", help="inference without mirroring")
    parser.add_argument("--dry-cpu", action="store_true",
                        help="toy size on the CPU, to prove the script end to end")
    args = parser.parse_args(argv)
    if args.dry_cpu:
        args.train_cases, args.validation_cases, args.test_cases = 3, 3, 1
        args.warmup, args.iterations = 1, 2
    if args.json is None:
        args.json = args.work / "gpu_recipe.json"
    return args


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def prepare(args, planner: str, configuration: str, custom: dict | None) -> dict:
    """Synthesize the cohort, ingest, split, plan and preprocess it (skipped when already done)."""
    from pancreas_mtl.cohort import write_raw_dataset
    from pancreas_mtl.demo import make_demo_cohort
    from pancreas_mtl.nnunet_dataset import write_splits_for_table
    from pancreas_mtl.nnunet_env import dataset_name, plans_identifier, set_nnunet_paths
    from pancreas_mtl.planning import plan_and_preprocess

    work = args.work
    set_nnunet_paths(work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results")
    name = dataset_name(DATASET_ID, DATASET_NAME)
    raw = work / "nnUNet_raw" / name
    subtypes = work / "dataset" / "subtypes.csv"
    plans = plans_identifier(planner)
    plans_file = work / "nnUNet_preprocessed" / name / f"{plans}.json"
    timings = {}
    start = time.perf_counter()
    if not (work / "cohort").is_dir():
        make_demo_cohort(
            work / "cohort", args.train_cases, args.validation_cases, args.test_cases, seed=0,
            workers=max(1, min(8, os.cpu_count() or 1)), size="quick" if args.dry_cpu else "real",
        )
    timings["demo_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    if not raw.is_dir():
        write_raw_dataset(
            work / "cohort", raw, subtype_table=subtypes,
            label_fix_report=work / "dataset" / "label_fix_report.csv", dataset_name=DATASET_NAME,
            workers=max(1, min(8, os.cpu_count() or 1)),
        )
        write_splits_for_table(subtypes, work / "dataset" / "splits_final.json")
    if not plans_file.is_file():
        plan_and_preprocess(
            DATASET_ID, planner, configuration, custom,
            num_processes=max(1, min(8, os.cpu_count() or 1)),
            splits_file=work / "dataset" / "splits_final.json", subtype_table=subtypes,
        )
    timings["plan_and_preprocess_seconds"] = time.perf_counter() - start
    plan = json.loads(plans_file.read_text())
    conf = plan["configurations"][configuration]
    fingerprint = json.loads((plans_file.parent / "dataset_fingerprint.json").read_text())
    shapes = fingerprint["shapes_after_crop"]
    return {
        "raw": raw,
        "subtypes": subtypes,
        "plans": plans,
        "summary": {
            "planner": planner,
            "configuration": configuration,
            "patch_size": conf["patch_size"],
            "batch_size": conf["batch_size"],
            "spacing": conf["spacing"],
            "median_shape_after_crop": [statistics.median(s[i] for s in shapes) for i in range(3)],
            "original_median_spacing": plan["original_median_spacing_after_transp"],
            **timings,
        },
    }


def time_training(trainer_name: str, settings: dict, plans: str, configuration: str, device,
                  warmup: int, iterations: int) -> tuple[object, dict]:
    """Seconds per training step of one trainer after warm-up (compilation included there)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from torch._dynamo.eval_frame import OptimizedModule

    from pancreas_mtl.nnunet_env import trainer_settings

    with trainer_settings(settings):
        trainer = get_trainer_from_args(
            str(DATASET_ID), configuration, 0, trainer_name, plans, device=device
        )
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = False
            torch.backends.cudnn.benchmark = True
        start = time.perf_counter()
        trainer.on_train_start()
        setup = time.perf_counter() - start
    trainer.network.train()
    reset_peak(device)
    outputs = []
    start = time.perf_counter()
    for _ in range(warmup):
        outputs.append(trainer.train_step(next(trainer.dataloader_train)))
    synchronize(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(iterations):
        outputs.append(trainer.train_step(next(trainer.dataloader_train)))
    synchronize(device)
    seconds = (time.perf_counter() - start) / max(1, iterations)
    stats = {
        "trainer": trainer_name,
        "compiled": isinstance(trainer.network, OptimizedModule),
        "setup_seconds": setup,
        "warmup_seconds": warm,
        "seconds_per_iteration": seconds,
        "peak_memory_gib": peak_gib(device),
        "losses_finite": all(bool(float(o["loss"]) == float(o["loss"])) for o in outputs),
    }
    if "head_finite" in outputs[0]:
        stats["head_finite_steps"] = sum(bool(o["head_finite"]) for o in outputs)
        stats["steps"] = len(outputs)
    return trainer, stats


def stop_loaders(trainer) -> None:
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()


def time_inference(model_folder: Path, images, out: Path, device, tta: bool) -> dict:
    """Seconds per case of stock nnUNetPredictor and ours (warm, after one untimed case each),
    the masks' Dice between them and whether our subtype probabilities are finite."""
    import numpy as np

    from pancreas_mtl.inference.benchmark import load_warm_predictors, mean_mask_dice

    predict, load_seconds = load_warm_predictors(
        model_folder, [0], "checkpoint_final.pth", str(device), tta, 0.5
    )
    arms = ("stock", "multitask")
    seconds = {arm: [] for arm in arms}
    peaks = {}
    probabilities = []
    for arm in arms:
        folder = out / arm
        folder.mkdir(parents=True, exist_ok=True)
        predict[arm](images[0][1], None if arm == "multitask" else os.fspath(folder / "warmup"))
        reset_peak(device)
        for case_id, image in images:
            synchronize(device)
            start = time.perf_counter()
            result = predict[arm](image, os.fspath(folder / case_id))
            synchronize(device)
            seconds[arm].append(time.perf_counter() - start)
            if arm == "multitask":
                probabilities.append(np.asarray(result, dtype=float))
        peaks[arm] = peak_gib(device)
    case_ids = [c for c, _ in images]
    per_case = {arm: float(np.mean(v)) for arm, v in seconds.items()}
    return {
        "cases": len(images),
        "tta": tta,
        "load_seconds": load_seconds,
        "stock_seconds_per_case": per_case["stock"],
        "multitask_seconds_per_case": per_case["multitask"],
        "ratio_multitask_to_stock": per_case["multitask"] / per_case["stock"],
        "mask_dice_vs_stock": mean_mask_dice(out / "multitask", out / "stock", case_ids),
        "subtype_probabilities_finite": bool(np.isfinite(probabilities).all()),
        "peak_memory_gib": peaks,
    }


def markdown_table(report: dict) -> str:
    train, infer = report["training"], report["inference"]

    def gib(value):
        return "-" if value is None else f"{value:.1f}"

    rows = [
        "| | stock nnU-Net | ours | ratio (target) |",
        "|---|---|---|---|",
        f"| training s/iteration ({'compiled' if train['stock']['compiled'] else 'eager'} / "
        f"{'compiled' if train['multitask']['compiled'] else 'eager'}) | "
        f"{train['stock']['seconds_per_iteration']:.3f} | {train['multitask']['seconds_per_iteration']:.3f} | "
        f"{train['ratio_multitask_to_stock']:.3f} (<= {TARGETS['training_ratio_max']}) |",
        f"| training peak GPU memory, GiB | {gib(train['stock']['peak_memory_gib'])} | "
        f"{gib(train['multitask']['peak_memory_gib'])} | |",
        f"| inference s/case (TTA {'on' if infer['tta'] else 'off'}) | "
        f"{infer['stock_seconds_per_case']:.2f} | {infer['multitask_seconds_per_case']:.2f} | "
        f"{infer['ratio_multitask_to_stock']:.3f} (<= {TARGETS['inference_ratio_max']}) |",
        f"| inference peak GPU memory, GiB | {gib(infer['peak_memory_gib']['stock'])} | "
        f"{gib(infer['peak_memory_gib']['multitask'])} | |",
        f"| mask Dice ours vs stock | | {infer['mask_dice_vs_stock']:.4f} | (>= {TARGETS['mask_dice_min']}) |",
        f"| head features finite | | {train['multitask']['head_finite_steps']}/{train['multitask']['steps']} steps, "
        f"probabilities {'finite' if infer['subtype_probabilities_finite'] else 'NOT finite'} | |",
    ]
    return "\n".join(rows)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    import yaml

    from pancreas_mtl.inference.benchmark import describe_device
    from pancreas_mtl.inference.predictor import split_images
    from pancreas_mtl.nnunet_env import ensure_ext_trainer_path, trainer_name
    from pancreas_mtl.training.settings import settings_from_config, train_section

    if args.dry_cpu:
        device = torch.device("cpu")
        planner, configuration, custom = "ExperimentPlanner", "3d_cpu", DRY_CONFIGURATION
        workers = 0
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_recipe.py needs CUDA (use --dry-cpu to try it on a CPU)")
        device = torch.device("cuda")
        gpu = yaml.safe_load((REPO / "config" / "gpu.yaml").read_text())
        planner, configuration, custom = gpu["plan"]["planner"], gpu["plan"]["configuration"], None
        workers = args.workers if args.workers is not None else max(1, min(12, (os.cpu_count() or 4) - 2))
        torch.set_num_threads(1)
    ensure_ext_trainer_path()
    os.environ["nnUNet_extTrainer"] += os.pathsep + str(HERE / "stock_trainer")

    report = {"device": describe_device(device), "torch": torch.__version__, "dry_cpu": args.dry_cpu,
              "nnUNet_compile": os.environ.get("nnUNet_compile", "(unset: on for CUDA)"),
              "targets": TARGETS}
    start = time.perf_counter()
    data = prepare(args, planner, configuration, custom)
    report["data"] = {"size": "quick" if args.dry_cpu else "real", "train_cases": args.train_cases,
                      "validation_cases": args.validation_cases, **data["summary"]}
    print(f"data ready in {time.perf_counter() - start:.0f} s: {json.dumps(report['data'])}", flush=True)
    # after planning: nnU-Net's planner sets torch threads from it, and 0 is no thread count
    os.environ["nnUNet_n_proc_DA"] = str(workers)

    gpu_train = yaml.safe_load((REPO / "config" / "gpu.yaml").read_text())["train"]
    # the head's loss from the first step, so its features and gradients are exercised
    settings = {**settings_from_config(train_section(gpu_train)), "cls_warmup_epochs": 0,
                "cls_ramp_epochs": 0, "case_level_refit": False}
    training = {}
    for arm, name in (("stock", "nnUNetTrainerStockSchedule"), ("multitask", trainer_name("lesion_pooling"))):
        trainer, training[arm] = time_training(
            name, settings, data["plans"], configuration, device, args.warmup, args.iterations
        )
        print(f"training {arm}: {json.dumps(training[arm])}", flush=True)
        if arm == "multitask":
            trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
            model_folder = Path(trainer.output_folder).parent
        stop_loaders(trainer)
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    training["ratio_multitask_to_stock"] = (
        training["multitask"]["seconds_per_iteration"] / training["stock"]["seconds_per_iteration"]
    )
    report["training"] = training

    images = split_images(data["raw"], data["subtypes"], "test")[: args.test_cases]
    report["inference"] = time_inference(
        model_folder, images, args.work / "predictions", device, tta=not args.no_tta
    )
    report["seconds_total"] = time.perf_counter() - start
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report))
    print(f"report: {args.json}")
    return report


if __name__ == "__main__":
    main()
