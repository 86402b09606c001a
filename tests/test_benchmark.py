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
    "stock_inprocess_seconds": float,
    "speedup_vs_stock_inprocess": float,
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
    assert "-npp" not in stock and "-nps" not in stock  # as users run it: nnU-Net's worker pools


def test_stock_inprocess_arm_is_the_stock_command_with_npp_0_nps_0(tmp_path):
    arms = commands(tmp_path)
    (stock,) = arms["stock"]
    (inprocess,) = arms["stock_inprocess"]
    assert inprocess[0] == "nnUNetv2_predict"
    assert option(inprocess, "-npp") == ["0"] and option(inprocess, "-nps") == ["0"]
    out = stock.index("-o") + 1
    assert inprocess[:out] + inprocess[out + 1 : -4] == stock[:out] + stock[out + 1 :]
    assert option(inprocess, "-o") == [os.fspath(tmp_path / "work" / "stock_inprocess")]


@pytest.mark.parametrize("tta", [True, False])
def test_every_arm_uses_same_model_cases_device_and_tta(tmp_path, tta):
    arms = commands(tmp_path, tta=tta)
    stock, classify = arms["two_pass"]
    (multitask,) = arms["multitask"]
    # the two-pass arm starts with the stock command itself, writing to its own folder
    out = stock.index("-o") + 1
    assert stock[:out] + stock[out + 1 :] == arms["stock"][0][:out] + arms["stock"][0][out + 1 :]
    assert stock[out] != arms["stock"][0][out]
    for command in (arms["stock"][0], arms["stock_inprocess"][0], stock, classify, multitask):
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
    assert len(outputs) == 5


def test_run_interleaved_alternates_arms_and_drops_warmup():
    calls = []

    def run(arm):
        calls.append(arm)
        return float(len(calls))

    seconds = bm.run_interleaved(bm.ARMS, 2, run, warmup=1)
    assert calls == list(bm.ARMS) * 3
    assert seconds == {"stock": [5.0, 9.0], "stock_inprocess": [6.0, 10.0], "two_pass": [7.0, 11.0],
                       "multitask": [8.0, 12.0]}
    with pytest.raises(ValueError, match="repeats"):
        bm.run_interleaved(bm.ARMS, 0, run)
    calls.clear()
    assert bm.run_interleaved(bm.ARMS, 1, run, warmup=0) == {arm: [i + 1.0] for i, arm in enumerate(bm.ARMS)}


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
    per_repeat = {"stock": [12.0, 10.0, 11.0], "stock_inprocess": [8.0, 7.0, 9.0],
                  "two_pass": [15.0, 16.0, 14.0], "multitask": [4.0, 5.0, 6.0]}
    report = bm.speed_report(4, "cpu", per_repeat, 0.98, repeats=3, tta=True)
    for key, kind in INTERFACE_FIELDS.items():
        assert isinstance(report[key], kind), key
    assert report["stock_seconds"] == 11.0
    assert report["stock_inprocess_seconds"] == 8.0
    assert report["two_pass_seconds"] == 15.0
    assert report["multitask_seconds"] == 5.0
    assert report["speedup_vs_stock"] == pytest.approx(11.0 / 5.0)
    assert report["speedup_vs_stock_inprocess"] == pytest.approx(8.0 / 5.0)
    assert report["speedup_vs_two_pass"] == pytest.approx(3.0)
    assert report["mask_dice_vs_stock"] == 0.98
    assert report["seconds_per_case"] == {"stock": 2.75, "stock_inprocess": 2.0, "two_pass": 3.75,
                                          "multitask": 1.25}
    assert report["per_repeat_seconds"] == per_repeat
    assert report["repeats"] == 3 and report["tta"] is True
    path = bm.write_speed_report(report, tmp_path / "benchmark" / "inference_speed.json")
    assert json.loads(path.read_text()) == report
    text = bm.format_ratios(report)
    assert "2.20x" in text and "3.00x" in text and "-npp 0 -nps 0: 1.60x" in text
    assert "warm" not in text


class FakeClock:
    """Each prediction takes the seconds its arm and case say; no real time passes."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_predictors(clock, cost, calls):
    def make(arm):
        def predict(image, output_truncated):
            calls.append((arm, image.name, output_truncated))
            clock.now += cost[arm][image.name.split("_0000")[0]]
            if output_truncated is not None:
                Path(output_truncated + ".nii.gz").write_bytes(b"mask")
            return np.array([0.2, 0.8])
        return predict
    return {arm: make(arm) for arm in bm.WARM_ARMS}


def test_time_warm_cases_warms_up_then_times_every_case_of_every_arm(tmp_path):
    clock, calls = FakeClock(), []
    cost = {"stock": {"a": 3.0, "b": 5.0}, "classify_only": {"a": 2.0, "b": 2.5},
            "multitask": {"a": 1.0, "b": 1.5}}
    images = [("a", tmp_path / "a_0000.nii.gz"), ("b", tmp_path / "b_0000.nii.gz")]
    folders = bm.warm_output_folders(tmp_path / "work")
    seconds = bm.time_warm_cases(fake_predictors(clock, cost, calls), images, folders, repeats=2,
                                 clock=clock)
    # warm-up: case a through every arm, untimed; then per repeat, per case, every arm in turn
    warmup = [(arm, "a_0000.nii.gz") for arm in bm.WARM_ARMS]
    timed = [(arm, f"{c}_0000.nii.gz") for c in "ab" for arm in bm.WARM_ARMS]
    assert [(arm, name) for arm, name, _ in calls] == warmup + timed * 2
    assert seconds == {arm: {c: [cost[arm][c]] * 2 for c in "ab"} for arm in bm.WARM_ARMS}
    outputs = {arm: out for arm, _, out in calls}
    assert outputs["classify_only"] is None
    assert outputs["stock"] == os.fspath(tmp_path / "work" / "warm" / "stock" / "b")
    assert outputs["multitask"] == os.fspath(tmp_path / "work" / "warm" / "multitask" / "b")
    assert (tmp_path / "work" / "warm" / "multitask" / "a.nii.gz").is_file()
    with pytest.raises(ValueError, match="repeats"):
        bm.time_warm_cases(fake_predictors(clock, cost, []), images, folders, repeats=0)


def test_warm_report_per_case_seconds_speedups_and_startup():
    per_case = {
        "stock": {"a": [3.0, 4.0, 30.0], "b": [5.0, 6.0, 5.0]},  # repeat totals 8, 10, 35 -> median 10
        "classify_only": {"a": [2.0, 2.0, 2.0], "b": [2.0, 2.0, 2.0]},  # 4 each
        "multitask": {"a": [1.0, 1.0, 1.0], "b": [1.0, 2.0, 1.5]},  # 2, 3, 2.5 -> median 2.5
    }
    commands = {"stock": 30.0, "stock_inprocess": 20.0, "two_pass": 40.0, "multitask": 10.0}
    report = bm.warm_report(per_case, commands, 2, warm_mask_dice_vs_stock=1.0)
    assert report["warm_per_repeat_seconds"]["two_pass"] == [12.0, 14.0, 39.0]
    assert report["warm_seconds_per_case"] == {
        "stock": 5.0, "classify_only": 2.0, "multitask": 1.25, "two_pass": 7.0}
    assert report["warm_speedup_vs_stock"] == pytest.approx(4.0)
    assert report["warm_speedup_vs_two_pass"] == pytest.approx(5.6)
    # what each command spends besides per-case work
    assert report["startup_seconds"] == {"stock": 20.0, "stock_inprocess": 10.0, "two_pass": 26.0,
                                         "multitask": 7.5}
    assert report["warm_per_case_seconds"] == per_case
    assert report["warm_mask_dice_vs_stock"] == 1.0


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

    warm_calls = []

    def fake_load_warm_predictors(model_folder, folds, checkpoint, device_type, tta, step_size):
        # the warm arms load the command arms' model with their settings
        assert (model_folder, list(folds), checkpoint) == (model, [0], "checkpoint_final.pth")
        assert (device_type, tta, step_size) == ("cpu", False, 0.5)

        def make(arm):
            def predict(image, output_truncated):
                warm_calls.append((arm, image.name))
                if output_truncated is not None:
                    mask = nifti.mask(float_one=False, dtype=np.uint8)
                    if arm == "stock":
                        mask[mask == 2] = 0  # the same masks as the stock command
                    nifti.save(Path(output_truncated + ".nii.gz"), mask)
            return predict

        return {arm: make(arm) for arm in bm.WARM_ARMS}, {"stock": 1.0, "multitask": 2.0}

    monkeypatch.setattr(bm, "resolve_program", list)
    monkeypatch.setattr(bm.subprocess, "run", fake_run)
    monkeypatch.setattr(bm, "load_warm_predictors", fake_load_warm_predictors)
    report = bm.benchmark_inference(
        model, [0], 999, "3d_cpu", "nnUNetPlans", TRAINER, images, tmp_path / "out",
        device="cpu", tta=False, repeats=2,
    )
    programs = [(p, classify) for p, classify, _, _ in seen]
    one_round = [("nnUNetv2_predict", False), ("nnUNetv2_predict", False), ("nnUNetv2_predict", False),
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
    assert saved["speedup_vs_stock_inprocess"] == pytest.approx(
        saved["stock_inprocess_seconds"] / saved["multitask_seconds"])
    assert sum("-npp 0 -nps 0" in c for cmds in saved["commands"].values() for c in cmds) == 1
    # warm arms: one warm-up case, then two repeats over both cases, every arm in turn
    warm_round = [(arm, f"{c}_0000.nii.gz") for c in ("quiz_000", "quiz_001") for arm in bm.WARM_ARMS]
    assert warm_calls == [(arm, "quiz_000_0000.nii.gz") for arm in bm.WARM_ARMS] + warm_round * 2
    assert set(saved["warm_seconds_per_case"]) == {"stock", "classify_only", "two_pass", "multitask"}
    assert all(len(v) == 2 for v in saved["warm_per_repeat_seconds"].values())
    assert saved["warm_speedup_vs_stock"] == pytest.approx(
        saved["warm_seconds_per_case"]["stock"] / saved["warm_seconds_per_case"]["multitask"])
    assert saved["warm_mask_dice_vs_stock"] == pytest.approx(0.5)
    assert saved["warm_load_seconds"] == {"stock": 1.0, "multitask": 2.0}
    assert saved["mask_agreement_dice"] == {
        "stock_inprocess_vs_stock": 1.0, "warm_stock_vs_stock": 1.0,
        "warm_stock_vs_stock_inprocess": 1.0, "warm_multitask_vs_multitask": 1.0}
    assert set(saved["arm_descriptions"]) >= {"stock", "stock_inprocess", "two_pass", "multitask", "warm"}
    assert (tmp_path / "out" / "inference_speed.png").stat().st_size > 0
    text = bm.format_ratios(saved)
    assert "-npp 0 -nps 0" in text and "warm" in text
