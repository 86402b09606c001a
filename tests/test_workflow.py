"""The real Snakemake workflow on the built-in demo cohort, at the smallest scale."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.yaml"
STAGES = {
    "make_demo_cohort",
    "ingest_cohort",
    "write_splits",
    "plan_and_preprocess",
    "train_fold",
    "predict_split",
    "evaluate_validation",
    "plot_training",
    "plot_case_overlays",
    "plot_test_overlays",
}


def snakemake(*args, cwd=REPO, timeout=1800):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result


def test_dry_run_lists_every_stage(tmp_path):
    result = snakemake("-n", "--cores", "2", "--config", f"results_dir={tmp_path}/results")
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for stage in STAGES:
        assert f"rule {stage}:" in out, stage


def snakemake_without_gpu(*args):
    """Snakemake on this machine as a workstation without a GPU and without a cluster (no sbatch
    on PATH, not in a Slurm job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    # the system's tools, but not Slurm's client commands (CI installs Slurm into /usr/bin)
    tools = Path(tempfile.mkdtemp(prefix="no_slurm_bin_"))
    for folder in ("/usr/bin", "/bin"):
        for tool in Path(folder).iterdir():
            if not tool.name.startswith(("sbatch", "srun", "salloc", "squeue", "scancel", "sacct", "sinfo")):
                if not (tools / tool.name).exists():
                    (tools / tool.name).symlink_to(tool)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(tools)])
    try:
        return subprocess.run(
            [sys.executable, "-m", "snakemake", *args],
            cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
        )
    finally:
        shutil.rmtree(tools)


def test_dry_run_gpu_config_stops_without_data_dir(tmp_path):
    start = time.monotonic()
    result = snakemake(
        "-n", "--cores", "2", "--configfile", "config/gpu.yaml",
        "--config", f"results_dir={tmp_path}/results",
    )
    assert result.returncode != 0
    assert "config key data_dir is not set" in result.stdout + result.stderr
    assert time.monotonic() - start < 60


def test_dry_run_gpu_config_stops_without_cuda_naming_train_device(tmp_path, make_cohort):
    from pancreas_mtl.gpu_slots import nvidia_gpu_count

    if nvidia_gpu_count():
        pytest.skip("this machine has an NVIDIA GPU")
    result = snakemake_without_gpu(
        "-n", "--cores", "2", "--configfile", "config/gpu.yaml",
        "--config", f"results_dir={tmp_path}/results", f"data_dir={make_cohort()}",
    )
    assert result.returncode != 0
    assert "config key train.device is 'cuda'" in result.stdout + result.stderr


def test_dry_run_gpu_config(tmp_path, make_cohort):
    result = snakemake_without_gpu(
        "-n", "--cores", "2", "--configfile", "config/gpu.yaml",
        "--config", f"results_dir={tmp_path}/results", f"data_dir={make_cohort()}",
        "train={'device': 'cpu'}",
    )
    assert result.returncode == 0, result.stderr
    assert "nnUNetTrainerMultiTask__nnUNetResEncUNetMPlans__3d_fullres" in result.stdout


def test_rulegraph_matches_the_one_in_the_readme():
    result = snakemake("--rulegraph", "--quiet")
    assert result.returncode == 0, result.stderr
    svg = (REPO / "docs" / "rulegraph.svg").read_text()
    for stage in STAGES | {"baseline_classifier", "all"}:
        assert f'label = "{stage}"' in result.stdout, stage
        assert f">{stage}<" in svg, f"docs/rulegraph.svg lacks {stage}: regenerate it"


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_config_value_names_the_key(tmp_path):
    result = snakemake("-n", "--config", "train={'epochs': 'ten'}", f"results_dir={tmp_path}")
    assert result.returncode != 0
    assert "epochs" in result.stdout + result.stderr


def _jobs(output: str) -> set[str]:
    """Rules of the jobs Snakemake lists (`rule x:` in a dry run, `localrule x:` when run locally)."""
    return set(re.findall(r"^(?:local)?rule (\w+):", output, re.MULTILINE))


def test_predict_only_dry_run_shows_only_prediction_jobs(tmp_path):
    images = tmp_path / "images"
    for name in ("site1/2024/a_0000.nii.gz", "site2/b_0000.nii.gz", "c_0000.nii.gz", "notes.txt"):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_bytes(b"")
    model = tmp_path / "model.zip"
    model.write_bytes(b"")
    results = tmp_path / "results"
    config = [f"results_dir={results}", f"model={model}", f"data_dir={images}"]
    result = snakemake("-n", "--cores", "2", "--config", *config)
    assert result.returncode == 0, result.stderr
    assert _jobs(result.stdout) == {"import_model", "predict_images", "all"}
    for name in ("site1/2024/a_0000.nii.gz", "site2/b_0000.nii.gz", "c_0000.nii.gz"):
        assert str(images / name) in result.stdout
    assert f"output: {results}/predictions/test" in result.stdout

    (images / "site2" / "b_0001.nii.gz").write_bytes(b"")
    result = snakemake("-n", "--cores", "2", "--config", *config)
    assert result.returncode != 0
    assert f"{images}/site2/b_0001.nii.gz: a second input channel" in result.stdout + result.stderr
    result = snakemake("-n", "--config", f"results_dir={results}", f"model={tmp_path}/absent.zip",
                       f"data_dir={images}")
    assert result.returncode != 0
    assert f"config key model: '{tmp_path}/absent.zip' does not exist" in result.stdout + result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = snakemake("-n", "--config", f"results_dir={results}", f"model={model}", f"data_dir={empty}")
    assert result.returncode != 0
    assert f"{empty} holds no *_0000.nii.gz images" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("wf") / "results"
    result = snakemake(
        "--cores", "2", "all", "benchmark",
        "--configfile", str(TINY),
        "--config", f"results_dir={results}",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return results


def _model_dir(results):
    return results / "nnUNet_results/Dataset501_PancreasMTL/nnUNetTrainerMultiTask__nnUNetPlans__3d_cpu"


@pytest.mark.workflow
def test_dataset_stage(demo_run):
    raw = demo_run / "nnUNet_raw/Dataset501_PancreasMTL"
    dataset = json.loads((raw / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "pancreas": [1, 2], "lesion": 2}
    assert dataset["numTraining"] == 15
    table = pd.read_csv(demo_run / "dataset/subtypes.csv")
    assert table["split"].value_counts().to_dict() == {"train": 9, "validation": 6, "test": 3}
    labels = sorted((raw / "labelsTr").glob("*.nii.gz"))
    assert len(labels) == 15
    for path in labels[:3]:
        mask = nib.load(path)
        assert mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    report = pd.read_csv(demo_run / "dataset/label_fix_report.csv")
    assert (report["voxels_rounded"] > 0).any()


@pytest.mark.workflow
def test_preprocess_stage(demo_run):
    pre = demo_run / "nnUNet_preprocessed/Dataset501_PancreasMTL"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    wanted = yaml.safe_load(TINY.read_text())["plan"]["custom_configuration"]
    assert plans["configurations"]["3d_cpu"]["spacing"] == wanted["spacing"]
    assert plans["configurations"]["3d_cpu"]["patch_size"] == wanted["patch_size"]
    splits = json.loads((pre / "splits_final.json").read_text())
    table = pd.read_csv(demo_run / "dataset/subtypes.csv", dtype={"case_id": str})
    assert sorted(splits[0]["train"]) == sorted(table.case_id[table.split == "train"])
    assert sorted(splits[0]["val"]) == sorted(table.case_id[table.split == "validation"])


@pytest.mark.workflow
def test_training_monitor_sees_every_class(demo_run):
    fold = _model_dir(demo_run) / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    monitor = json.loads((fold / "classification_monitor.json").read_text())
    assert [row["epoch"] for row in monitor] == list(range(10))
    # whole validation cases every `case_validation_every` (5) epochs and at the last one
    assert [row["epoch"] for row in monitor if "pred_counts" in row] == [0, 5, 9]
    predicted = np.zeros(3, dtype=int)
    for row in monitor:
        predicted += np.array(row["train_pred_counts"]) + np.array(row.get("pred_counts", [0, 0, 0]))
    assert (predicted > 0).all(), predicted
    assert (fold / "classification_monitor.png").stat().st_size > 0


@pytest.mark.workflow
def test_predictions_match_input_geometry(demo_run):
    table = pd.read_csv(demo_run / "dataset/subtypes.csv", dtype={"case_id": str})
    cohort = demo_run / "demo/cohort"
    for split in ("validation", "test"):
        folder = demo_run / "predictions" / split
        cases = sorted(table.case_id[table.split == split])
        csv = pd.read_csv(folder / "subtype_results.csv")
        assert list(csv.columns[:2]) == ["Names", "Subtype"]
        assert sorted(csv["Names"]) == [f"{c}.nii.gz" for c in cases]
        assert set(csv["Subtype"]) <= {0, 1, 2}
        probs = csv.filter(like="prob_").to_numpy()
        assert np.allclose(probs.sum(1), 1, atol=1e-4)
        for case in cases:
            image = nib.load(next(cohort.glob(f"{split}/**/{case}_0000.nii.gz")))
            mask = nib.load(folder / f"{case}.nii.gz")
            assert mask.shape == image.shape
            assert np.allclose(mask.affine, image.affine, atol=1e-4)
            assert mask.get_data_dtype() == np.uint8


@pytest.mark.workflow
def test_metrics_and_benchmark(demo_run):
    summary = json.loads((demo_run / "metrics/summary.json").read_text())
    for key in ("whole_pancreas_dsc", "lesion_dsc", "macro_f1"):
        assert 0 <= summary[key] <= 1
    assert summary["whole_pancreas_dsc"] > 0.3
    for png in ("confusion_matrix", "dsc_distributions", "training_curves", "prediction_counts", "reliability"):
        assert (demo_run / f"metrics/{png}.png").stat().st_size > 0
    assert 0 <= summary["brier_score"] <= 2 and 0 <= summary["ece"] <= 1
    # the demo's test labels live outside the cohort; evaluate scores the test split with them
    test = json.loads((demo_run / "metrics/test/summary.json").read_text())
    assert test["split"] == "test" and test["n_cases"] == 3 and test["n_cases_with_subtype"] == 3
    assert summary["test"]["macro_f1"] == test["macro_f1"]
    assert 0 <= test["macro_f1"] <= 1 and test["whole_pancreas_dsc"] > 0.3
    assert list((demo_run / "demo/cohort/test").glob("*_0000.nii.gz"))
    assert not [p for p in (demo_run / "demo/cohort/test").iterdir() if not p.name.endswith("_0000.nii.gz")
                and p.name.endswith(".nii.gz")]
    # the case stage was chosen on training cases and classifies; the baseline beside it was
    # fitted on the training cases' predicted masks and scored on test as well
    refit = json.loads((_model_dir(demo_run) / "fold_0/case_level_refit.json").read_text())
    assert refit["case_stage"]["feature_set"] in ("descriptor", "descriptor_and_image_statistics")
    assert refit["n_train"] == 9
    assert len(list((demo_run / "predictions/train").glob("*.nii.gz"))) == 9
    baseline = json.loads((demo_run / "metrics/baseline.json").read_text())
    assert baseline["fitted_on"] == "predicted masks of the training cases" and baseline["n_test"] == 3
    for model in ("logistic_regression", "random_forest"):
        low, high = baseline[model]["test"]["predicted_masks"]["macro_f1_ci95"]
        assert 0 <= low <= high <= 1
    speed = json.loads((demo_run / "benchmark/inference_speed.json").read_text())
    for key in ("cases", "device", "stock_seconds", "two_pass_seconds", "multitask_seconds",
                "speedup_vs_stock", "speedup_vs_two_pass", "mask_dice_vs_stock",
                "stock_inprocess_seconds", "speedup_vs_stock_inprocess"):
        assert key in speed
    assert speed["mask_dice_vs_stock"] >= 0.99
    # tiny.yaml's benchmark.warmup reached the benchmark: no untimed round
    assert speed["warmup"] == 0 and all(len(v) == 1 for v in speed["per_repeat_seconds"].values())


@pytest.mark.workflow
def test_every_case_has_an_overlay_in_lesion_dice_order(demo_run):
    per_case = pd.read_csv(demo_run / "metrics/per_case.csv", dtype={"case_id": str})
    folder = demo_run / "plots/overlays/validation"
    gallery = pd.read_csv(folder / "gallery.csv", dtype={"case_id": str})
    assert sorted(gallery["case_id"]) == sorted(per_case["case_id"])
    # file names sort in gallery order, which is worst lesion Dice first, as evaluate scored them
    names = sorted(p.stem for p in folder.glob("*.png"))
    assert names == gallery["name"].tolist()
    dice = per_case.set_index("case_id").loc[gallery["case_id"], "lesion_dsc"].to_numpy()
    assert np.all(np.diff(dice) >= -1e-9), dice
    np.testing.assert_allclose(gallery["lesion_dsc"], dice)
    wrong = per_case.set_index("case_id").eval("subtype != predicted_subtype")
    assert gallery.set_index("case_id")["misclassified"].equals(wrong.loc[gallery["case_id"]])
    table = pd.read_csv(demo_run / "dataset/subtypes.csv", dtype={"case_id": str})
    test_cases = sorted(table.case_id[table.split == "test"])
    test_names = sorted(p.stem.split("_", 1)[1] for p in (demo_run / "plots/overlays/test").glob("*.png"))
    assert test_names == test_cases


@pytest.mark.workflow
def test_rerun_has_nothing_to_do(demo_run):
    result = snakemake(
        "-n", "--cores", "2", "all", "--configfile", str(TINY), "--config", f"results_dir={demo_run}"
    )
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


TRAIN_SNIPPET = """
import sys
from pancreas_mtl.nnunet_env import set_nnunet_paths
from pancreas_mtl.training.run import train_fold
if __name__ == "__main__":
    root = sys.argv[1]
    set_nnunet_paths(f"{root}/nnUNet_raw", f"{root}/nnUNet_preprocessed", f"{root}/nnUNet_results")
    train = dict(epochs=5, iterations_per_epoch=4, val_iterations_per_epoch=1,
                 cls_warmup_epochs=0, cls_ramp_epochs=1, checkpoint_every=1,
                 early_stopping={"patience": 0}, device="cpu")
    train_fold(501, "3d_cpu", 1, "nnUNetPlans", train, threads=2)
"""


@pytest.mark.workflow
def test_training_resumes_after_interruption(demo_run, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SNIPPET)
    fold = _model_dir(demo_run) / "fold_1"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(demo_run)], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    monitor = fold / "classification_monitor.json"
    while time.time() < deadline:
        if (fold / "checkpoint_latest.pth").exists() and monitor.exists():
            if len(json.loads(monitor.read_text() or "[]")) >= 2:
                break
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (fold / "checkpoint_final.pth").exists()

    result = subprocess.run([sys.executable, str(script), str(demo_run)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = sorted(fold.glob("training_log_*.txt"))
    assert len(logs) == 2
    first_epoch = re.search(r": Epoch (\d+)", logs[1].read_text())
    assert first_epoch and int(first_epoch.group(1)) >= 1, logs[1].read_text()[-2000:]
    epochs = [row["epoch"] for row in json.loads(monitor.read_text())]
    assert epochs == list(range(5))
    assert (fold / "checkpoint_final.pth").is_file()


@pytest.mark.workflow
def test_report_holds_every_plot(demo_run, tmp_path):
    report = tmp_path / "report.html"
    result = snakemake(
        "--report", str(report), "all", "benchmark",
        "--configfile", str(TINY), "--config", f"results_dir={demo_run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    assert "<html" in text[:2000].lower()
    for name in ("confusion_matrix.png", "dsc_distributions.png", "training_curves.png",
                 "prediction_counts.png", "summary.json", "inference_speed.png", "progress.png",
                 "reliability.png"):
        assert name in text, name
    # the overlay gallery: one entry per validation case, labelled with its rank first
    gallery = pd.read_csv(demo_run / "plots/overlays/validation/gallery.csv")
    for name in gallery["name"]:
        assert f"{name}.png" in text, name
    assert '"labels": {"rank": "001"' in text


@pytest.mark.realsize
def test_gpu_recipe_on_cpu_at_real_size(tmp_path):
    """config/gpu.yaml's recipe end to end on CPU, on real-size cases: ResEnc M plans and patch,
    3d_fullres, a cut schedule, the case-level refit, prediction with mirroring, evaluation."""
    results = tmp_path / "results"
    result = snakemake(
        "--cores", "2", "all",
        "--configfile", "config/gpu.yaml", str(REPO / "tests" / "data" / "gpu_recipe_cpu.yaml"),
        "--config", f"results_dir={results}",
        timeout=7200,  # 57 and 70 min in two runs on an idle 2-core AVX2-only machine
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    preprocessed = results / "nnUNet_preprocessed" / "Dataset501_PancreasMTL"
    plans = json.loads((preprocessed / "nnUNetResEncUNetMPlans.json").read_text())
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    # the real cohort's scale: a patch near 64 x 128 x 192
    assert patch[0] >= 48 and patch[1] >= 96 and patch[2] >= 144, patch
    for split in ("validation", "test"):
        table = pd.read_csv(results / "predictions" / split / "subtype_results.csv")
        probabilities = table.filter(like="prob_subtype").to_numpy()
        assert len(table) and np.isfinite(probabilities).all()
        np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
        for name in table["Names"]:
            mask = nib.load(results / "predictions" / split / name)
            image_name = name.replace(".nii.gz", "_0000.nii.gz")
            (image,) = (results / "demo" / "cohort" / split).rglob(image_name)
            assert mask.get_data_dtype() == np.uint8 and mask.shape == nib.load(image).shape
    summary = json.loads((results / "metrics" / "summary.json").read_text())
    assert np.isfinite([summary["whole_pancreas_dsc"], summary["lesion_dsc"], summary["macro_f1"]]).all()


def _read_predictions(folder: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    table = pd.read_csv(folder / "subtype_results.csv").set_index("Names").sort_index()
    masks = {name: np.asarray(nib.load(folder / name).dataobj) for name in table.index}
    return table, masks


@pytest.mark.workflow
def test_pack_then_predict_only_on_loose_images_reproduces_the_full_run(demo_run, tmp_path):
    result = snakemake("--cores", "2", "pack", "--configfile", str(TINY), "--config", f"results_dir={demo_run}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    packed = demo_run / "package" / f"{_model_dir(demo_run).name}.zip"
    top = f"Dataset501_PancreasMTL/{_model_dir(demo_run).name}"
    names = set(zipfile.ZipFile(packed).namelist())
    assert {f"{top}/plans.json", f"{top}/dataset.json", f"{top}/dataset_fingerprint.json",
            f"{top}/fold_0/checkpoint_final.pth"} <= names
    assert not any("fold_1" in n or "checkpoint_latest" in n for n in names)

    # the demo's test images, loose in nested folders of another layout, with a stray file
    images = tmp_path / "new_images"
    for i, image in enumerate(sorted((demo_run / "demo/cohort/test").glob("*_0000.nii.gz"))):
        target = images / f"site{i % 2}" / f"batch{i}" / image.name
        target.parent.mkdir(parents=True)
        shutil.copy(image, target)
    (images / "site0" / "notes.txt").write_text("not an image")
    expected_table, expected_masks = _read_predictions(demo_run / "predictions/test")
    assert len(expected_masks) == 3

    # the results folder as it was packed: another test trains fold 1 into the same folder, and a
    # model folder's every fold is used
    folder = tmp_path / "model" / _model_dir(demo_run).name
    shutil.copytree(_model_dir(demo_run), folder, ignore=shutil.ignore_patterns("fold_1"))
    for model in (packed, folder):
        fresh = tmp_path / f"fresh_{model.suffix or 'folder'}" / "results"
        config = ["--configfile", str(TINY), "--config", f"results_dir={fresh}", f"model={model}",
                  f"data_dir={images}"]
        result = snakemake("--cores", "2", *config)
        logs = "".join(f"{p}:\n{p.read_text()[-2000:]}" for p in sorted((fresh / "logs").rglob("*.log")))
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:] + logs
        assert _jobs(result.stdout + result.stderr) == {"import_model", "predict_images", "all"}
        table, masks = _read_predictions(fresh / "predictions/test")
        assert list(pd.read_csv(fresh / "predictions/test/subtype_results.csv").columns) == [
            "Names", "Subtype", "prob_subtype0", "prob_subtype1", "prob_subtype2"]
        assert list(table.index) == list(expected_table.index)
        assert table["Subtype"].tolist() == expected_table["Subtype"].tolist()
        assert np.allclose(table.filter(like="prob_"), expected_table.filter(like="prob_"), atol=1e-5)
        for name, mask in masks.items():
            assert np.array_equal(mask, expected_masks[name]), name
        # nothing of the training pipeline ran
        assert sorted(p.name for p in fresh.iterdir()) == ["benchmarks", "logs", "model", "predictions"]
        again = snakemake("-n", "--cores", "2", *config)
        assert "Nothing to be done" in again.stdout + again.stderr
