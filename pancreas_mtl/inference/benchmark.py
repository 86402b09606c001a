"""Inference speed: stock nnUNetv2_predict, stock plus a classification pass, and the multi-task predictor.

Command arms: each is a separate command in its own process, so each pays its own start-up
(imports, model load, nnU-Net's worker pools) as a user would.
- `stock`: the real `nnUNetv2_predict` as users run it (segmentation only, default worker pools).
- `stock_inprocess`: the same command with `-npp 0 -nps 0` (nnU-Net's own in-process mode, no pools).
- `two_pass`: the seed's route: stock segmentation, then a separate classification pass
  (`pancreas-mtl-predict --classify_only`) over each volume.
- `multitask`: ours, masks and subtype from one pass (`pancreas-mtl-predict`).

Warm arms: in this process, stock `nnUNetPredictor` and our `MultiTaskPredictor` are loaded once;
then each case is predicted (preprocessing, sliding window, export) with the models already in
memory. Their ratio is the per-case gain without start-up; the command ratios include start-up.

All arms use the same model folder, folds, checkpoint, cases, device, torch threads and test-time
mirroring. Arms are interleaved within each repeat so that drifts in machine load hit all of them
alike; warm-up runs (file cache, CUDA start, first-call costs) are discarded and the median of the
timed repeats is reported.
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
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..evaluation.metrics import dice
from ..layout import (
    PREDICTION_TABLE,
    check_model_folder,
    image_file_name,
    model_file_ending,
    read_prediction_table,
)
from ..nnunet_env import (
    PATH_VARIABLES,
    dataset_prefix,
    default_threads,
    ensure_ext_trainer_path,
    model_folder_name,
    resolve_device,
)

logger = logging.getLogger(__name__)

ARMS = ("stock", "stock_inprocess", "two_pass", "multitask")
# the warm two-pass time is stock plus classify-only per case: the seed's two passes without start-up
WARM_ARMS = ("stock", "classify_only", "multitask")
IN_PROCESS_FLAGS = ("-npp", "0", "-nps", "0")
STOCK_PROGRAM = "nnUNetv2_predict"
MULTITASK_PROGRAM = "pancreas-mtl-predict"
MASK_LABELS = (1, 2)
# arms that should give the same masks (same model, same TTA) are reported below this mean Dice
MASK_AGREEMENT_WARNING = 0.999
REPORT_NAME = "inference_speed.json"
PLOT_NAME = "inference_speed.png"
ARM_DESCRIPTIONS = {
    "stock": "stock nnUNetv2_predict as users run it (default worker pools), segmentation only",
    "stock_inprocess": "stock nnUNetv2_predict -npp 0 -nps 0 (in-process, no worker pools), "
    "segmentation only",
    "two_pass": "the seed's route: stock nnUNetv2_predict for the masks, then a separate "
    "classification pass (pancreas-mtl-predict --classify_only) over each volume",
    "multitask": "ours: pancreas-mtl-predict, masks and subtype from one sliding-window pass",
    "warm": "one process, both models loaded once, per-case prediction (preprocessing, sliding "
    "window, export) timed after a warm-up case; the warm ratios are the per-case gain with "
    "start-up (imports, model load, worker pools) excluded, the command ratios include it",
    "startup_seconds": "command arm seconds minus cases x warm seconds per case: what a command "
    "spends besides per-case work (process start, imports, model load, worker pools)",
}


def arm_output_folders(work_dir: str | os.PathLike) -> dict[str, Path]:
    """Where each command of each arm writes (the two-pass arm has two)."""
    work_dir = Path(work_dir)
    return {
        "stock": work_dir / "stock",
        "stock_inprocess": work_dir / "stock_inprocess",
        "two_pass_segmentation": work_dir / "two_pass" / "segmentation",
        "two_pass_classification": work_dir / "two_pass" / "classification",
        "multitask": work_dir / "multitask",
    }


def warm_output_folders(work_dir: str | os.PathLike) -> dict[str, Path | None]:
    """Where each warm arm writes its masks (classify-only writes none)."""
    work_dir = Path(work_dir) / "warm"
    return {"stock": work_dir / "stock", "classify_only": None, "multitask": work_dir / "multitask"}


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
        "stock_inprocess": [stock(out["stock_inprocess"]) + list(IN_PROCESS_FLAGS)],
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
    stock, stock_inprocess, two_pass, multitask = (medians[arm] for arm in ARMS)
    return {
        "cases": int(cases),
        "device": str(device),
        "stock_seconds": stock,
        "two_pass_seconds": two_pass,
        "multitask_seconds": multitask,
        "speedup_vs_stock": stock / multitask,
        "speedup_vs_two_pass": two_pass / multitask,
        "mask_dice_vs_stock": float(mask_dice_vs_stock),
        "stock_inprocess_seconds": stock_inprocess,
        "speedup_vs_stock_inprocess": stock_inprocess / multitask,
        "per_repeat_seconds": {arm: [float(s) for s in per_repeat_seconds[arm]] for arm in ARMS},
        "seconds_per_case": {arm: medians[arm] / int(cases) for arm in ARMS},
        **details,
    }


def time_warm_cases(
    predict_case: Mapping[str, Callable[[Path, str | None], object]],
    images: Sequence[tuple[str, str | os.PathLike]],
    output_folders: Mapping[str, Path | None],
    repeats: int,
    warmup_cases: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, list[float]]]:
    """Seconds per arm, case and repeat of predicting one case with the model already loaded.

    `predict_case[arm](image, output_truncated)` predicts one case; `output_truncated` is None for an
    arm whose folder is None (no mask written). The first `warmup_cases` cases go through every arm
    once untimed (first-call costs: kernels, caches, allocator); then `repeats` rounds, each case
    through every arm in turn, so drifts in machine load hit all arms alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    images = list(images)
    for folder in output_folders.values():
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)

    def output(arm: str, case_id: str) -> str | None:
        folder = output_folders[arm]
        return None if folder is None else os.fspath(Path(folder) / case_id)

    for case_id, image in images[:warmup_cases]:
        for arm, predict in predict_case.items():
            predict(Path(image), output(arm, case_id))
    seconds = {arm: {case_id: [] for case_id, _ in images} for arm in predict_case}
    for _ in range(repeats):
        for case_id, image in images:
            for arm, predict in predict_case.items():
                start = clock()
                predict(Path(image), output(arm, case_id))
                seconds[arm][case_id].append(float(clock() - start))
    return seconds


def warm_report(
    per_case_seconds: Mapping[str, Mapping[str, Sequence[float]]],
    command_seconds: Mapping[str, float],
    cases: int,
    **details,
) -> dict:
    """Warm fields of inference_speed.json: seconds per case, warm speedups, start-up estimates.

    `per_case_seconds[arm][case]` are the repeats of `time_warm_cases`; a repeat's time is the sum
    over cases, the median over repeats divided by the cases gives seconds per case. The warm
    two-pass time per repeat is stock plus classify-only.
    """
    per_repeat = {
        arm: [float(sum(r)) for r in zip(*per_case_seconds[arm].values())] for arm in WARM_ARMS
    }
    per_repeat["two_pass"] = [s + c for s, c in zip(per_repeat["stock"], per_repeat["classify_only"])]
    per_case = {arm: s / int(cases) for arm, s in median_seconds(per_repeat).items()}
    warm_arm = {"stock": "stock", "stock_inprocess": "stock", "two_pass": "two_pass",
                "multitask": "multitask"}
    return {
        "warm_seconds_per_case": per_case,
        "warm_speedup_vs_stock": per_case["stock"] / per_case["multitask"],
        "warm_speedup_vs_two_pass": per_case["two_pass"] / per_case["multitask"],
        "warm_per_repeat_seconds": per_repeat,
        "warm_per_case_seconds": {
            arm: {case: [float(s) for s in values] for case, values in cases_.items()}
            for arm, cases_ in per_case_seconds.items()
        },
        "startup_seconds": {
            arm: float(command_seconds[arm]) - int(cases) * per_case[warm]
            for arm, warm in warm_arm.items() if arm in command_seconds
        },
        **details,
    }


def predict_case_stock(predictor, image_file: str | os.PathLike, output_truncated: str) -> None:
    """One case as stock nnUNetv2_predict -npp 0 -nps 0 predicts it (predict_from_files_sequential's loop)."""
    import torch
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case(
        [os.fspath(image_file)], None, predictor.plans_manager, predictor.configuration_manager,
        predictor.dataset_json,
    )
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    export_prediction_from_logits(
        logits, properties, predictor.configuration_manager, predictor.plans_manager,
        predictor.dataset_json, output_truncated, False,
    )


def load_warm_predictors(
    model_folder: Path,
    folds: Sequence[int],
    checkpoint: str,
    device_type: str,
    tta: bool,
    step_size: float,
) -> tuple[dict[str, Callable[[Path, str | None], object]], dict[str, float]]:
    """Per-case predict functions of the warm arms, and the seconds each model took to load.

    Stock is `nnUNetPredictor` built as nnUNetv2_predict builds it; ours comes from `load_predictor`
    as pancreas-mtl-predict loads it. The classify-only arm reuses our loaded predictor.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from .predictor import load_predictor

    load_seconds = {}
    start = time.perf_counter()
    stock = nnUNetPredictor(
        tile_step_size=step_size, use_gaussian=True, use_mirroring=tta,
        perform_everything_on_device=True, device=torch.device(device_type), verbose=False,
        verbose_preprocessing=False, allow_tqdm=False,
    )
    stock.initialize_from_trained_model_folder(os.fspath(model_folder), [int(f) for f in folds], checkpoint)
    load_seconds["stock"] = time.perf_counter() - start
    start = time.perf_counter()
    ours = load_predictor(model_folder, folds, checkpoint, device_type, tta, step_size)
    load_seconds["multitask"] = time.perf_counter() - start

    def classify_only(image: Path, output_truncated: str | None) -> object:
        return ours.predict_case(image, None)

    predict = {
        "stock": partial(predict_case_stock, stock),
        "classify_only": classify_only,
        "multitask": ours.predict_case,
    }
    return predict, load_seconds


def write_speed_report(report: Mapping, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def format_ratios(report: Mapping) -> str:
    text = (
        f"multi-task vs stock nnUNetv2_predict: {report['speedup_vs_stock']:.2f}x, "
        f"vs two-pass: {report['speedup_vs_two_pass']:.2f}x "
        f"({report['cases']} cases on {report['device']}; median seconds stock "
        f"{report['stock_seconds']:.1f}, two-pass {report['two_pass_seconds']:.1f}, multi-task "
        f"{report['multitask_seconds']:.1f}); mask Dice vs stock {report['mask_dice_vs_stock']:.4f}"
    )
    if "stock_inprocess_seconds" in report:
        text += (
            f"\nvs stock nnUNetv2_predict -npp 0 -nps 0: {report['speedup_vs_stock_inprocess']:.2f}x "
            f"(median seconds {report['stock_inprocess_seconds']:.1f})"
        )
    if "warm_seconds_per_case" in report:
        warm = report["warm_seconds_per_case"]
        text += (
            f"\nwarm, models loaded, per case: vs stock {report['warm_speedup_vs_stock']:.2f}x, "
            f"vs two-pass {report['warm_speedup_vs_two_pass']:.2f}x (seconds per case stock "
            f"{warm['stock']:.2f}, two-pass {warm['two_pass']:.2f}, multi-task {warm['multitask']:.2f}); "
            f"warm mask Dice vs stock {report['warm_mask_dice_vs_stock']:.4f}"
        )
    return text


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


def run_warm_arms(
    model_folder: Path,
    folds: Sequence[int],
    checkpoint: str,
    device_type: str,
    tta: bool,
    step_size: float,
    threads: int,
    images: Sequence[tuple[str, str | os.PathLike]],
    work_dir: Path,
    repeats: int,
    warmup_cases: int = 1,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Load both models in this process with the command arms' torch threads, time the warm arms."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    if device_type == "cuda" and torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # settable once per process, before any parallel work; the arms' commands set it
    try:
        predict, load_seconds = load_warm_predictors(
            model_folder, folds, checkpoint, device_type, tta, step_size
        )
        seconds = time_warm_cases(
            predict, images, warm_output_folders(work_dir), repeats, warmup_cases=warmup_cases
        )
    finally:
        predict = None
        torch.set_num_threads(previous_threads)
        if device_type == "cuda":
            torch.cuda.empty_cache()
    return seconds, load_seconds


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
    """Time the command arms, then the warm arms, on `images`; write inference_speed.json and .png.

    Masks are compared across arms: ours vs stock (command and warm), and each warm arm vs the
    command arms it stands for, which must agree for the warm timings to mean anything.
    """
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
        agreement = subtype_agreement(
            outputs["two_pass_classification"] / PREDICTION_TABLE,
            outputs["multitask"] / PREDICTION_TABLE,
        )
        linked = [(c, work / "input" / image_file_name(c, file_ending)) for c in case_ids]
        warm_seconds, warm_load_seconds = run_warm_arms(
            model_folder, folds, checkpoint, torch_device.type, tta, step_size, threads, linked,
            work, repeats,
        )
        warm_outputs = warm_output_folders(work)

        def dice_of(folder: Path, reference: Path) -> float:
            return mean_mask_dice(folder, reference, case_ids, file_ending)

        multitask_dice = dice_of(outputs["multitask"], outputs["stock"])
        agreement_dice = {
            "stock_inprocess_vs_stock": dice_of(outputs["stock_inprocess"], outputs["stock"]),
            "warm_stock_vs_stock": dice_of(warm_outputs["stock"], outputs["stock"]),
            "warm_stock_vs_stock_inprocess": dice_of(warm_outputs["stock"], outputs["stock_inprocess"]),
            "warm_multitask_vs_multitask": dice_of(warm_outputs["multitask"], outputs["multitask"]),
        }
        warm_dice = dice_of(warm_outputs["multitask"], warm_outputs["stock"])
    for name, value in agreement_dice.items():
        if value < MASK_AGREEMENT_WARNING:
            logger.warning("masks disagree, %s: mean Dice %.4f", name, value)

    report = speed_report(
        len(images),
        # every arm gets the bare device type, as nnUNetv2_predict takes it: the first visible GPU
        describe_device(torch.device(torch_device.type)),
        per_repeat,
        multitask_dice,
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
    report.update(warm_report(
        warm_seconds, median_seconds(per_repeat), len(images),
        warm_mask_dice_vs_stock=warm_dice,
        warm_load_seconds=warm_load_seconds,
        warmup_cases=1,
    ))
    report["mask_agreement_dice"] = agreement_dice
    report["arm_descriptions"] = dict(ARM_DESCRIPTIONS)
    path = write_speed_report(report, output_dir / REPORT_NAME)
    plot_inference_speed(path, output_dir / PLOT_NAME)
    print(format_ratios(report), flush=True)
    return report
