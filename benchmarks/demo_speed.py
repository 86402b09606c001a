"""The demo's CPU cost: the settings before issue 14 against today's, side by side in one run.

Training: the demo cohort is built and preprocessed once, then fold 0 trains for a few epochs
under each arm, arms alternating, each in a process and an nnU-Net results folder of its own;
seconds per epoch come from nnU-Net's own epoch timestamps (the first epoch, which pays for
start-up, is left out). With --pipeline, the whole default pipeline (`snakemake --cores N all`)
also runs once per arm in a fresh results folder and its wall time is reported.

The "before" arm is the previous default: the training process took all of the job's threads
beside its augmentation worker, nnU-Net's progress.png and the monitor plot were redrawn every
epoch, every validation case was segmented and classified after every epoch (now every 5th), and
the derived configuration kept its 32 x 48 x 64 patch however small the images (now clipped to
the median image, as nnU-Net plans). Arms that change code rather than settings ("before",
"previous") run from a git worktree of the revision --base, the last one before that change; the
others from this working tree.
Seconds per epoch are the mean over the epochs after the first, so an arm that validates whole
cases every 5th epoch pays for it in proportion. With --pipeline the figures each run reports
(validation whole-pancreas and lesion DSC, macro-F1 on validation and test) are printed beside
its wall time, so a speed-up that costs quality shows in the same table. Figures from different
machines differ several-fold (AVX-512 or not, core count, load); read the ratios, which come from
one run on one machine.

Usage: python benchmarks/demo_speed.py [--epochs 6] [--repeats 1] [--cores 2] [--arms before,new] [--pipeline]
                                       [--base REV] [--workdir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_description() -> dict:
    """CPU model, logical cores and the vector extensions that set convolution speed."""
    flags, model = set(), platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512": any(f.startswith("avx512f") for f in flags),
    }


# the last revision whose derived configuration kept the configured patch whatever the images' size
BASE_REVISION = "03b1551"


def arms(cores: int) -> dict[str, tuple[bool, dict]]:
    """Per arm: whether it runs from the --base revision, and its `train` overrides. The settings
    before issue 14, the base revision's defaults, today's, and the alternatives measured for them."""
    return {
        "before": (True, {"torch_threads": cores, "progress_png_every": 1, "case_validation_every": 1}),
        "previous": (True, {}),
        "new": (False, {}),
        # one PyTorch thread, the other core left to the augmentation worker
        "one_thread": (False, {"torch_threads": 1}),
        # augmentation in the training process (nnUNet_n_proc_DA=0): no worker, no pin-memory thread
        "in_process_augmentation": (False, {"data_augmentation_workers": 0}),
        "no_refit_tta": (False, {"refit_tta": False}),
    }


def checkout(revision: str, work: Path) -> Path:
    """A git worktree of `revision` under `work` (reused when it is there already)."""
    tree = work / f"source_{revision}"
    if not (tree / "Snakefile").exists():
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), revision],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return tree


def snakemake(cores: int, results: Path, target: str, train: dict | None = None, source: Path = REPO) -> float:
    """Wall seconds of `snakemake --cores N target` on the default config of the workflow in
    `source`, with `train` overrides."""
    extra = []
    if train:
        overrides = results.parent / f"{results.name}.yaml"
        overrides.write_text(yaml.safe_dump({"train": train}))
        extra = ["--configfile", str(overrides)]
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", str(cores), target, *extra,
         "--config", f"results_dir={results}"],
        cwd=source, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - start


def reported_figures(results: Path) -> dict[str, float]:
    """What the demo reports (metrics/summary.json, which holds the test split's as `test`)."""
    validation = json.loads((results / "metrics" / "summary.json").read_text())
    return {
        "validation_whole_dsc": validation["whole_pancreas_dsc"],
        "validation_lesion_dsc": validation["lesion_dsc"],
        "validation_macro_f1": validation["macro_f1"],
        "test_macro_f1": validation["test"]["macro_f1"],
    }


def train_arm(results: Path, models: Path, train: dict, cores: int, source: Path = REPO) -> tuple[list[float], float]:
    """Train fold 0 in a fresh process with the package in `source`: the seconds of each epoch
    (nnU-Net's timestamps) and the seconds outside them (start-up and the case-level refit).

    The arm's models folder starts empty: in a reused --workdir, the trainer would otherwise find
    the earlier run's final checkpoint and skip training, and the arm would report that run's epochs.
    """
    shutil.rmtree(models, ignore_errors=True)
    config = yaml.safe_load((source / "config" / "config.yaml").read_text())
    code = f"""
import sys, json
sys.path.insert(0, {str(source)!r})
from pancreas_mtl.nnunet_env import set_nnunet_paths, plans_identifier
set_nnunet_paths({str(results / "nnUNet_raw")!r}, {str(results / "nnUNet_preprocessed")!r}, {str(models)!r})
from pancreas_mtl.training.run import train_fold
train_fold({config["dataset"]["id"]}, {config["plan"]["configuration"]!r}, 0,
           plans_identifier({config["plan"]["planner"]!r}), json.loads({json.dumps(json.dumps(train))}),
           threads={cores})
"""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    import torch

    (final,) = models.rglob("fold_0/checkpoint_final.pth")
    logging = torch.load(final, map_location="cpu", weights_only=False)["logging"]
    epochs = [e - s for s, e in zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]
    # what the epochs leave of the process's wall time: start-up, then the case-level refit
    return epochs, wall - sum(epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per training arm (first one left out)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds of the training arms")
    parser.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--arms", default="before,new", help=f"comma-separated, of: {', '.join(arms(2))}")
    parser.add_argument("--pipeline", action="store_true", help="also time the whole pipeline per arm")
    parser.add_argument("--base", default=BASE_REVISION, help="revision of the before and previous arms")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="demo_speed_"))
    work = work.resolve()
    figures: dict = {"cpu": cpu_description(), "cores": args.cores, "epochs": args.epochs}
    print(f"CPU: {figures['cpu']}; {args.cores} cores for the run", flush=True)

    chosen = {name: arms(args.cores)[name] for name in args.arms.split(",")}
    trees = {}
    try:
        trees = {name: checkout(args.base, work) if at_base else REPO for name, (at_base, _) in chosen.items()}
        if any(tree != REPO for tree in trees.values()):
            figures["base_revision"] = args.base
            print(f"arms {', '.join(n for n, t in trees.items() if t != REPO)} run from revision {args.base}")
        run_arms(args, work, chosen, trees, figures)
    finally:
        for tree in set(trees.values()) - {REPO}:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def run_arms(args, work: Path, chosen: dict, trees: dict[str, Path], figures: dict) -> None:
    # the cohort preprocessed once per source tree: its plans differ between revisions
    shared = {tree: work / ("shared" if tree == REPO else f"shared_{tree.name}") for tree in set(trees.values())}
    for tree, results in shared.items():
        snakemake(args.cores, results, "preprocess", source=tree)
    epochs: dict[str, list[float]] = {name: [] for name in chosen}
    for round_ in range(args.repeats):
        for name, (_, overrides) in chosen.items():
            tree = trees[name]
            train = {**yaml.safe_load((tree / "config" / "config.yaml").read_text())["train"], **overrides}
            train["epochs"] = args.epochs
            seconds, outside = train_arm(shared[tree], work / f"models_{name}_{round_}", train, args.cores, tree)
            epochs[name] += seconds[1:]
            figures[f"{name}_seconds_outside_epochs"] = outside
            print(f"{name}: {np.mean(seconds[1:]):.1f} s/epoch, {outside:.0f} s outside the epochs "
                  f"(start-up, refit; round {round_ + 1})", flush=True)
    for name, seconds in epochs.items():
        figures[f"{name}_seconds_per_epoch"] = float(np.mean(seconds))
    first = next(iter(chosen))
    for name in chosen:
        ratio = figures[f"{name}_seconds_per_epoch"] / figures[f"{first}_seconds_per_epoch"]
        figures[f"epoch_ratio_{name}_vs_{first}"] = ratio
        print(f"training {name}: {figures[f'{name}_seconds_per_epoch']:.1f} s/epoch, {ratio:.2f}x {first}")

    if args.pipeline:
        for name, (_, overrides) in chosen.items():
            results = work / f"pipeline_{name}"
            # a fresh results folder, also in a reused --workdir, or Snakemake finds nothing to do
            shutil.rmtree(results, ignore_errors=True)
            seconds = snakemake(args.cores, results, "all", overrides, trees[name])
            figures[f"{name}_pipeline_seconds"] = seconds
            reported = reported_figures(results)
            figures[f"{name}_reported"] = reported
            print(f"pipeline {name}: {seconds:.0f} s; " + ", ".join(f"{k} {v:.3f}" for k, v in reported.items()),
                  flush=True)
        for name in chosen:
            ratio = figures[f"{name}_pipeline_seconds"] / figures[f"{first}_pipeline_seconds"]
            figures[f"pipeline_ratio_{name}_vs_{first}"] = ratio
            print(f"pipeline {name}: {ratio:.2f}x {first}")


if __name__ == "__main__":
    main()
