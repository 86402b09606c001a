"""Inference speed: stock nnUNetv2_predict, stock plus a classification pass, and the multi-task predictor.

Every arm is a separate command in its own process, so each pays its own start-up (imports,
model load) as a user would; the stock arm is the real `nnUNetv2_predict`. All arms use the same
model folder, folds, checkpoint, cases, device, torch threads and test-time mirroring. Arms are
interleaved within each repeat so that drifts in machine load hit all of them alike; one warm-up
round (file cache, CUDA start) is discarded and the median of the timed repeats is reported.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..evaluation.metrics import dice
from ..layout import PREDICTION_TABLE, check_model_folder, image_file_name, model_file_ending, read_prediction_table
from ..nnunet_env import (
    PATH_VARIABLES,
    dataset_prefix,
    default_threads,
    ensure_ext_trainer_path,
    model_folder_name,
    resolve_device,
)

logger = logging.getLogger(__name__)

ARMS = ("stock", "two_pass", "multitask")
STOCK_PROGRAM = "nnUNetv2_predict"
MULTITASK_PROGRAM = "pancreas-mtl-predict"
MASK_LABELS = (1, 2)
REPORT_NAME = "inference_speed.json"
PLOT_NAME = "inference_speed.png"


def arm_output_folders(work_dir: str | os.PathLike) -> dict[str, Path]:
    """Where each command of each arm writes (the two-pass arm has two)."""
    work_dir = Path(work_dir)
    return {
        "stock": work_dir / "stock",
        "two_pass_segmentation": work_dir / "two_pass" / "segmentation",
        "two_pass_classification": work_dir / "two_pass" / "classification",
        "multitask": work_dir / "multitask",
    }


def arm_commands(
    input_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    model_folder: str | os.PathLike,
    folds: Sequence[int],
    dataset_id: int,
    configuration: str,
    plans_identifier: str,
    trainer_name: str,
    device_type: str,
    tta: bool,
    threads: int,
    checkpoint: str = "checkpoint_final.pth",
    step_size: float = 0.5,
) -> dict[str, list[list[str]]]:
    """Command lines of each arm, run one after the other; the first word is the program name."""
    out = arm_output_folders(work_dir)
    folds = [str(int(f)) for f in folds]
    tta_flag = [] if tta else ["--disable_tta"]

    def stock(output: Path) -> list[str]:
        return [
            STOCK_PROGRAM, "-i", os.fspath(input_dir), "-o", os.fspath(output),
            "-d", str(int(dataset_id)), "-c", configuration, "-p", plans_identifier,
            "-tr", trainer_name, "-f", *folds, "-chk", checkpoint, "-step_size", str(step_size),
            "-device", device_type, "--disable_progress_bar", *tta_flag,
        ]

    def multitask(output: Path, *extra: str) -> list[str]:
        return [
            MULTITASK_PROGRAM, "-i", os.fspath(input_dir), "-o", os.fspath(output),
            "-m", os.fspath(model_folder), "-f", *folds, "-chk", checkpoint,
            "--step_size", str(step_size), "-device", device_type, "--threads", str(int(threads)),
            *tta_flag, *extra,
        ]

    return {
        "stock": [stock(out["stock"])],
        "two_pass": [
            stock(out["two_pass_segmentation"]),
            multitask(out["two_pass_classification"], "--classify_only"),
        ],
        "multitask": [multitask(out["multitask"])],
    }


def run_interleaved(
    arms: Sequence[str], repeats: int, run_arm: Callable[[str], float], warmup: int = 1
) -> dict[str, list[float]]:
    """Run arms in turn (a, b, c, a, b, c, ...), `warmup` rounds untimed then `repeats` timed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    for round_index in range(warmup + repeats):
        for arm in arms:
            elapsed = run_arm(arm)
            if round_index >= warmup:
                seconds[arm].append(float(elapsed))
    return seconds


def median_seconds(per_repeat: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {arm: float(statistics.median(values)) for arm, values in per_repeat.items()}


def mask_dice(a: np.ndarray, b: np.ndarray, labels: Iterable[int] = MASK_LABELS) -> float:
    """Dice between two label masks, averaged over labels; a label absent from both counts 1.0."""
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean([dice(a == label, b == label) for label in labels]))


def mean_mask_dice(
    folder: str | os.PathLike, reference_folder: str | os.PathLike, case_ids: Sequence[str],
    file_ending: str = ".nii.gz",
) -> float:
    """Mean over cases of `mask_dice` between `<case><file_ending>` in two folders."""
    import nibabel as nib

    scores = []
    for case_id in case_ids:
        ours = np.asarray(nib.load(Path(folder) / f"{case_id}{file_ending}").dataobj)
        reference = np.asarray(nib.load(Path(reference_folder) / f"{case_id}{file_ending}").dataobj)
        scores.append(mask_dice(ours, reference))
    return float(np.mean(scores))


def subtype_agreement(csv_a: str | os.PathLike, csv_b: str | os.PathLike) -> float:
    """Fraction of cases given the same subtype in two subtype_results.csv files."""
    a = read_prediction_table(csv_a)["Subtype"]
    b = read_prediction_table(csv_b)["Subtype"].reindex(a.index)
    return float((a == b).mean())


def speed_report(
    cases: int,
    device: str,
    per_repeat_seconds: Mapping[str, Sequence[float]],
    mask_dice_vs_stock: float,
    **details,
) -> dict:
    """The INTERFACE fields of inference_speed.json from per-repeat timings, then extra details."""
    medians = median_seconds(per_repeat_seconds)
    stock, two_pass, multitask = (medians[arm] for arm in ARMS)
    return {
        "cases": int(cases),
        "device": str(device),
        "stock_seconds": stock,
        "two_pass_seconds": two_pass,
        "multitask_seconds": multitask,
        "speedup_vs_stock": stock / multitask,
        "speedup_vs_two_pass": two_pass / multitask,
        "mask_dice_vs_stock": float(mask_dice_vs_stock),
        "per_repeat_seconds": {arm: [float(s) for s in per_repeat_seconds[arm]] for arm in ARMS},
        "seconds_per_case": {arm: medians[arm] / int(cases) for arm in ARMS},
        **details,
    }


def write_speed_report(report: Mapping, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def format_ratios(report: Mapping) -> str:
    return (
        f"multi-task vs stock nnUNetv2_predict: {report['speedup_vs_stock']:.2f}x, "
        f"vs two-pass: {report['speedup_vs_two_pass']:.2f}x "
        f"({report['cases']} cases on {report['device']}; median seconds stock "
        f"{report['stock_seconds']:.1f}, two-pass {report['two_pass_seconds']:.1f}, multi-task "
        f"{report['multitask_seconds']:.1f}); mask Dice vs stock {report['mask_dice_vs_stock']:.4f}"
    )


def resolve_program(command: Sequence[str]) -> list[str]:
    """The command with its program found beside this Python first (same environment), then on PATH."""
    name, *rest = command
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [os.fspath(beside), *rest]
    found = shutil.which(name)
    if found:
        return [found, *rest]
    if name == MULTITASK_PROGRAM:
        return [sys.executable, "-m", "pancreas_mtl.inference.cli", *rest]
    raise FileNotFoundError(f"{name} is not installed in this environment (nor on PATH)")


def describe_device(device) -> str:
    """'cpu', or 'cuda: <GPU name>'."""
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device.index or 0)}"
    return device.type


def prediction_environment(model_folder: Path, dataset_id: int, trainer_name: str,
                           plans_identifier: str, configuration: str) -> dict[str, str]:
    """Environment for the arms' processes; checks that stock nnU-Net will load `model_folder`."""
    missing = [v for v in PATH_VARIABLES.values() if not os.environ.get(v)]
    if missing:
        raise ValueError(f"set {', '.join(missing)}: stock nnUNetv2_predict finds the model through them")
    ensure_ext_trainer_path()
    env = dict(os.environ)
    # stock nnU-Net resolves nnUNet_results/DatasetXXX_*/trainer__plans__configuration itself
    expected_parent = Path(env["nnUNet_results"]).resolve()
    if (
        model_folder.name != model_folder_name(trainer_name, plans_identifier, configuration)
        or model_folder.parent.parent.resolve() != expected_parent
        or not model_folder.parent.name.startswith(dataset_prefix(dataset_id))
    ):
        raise ValueError(
            f"model folder {model_folder} is not where nnUNetv2_predict -d {dataset_id} -tr "
            f"{trainer_name} -p {plans_identifier} -c {configuration} looks "
            f"(under nnUNet_results={env['nnUNet_results']}); the arms would use different models"
        )
    return env


def link_images(images: Sequence[tuple[str, str | os.PathLike]], folder: Path, file_ending: str) -> None:
    """An input folder holding only the chosen cases, named as nnU-Net expects."""
    folder.mkdir(parents=True, exist_ok=True)
    for case_id, image in images:
        target = folder / image_file_name(case_id, file_ending)
        source = Path(image).resolve()
        if not source.is_file():
            raise FileNotFoundError(f"image of case {case_id} not found: {image}")
        try:
            target.symlink_to(source)
        except OSError:
            shutil.copyfile(source, target)


def benchmark_inference(
    model_folder: str | os.PathLike,
    folds: Sequence[int],
    dataset_id: int,
    configuration: str,
    plans_identifier: str,
    trainer_name: str,
    images: Sequence[tuple[str, str | os.PathLike]],
    output_dir: str | os.PathLike,
    device: str = "auto",
    tta: bool = True,
    repeats: int = 3,
    checkpoint: str = "checkpoint_final.pth",
    step_size: float = 0.5,
    warmup: int = 1,
) -> dict:
    """Time the three arms on `images`; write inference_speed.json and .png in output_dir."""
    import torch

    from ..evaluation.plots import plot_inference_speed

    model_folder = Path(model_folder).resolve()
    images = list(images)
    if not images:
        raise ValueError("no images to benchmark")
    check_model_folder(model_folder, folds, checkpoint)
    env = prediction_environment(model_folder, dataset_id, trainer_name, plans_identifier, configuration)
    torch_device = resolve_device(device)
    threads = default_threads(torch_device.type)
    file_ending = model_file_ending(model_folder)
    case_ids = [case_id for case_id, _ in images]
    output_dir = Path(output_dir)

    with tempfile.TemporaryDirectory(prefix="pancreas_mtl_benchmark_") as tmp:
        work = Path(tmp)
        link_images(images, work / "input", file_ending)
        commands = arm_commands(
            work / "input", work, model_folder, folds, dataset_id, configuration,
            plans_identifier, trainer_name, torch_device.type, tta, threads, checkpoint, step_size,
        )
        outputs = arm_output_folders(work)
        parts: dict[str, list[float]] = {"segmentation": [], "classification": []}

        def run_arm(arm: str) -> float:
            elapsed = []
            for command in commands[arm]:
                output = Path(command[command.index("-o") + 1])
                shutil.rmtree(output, ignore_errors=True)
                logger.info("%s: %s", arm, " ".join(command))
                start = time.perf_counter()
                subprocess.run(resolve_program(command), env=env, check=True)
                elapsed.append(time.perf_counter() - start)
            if arm == "two_pass":
                parts["segmentation"].append(elapsed[0])
                parts["classification"].append(elapsed[1])
            return sum(elapsed)

        per_repeat = run_interleaved(ARMS, repeats, run_arm, warmup=warmup)
        command_lines = {
            arm: [" ".join(c).replace(os.fspath(work), "<tmp>") for c in cmds]
            for arm, cmds in commands.items()
        }
        for part in parts.values():
            del part[:warmup]
        agreement_dice = mean_mask_dice(outputs["multitask"], outputs["stock"], case_ids, file_ending)
        agreement = subtype_agreement(
            outputs["two_pass_classification"] / PREDICTION_TABLE,
            outputs["multitask"] / PREDICTION_TABLE,
        )

    report = speed_report(
        len(images),
        # every arm gets the bare device type, as nnUNetv2_predict takes it: the first visible GPU
        describe_device(torch.device(torch_device.type)),
        per_repeat,
        agreement_dice,
        repeats=int(repeats),
        warmup=int(warmup),
        tta=bool(tta),
        step_size=float(step_size),
        folds=[int(f) for f in folds],
        checkpoint=checkpoint,
        case_ids=case_ids,
        torch_threads=int(threads),
        torch_version=torch.__version__,
        nnunetv2_version=version("nnunetv2"),
        two_pass_part_seconds=median_seconds(parts),
        subtype_agreement_two_pass_vs_multitask=agreement,
        commands=command_lines,
    )
    path = write_speed_report(report, output_dir / REPORT_NAME)
    plot_inference_speed(path, output_dir / PLOT_NAME)
    print(format_ratios(report), flush=True)
    return report
