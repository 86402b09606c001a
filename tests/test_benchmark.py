"""Inference benchmark: command lines, interleaving, medians, mask agreement, report; no nnU-Net run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pancreas_mtl.inference import benchmark as bm
from pancreas_mtl.nnunet_env import EXT_TRAINER_DIR

INTERFACE_FIELDS = {
    "cases": int,
    "device": str,
    "stock_seconds": float,
    "two_pass_seconds": float,
    "multitask_seconds": float,
    "speedup_vs_stock": float,
    "speedup_vs_two_pass": float,
    "mask_dice_vs_stock": float,
}
TRAINER = "nnUNetTrainerMultiTask"


def commands(tmp_path, tta=True, folds=(0, 2), checkpoint="checkpoint_best.pth", device="cuda"):
    return bm.arm_commands(
        tmp_path / "in", tmp_path / "work", tmp_path / "model", folds, 501, "3d_fullres",
        "nnUNetResEncUNetMPlans", TRAINER, device, tta, 1, checkpoint, 0.5,
    )


def option(command, flag, n=1):
    i = command.index(flag)
    return command[i + 1 : i + 1 + n]


def test_stock_arm_is_the_real_nnunet_command(tmp_path):
    arms = commands(tmp_path)
    assert list(arms) == list(bm.ARMS)
    (stock,) = arms["stock"]
    assert stock[0] == "nnUNetv2_predict"
    assert option(stock, "-d") == ["501"]
    assert option(stock, "-c") == ["3d_fullres"]
    assert option(stock, "-p") == ["nnUNetResEncUNetMPlans"]
    assert option(stock, "-tr") == [TRAINER]
    assert option(stock, "-f", 2) == ["0", "2"]
    assert option(stock, "-chk") == ["checkpoint_best.pth"]
    assert option(stock, "-device") == ["cuda"]
    assert option(stock, "-i") == [os.fspath(tmp_path / "in")]
    assert "--disable_tta" not in stock


@pytest.mark.parametrize("tta", [True, False])
def test_every_arm_uses_same_model_cases_device_and_tta(tmp_path, tta):
    arms = commands(tmp_path, tta=tta)
    stock, classify = arms["two_pass"]
    (multitask,) = arms["multitask"]
    # the two-pass arm starts with the stock command itself, writing to its own folder
    out = stock.index("-o") + 1
    assert stock[:out] + stock[out + 1 :] == arms["stock"][0][:out] + arms["stock"][0][out + 1 :]
    assert stock[out] != arms["stock"][0][out]
    for command in (arms["stock"][0], stock, classify, multitask):
        assert option(command, "-i") == [os.fspath(tmp_path / "in")]
        assert option(command, "-f", 2) == ["0", "2"]
        assert option(command, "-chk") == ["checkpoint_best.pth"]
        assert option(command, "-device") == ["cuda"]
        assert ("--disable_tta" in command) is (not tta)
    for command in (classify, multitask):
        assert command[0] == "pancreas-mtl-predict"
        assert option(command, "-m") == [os.fspath(tmp_path / "model")]
    assert "--classify_only" in classify and "--classify_only" not in multitask
    outputs = {option(c, "-o")[0] for cmds in arms.values() for c in cmds}
    assert len(outputs) == 4


def test_run_interleaved_alternates_arms_and_drops_warmup():
    calls = []

    def run(arm):
        calls.append(arm)
        return float(len(calls))

    seconds = bm.run_interleaved(bm.ARMS, 2, run, warmup=1)
    assert calls == list(bm.ARMS) * 3
    assert seconds == {"stock": [4.0, 7.0], "two_pass": [5.0, 8.0], "multitask": [6.0, 9.0]}
    with pytest.raises(ValueError, match="repeats"):
        bm.run_interleaved(bm.ARMS, 0, run)


def test_median_seconds():
    assert bm.median_seconds({"a": [3.0, 1.0, 10.0], "b": [1.0, 2.0]}) == {"a": 3.0, "b": 1.5}


def test_mask_dice_averages_labels_and_counts_absent_labels_as_agreement():
    a = np.zeros((4, 4, 2), np.uint8)
    a[:2] = 1
    assert bm.mask_dice(a, a.copy()) == 1.0  # label 2 absent from both counts 1.0
    b = a.copy()
    b[0] = 0  # label 1: |a|=16, |b|=8, overlap 8 -> 2*8/24
    assert bm.mask_dice(a, b) == pytest.approx((2 * 8 / 24 + 1.0) / 2)
    c = a.copy()
    c[3, 3, 0] = 2  # label 2 only in c -> 0
    assert bm.mask_dice(a, c) == pytest.approx((1.0 + 0.0) / 2)
    with pytest.raises(ValueError, match="shapes"):
        bm.mask_dice(a, a[:3])


def test_mean_mask_dice_reads_masks_per_case(tmp_path, nifti):
    ours, stock = tmp_path / "ours", tmp_path / "stock"
    mask = nifti.mask(float_one=False, dtype=np.uint8)
    empty = np.zeros_like(mask)
    for folder, second in ((ours, mask), (stock, empty)):
        nifti.save(folder / "a.nii.gz", mask)
        nifti.save(folder / "b.nii.gz", second)
    # case a identical (1.0), case b: both labels only in ours (0.0)
    assert bm.mean_mask_dice(ours, stock, ["a", "b"]) == pytest.approx(0.5)


def test_subtype_agreement(tmp_path):
    pd.DataFrame({"Names": ["a.nii.gz", "b.nii.gz"], "Subtype": [0, 2]}).to_csv(tmp_path / "x.csv", index=False)
    pd.DataFrame({"Names": ["b.nii.gz", "a.nii.gz"], "Subtype": [1, 0]}).to_csv(tmp_path / "y.csv", index=False)
    assert bm.subtype_agreement(tmp_path / "x.csv", tmp_path / "y.csv") == 0.5


def test_speed_report_fields_types_and_ratios(tmp_path):
    per_repeat = {"stock": [12.0, 10.0, 11.0], "two_pass": [15.0, 16.0, 14.0], "multitask": [4.0, 5.0, 6.0]}
    report = bm.speed_report(4, "cpu", per_repeat, 0.98, repeats=3, tta=True)
    for key, kind in INTERFACE_FIELDS.items():
        assert isinstance(report[key], kind), key
    assert report["stock_seconds"] == 11.0
    assert report["two_pass_seconds"] == 15.0
    assert report["multitask_seconds"] == 5.0
    assert report["speedup_vs_stock"] == pytest.approx(11.0 / 5.0)
    assert report["speedup_vs_two_pass"] == pytest.approx(3.0)
    assert report["seconds_per_case"] == {"stock": 2.75, "two_pass": 3.75, "multitask": 1.25}
    assert report["per_repeat_seconds"] == per_repeat
    assert report["repeats"] == 3 and report["tta"] is True
    path = bm.write_speed_report(report, tmp_path / "benchmark" / "inference_speed.json")
    assert json.loads(path.read_text()) == report
    assert "2.20x" in bm.format_ratios(report) and "3.00x" in bm.format_ratios(report)


def test_resolve_program_prefers_this_environment(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "nnUNetv2_predict"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setattr(bm.sys, "executable", os.fspath(bin_dir / "python"))
    monkeypatch.setenv("PATH", os.fspath(tmp_path / "nowhere"))
    assert bm.resolve_program(["nnUNetv2_predict", "-i", "x"]) == [os.fspath(program), "-i", "x"]
    assert bm.resolve_program(["pancreas-mtl-predict", "-i", "x"])[1:] == [
        "-m", "pancreas_mtl.inference.cli", "-i", "x"
    ]
    program.unlink()
    with pytest.raises(FileNotFoundError, match="nnUNetv2_predict"):
        bm.resolve_program(["nnUNetv2_predict"])


def fake_results(root: Path, file_ending=".nii.gz") -> Path:
    """An nnU-Net results tree with one fold checkpoint (empty files: nothing loads them here)."""
    model = root / "Dataset999_Toy" / f"{TRAINER}__nnUNetPlans__3d_cpu"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text(json.dumps({"file_ending": file_ending}))
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return model


def test_prediction_environment_checks_stock_finds_the_same_model(tmp_path, monkeypatch):
    model = fake_results(tmp_path / "results")
    for variable in bm.PATH_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("nnUNet_extTrainer", "")
    with pytest.raises(ValueError, match="nnUNet_raw"):
        bm.prediction_environment(model, 999, TRAINER, "nnUNetPlans", "3d_cpu")
    monkeypatch.setenv("nnUNet_raw", os.fspath(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", os.fspath(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", os.fspath(tmp_path / "results"))
    env = bm.prediction_environment(model, 999, TRAINER, "nnUNetPlans", "3d_cpu")
    assert EXT_TRAINER_DIR in env["nnUNet_extTrainer"].split(os.pathsep)
    assert env["nnUNet_results"] == os.fspath(tmp_path / "results")
    for wrong in ((998, TRAINER, "nnUNetPlans", "3d_cpu"), (999, "nnUNetTrainer", "nnUNetPlans", "3d_cpu"),
                  (999, TRAINER, "nnUNetPlans", "3d_fullres")):
        with pytest.raises(ValueError, match="different models"):
            bm.prediction_environment(model, *wrong)


def test_link_images_names_cases_as_nnunet_expects(tmp_path, nifti):
    image = nifti.save(tmp_path / "src" / "whatever.nii.gz", nifti.image(0))
    bm.link_images([("quiz_007", image)], tmp_path / "input", ".nii.gz")
    linked = tmp_path / "input" / "quiz_007_0000.nii.gz"
    assert linked.read_bytes() == image.read_bytes()
    with pytest.raises(FileNotFoundError, match="quiz_008"):
        bm.link_images([("quiz_008", tmp_path / "missing.nii.gz")], tmp_path / "input2", ".nii.gz")


def test_benchmark_inference_orchestrates_arms_with_fake_commands(tmp_path, monkeypatch, nifti):
    """Every arm is run as its own command, warm-up excluded, masks compared, report and plot written."""
    model = fake_results(tmp_path / "results")
    monkeypatch.setenv("nnUNet_raw", os.fspath(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", os.fspath(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", os.fspath(tmp_path / "results"))
    images = [(c, nifti.save(tmp_path / "images" / f"{c}_0000.nii.gz", nifti.image(i)))
              for i, c in enumerate(["quiz_000", "quiz_001"])]
    seen = []

    def fake_run(command, env, check):
        program, *args = command
        inputs = sorted(p.name for p in Path(args[args.index("-i") + 1]).iterdir())
        out = Path(args[args.index("-o") + 1])
        seen.append((program, "--classify_only" in args, inputs, env["nnUNet_extTrainer"]))
        out.mkdir(parents=True)
        mask = nifti.mask(float_one=False, dtype=np.uint8)
        if program == "nnUNetv2_predict":
            mask[mask == 2] = 0  # stock misses the lesion: label 1 Dice 1, label 2 Dice 0
        if "--classify_only" not in args:
            for case_id, _ in images:
                nifti.save(out / f"{case_id}.nii.gz", mask)
        if program == "pancreas-mtl-predict":
            pd.DataFrame({"Names": [f"{c}.nii.gz" for c, _ in images], "Subtype": [1, 2]}).to_csv(
                out / "subtype_results.csv", index=False
            )

    monkeypatch.setattr(bm, "resolve_program", list)
    monkeypatch.setattr(bm.subprocess, "run", fake_run)
    report = bm.benchmark_inference(
        model, [0], 999, "3d_cpu", "nnUNetPlans", TRAINER, images, tmp_path / "out",
        device="cpu", tta=False, repeats=2,
    )
    programs = [(p, classify) for p, classify, _, _ in seen]
    one_round = [("nnUNetv2_predict", False), ("nnUNetv2_predict", False),
                 ("pancreas-mtl-predict", True), ("pancreas-mtl-predict", False)]
    assert programs == one_round * 3  # warm-up plus two timed rounds
    assert all(inputs == ["quiz_000_0000.nii.gz", "quiz_001_0000.nii.gz"] for _, _, inputs, _ in seen)
    assert all(EXT_TRAINER_DIR in ext.split(os.pathsep) for _, _, _, ext in seen)
    saved = json.loads((tmp_path / "out" / "inference_speed.json").read_text())
    assert saved == report
    assert set(INTERFACE_FIELDS) <= set(saved)
    assert saved["cases"] == 2 and saved["device"] == "cpu" and saved["tta"] is False
    assert saved["mask_dice_vs_stock"] == pytest.approx(0.5)
    assert saved["subtype_agreement_two_pass_vs_multitask"] == 1.0
    assert all(len(v) == 2 for v in saved["per_repeat_seconds"].values())
    assert saved["speedup_vs_stock"] == pytest.approx(saved["stock_seconds"] / saved["multitask_seconds"])
    assert (tmp_path / "out" / "inference_speed.png").stat().st_size > 0
