"""Prediction entry point and helpers: argument errors, image discovery, split images, CSV-only pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pancreas_mtl import nnunet_env
from pancreas_mtl.inference import cli, predictor
from pancreas_mtl.layout import SUBTYPE_TABLE_COLUMNS as SUBTYPE_COLUMNS


def fake_model(root: Path, folds=(0,), checkpoint="checkpoint_final.pth") -> Path:
    """An nnU-Net results folder with empty checkpoints: enough for the checks before loading."""
    model = root / "Dataset501_PancreasMTL" / "nnUNetTrainerMultiTask__nnUNetPlans__3d_cpu"
    model.mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for fold in folds:
        (model / f"fold_{fold}").mkdir()
        (model / f"fold_{fold}" / checkpoint).write_bytes(b"")
    return model


def image_folder(root: Path, names) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_bytes(b"")
    return root


def run_cli(*args):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in args])
    return exit_info.value


def test_cli_names_input_folder_without_images(tmp_path):
    model = fake_model(tmp_path / "results")
    empty = image_folder(tmp_path / "images", [".DS_Store", "notes.txt", "quiz_001.nii.gz"])
    error = run_cli("-i", empty, "-o", tmp_path / "out", "-m", model)
    assert str(empty) in str(error.code) and "_0000.nii.gz" in str(error.code)
    error = run_cli("-i", tmp_path / "absent", "-o", tmp_path / "out", "-m", model)
    assert str(tmp_path / "absent") in str(error.code) and "does not exist" in str(error.code)
    assert not (tmp_path / "out").exists()


def test_cli_names_model_folder_without_fold_checkpoint(tmp_path):
    model = fake_model(tmp_path / "results", folds=(0,))
    images = image_folder(tmp_path / "images", ["quiz_001_0000.nii.gz"])
    error = run_cli("-i", images, "-o", tmp_path / "out", "-m", model, "-f", 0, 1)
    assert str(model) in str(error.code) and "fold_1/checkpoint_final.pth" in str(error.code)
    error = run_cli("-i", images, "-o", tmp_path / "out", "-m", tmp_path / "nope")
    assert str(tmp_path / "nope") in str(error.code)
    (model / "plans.json").unlink()
    error = run_cli("-i", images, "-o", tmp_path / "out", "-m", model)
    assert "plans.json" in str(error.code)


def test_cli_rejects_bad_numbers(tmp_path, capsys):
    model = fake_model(tmp_path / "results")
    images = image_folder(tmp_path / "images", ["quiz_001_0000.nii.gz"])
    assert run_cli("-i", images, "-o", tmp_path / "o", "-m", model, "--step_size", 1.5).code == 2
    assert "--step_size" in capsys.readouterr().err
    assert run_cli("-i", images, "-o", tmp_path / "o", "-m", model, "--threads", 0).code == 2
    assert run_cli("-i", images, "-o", tmp_path / "o", "-m", model, "-f", "x").code == 2


def test_find_images_sorted_ignoring_other_files(tmp_path):
    folder = image_folder(
        tmp_path / "images",
        ["quiz_010_0000.nii.gz", "quiz_002_0000.nii.gz", "quiz_002_0001.nii.gz", "quiz_002.nii.gz",
         ".DS_Store", "quiz_003_0000.nii"],
    )
    found = cli.find_images(folder)
    assert found == [("quiz_002", folder / "quiz_002_0000.nii.gz"), ("quiz_010", folder / "quiz_010_0000.nii.gz")]
    assert [c for c, _ in cli.find_images(folder, ".nii")] == ["quiz_003"]


def test_default_threads_follow_nnunet(monkeypatch):
    monkeypatch.setattr(nnunet_env.os, "cpu_count", lambda: 7)
    assert nnunet_env.default_threads("cpu") == 7
    assert nnunet_env.default_threads("cuda") == 1


@pytest.mark.parametrize("classify_only", [False, True])
def test_cli_passes_options_to_predictor(tmp_path, monkeypatch, classify_only):
    model = fake_model(tmp_path / "results", folds=(0, 1))
    images = image_folder(tmp_path / "images", ["b_0000.nii.gz", "a_0000.nii.gz"])
    calls = {}

    def fake_load(model_folder, folds, checkpoint, device, tta, step_size, mirror_batch):
        calls["load"] = (Path(model_folder), list(folds), checkpoint, device, tta, step_size, mirror_batch)
        return "predictor"

    def fake_predict(loaded, pairs, output_dir, write_masks=True):
        calls["predict"] = (loaded, [c for c, _ in pairs], Path(output_dir), write_masks)

    monkeypatch.setattr(predictor, "load_predictor", fake_load)
    monkeypatch.setattr(predictor, "predict_cases", fake_predict)
    monkeypatch.setattr("torch.set_num_threads", lambda n: calls.setdefault("threads", n))
    args = ["-i", images, "-o", tmp_path / "out", "-m", model, "-f", 0, 1, "-device", "cpu",
            "--disable_tta", "-step_size", 0.25, "--threads", 3, "--mirror_batch", 2]
    cli.main([str(a) for a in args] + (["--classify_only"] if classify_only else []))
    assert calls["load"] == (model, [0, 1], "checkpoint_final.pth", "cpu", False, 0.25, 2)
    assert calls["predict"] == ("predictor", ["a", "b"], tmp_path / "out", not classify_only)
    assert calls["threads"] == 3


class FakePredictor:
    dataset_json = {"file_ending": ".nii.gz"}
    num_subtypes = 3

    def __init__(self):
        self.outputs = []

    def predict_case(self, image, output_truncated):
        self.outputs.append(output_truncated)
        return np.array([0.1, 0.7, 0.2])


@pytest.mark.parametrize("write_masks", [True, False])
def test_predict_cases_writes_csv_and_masks_only_when_asked(tmp_path, write_masks):
    fake = FakePredictor()
    table = predictor.predict_cases(fake, [("quiz_001", "x_0000.nii.gz")], tmp_path / "out", write_masks)
    expected = [str(tmp_path / "out" / "quiz_001")] if write_masks else [None]
    assert fake.outputs == expected
    saved = pd.read_csv(tmp_path / "out" / "subtype_results.csv")
    assert list(saved.columns[:2]) == ["Names", "Subtype"]
    assert saved["Names"].tolist() == ["quiz_001.nii.gz"] and saved["Subtype"].tolist() == [1]
    assert table["Subtype"].tolist() == [1]


def test_predict_cases_logs_one_line_per_case_with_an_eta(tmp_path, caplog):
    fake = FakePredictor()
    images = [(f"quiz_00{i}", f"quiz_00{i}_0000.nii.gz") for i in range(3)]
    with caplog.at_level("INFO", logger=predictor.__name__):
        predictor.predict_cases(fake, images, tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if r.name == predictor.__name__]
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(f"case {i + 1}/3 quiz_00{i}: subtype 1 (probabilities 0.100 0.700 0.200) | ")
        assert " | ETA " in line
    assert lines[-1].endswith("ETA 0s")


def test_split_images_from_subtype_table(tmp_path):
    table = pd.DataFrame(
        [("quiz_010", "test", None), ("007", "validation", 2), ("quiz_002", "test", None),
         ("quiz_001", "train", 0), ("003", "validation", 1)],
        columns=SUBTYPE_COLUMNS,
    )
    table.to_csv(tmp_path / "subtypes.csv", index=False)
    raw = tmp_path / "Dataset501_PancreasMTL"
    assert predictor.split_images(raw, tmp_path / "subtypes.csv", "test") == [
        ("quiz_002", raw / "imagesTs" / "quiz_002_0000.nii.gz"),
        ("quiz_010", raw / "imagesTs" / "quiz_010_0000.nii.gz"),
    ]
    # numeric-looking ids keep their leading zeros; labelled splits live in imagesTr
    assert predictor.split_images(raw, tmp_path / "subtypes.csv", "validation") == [
        ("003", raw / "imagesTr" / "003_0000.nii.gz"),
        ("007", raw / "imagesTr" / "007_0000.nii.gz"),
    ]
    with pytest.raises(ValueError, match="no train2 cases"):
        predictor.split_images(raw, tmp_path / "subtypes.csv", "train2")


def tiny_predictor(mirror_batch: int):
    """A MultiTaskPredictor around a tiny real network, results kept 'on the device' (the CPU
    here), so nnU-Net's out-of-memory fallback path is the one taken."""
    from types import SimpleNamespace

    import torch

    from test_heads import make_multitask

    net = make_multitask()
    p = predictor.MultiTaskPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
        perform_everything_on_device=True, device=torch.device("cpu"), verbose=False,
        allow_tqdm=False,
    )
    # nnU-Net sets this False for a CPU; True takes its out-of-memory fallback path here too
    p.perform_everything_on_device = True
    p.network = net
    p.list_of_parameters = [net.state_dict()]
    p.configuration_manager = SimpleNamespace(
        patch_size=[8, 16, 16], normalization_schemes=["CTNormalization"], spacing=[2.5, 1.5, 1.5]
    )
    p.plans_manager = SimpleNamespace(
        foreground_intensity_properties_per_channel={"0": {"mean": 60.0, "std": 40.0}}
    )
    p.label_manager = SimpleNamespace(num_segmentation_heads=3)
    p.allowed_mirroring_axes = (0, 1, 2)
    p.mirror_batch = mirror_batch
    return p


def run_with_oom(p, fail_on_call: int, max_batch: int | None = None):
    """Predict a case whose forward pass runs out of memory from call `fail_on_call` on: once, or
    (max_batch) for every batch larger than max_batch."""
    import torch

    forward = p.network.forward_multitask
    calls = []

    def tight(batch, *args, **kwargs):
        calls.append(len(batch))
        once = max_batch is None and len(calls) == fail_on_call
        too_big = max_batch is not None and len(calls) >= fail_on_call and len(batch) > max_batch
        if once or too_big:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(batch, *args, **kwargs)

    p.network.forward_multitask = tight
    data = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 12, 24, 24)).astype(np.float32))
    logits = p.predict_logits_from_preprocessed_data(data)
    return logits, p._evidence, p.last_subtype_probabilities, calls


def assert_same_prediction(got, want):
    import torch

    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-3)
    assert got[1].keys() == want[1].keys()
    for key in want[1]:
        torch.testing.assert_close(got[1][key], want[1][key], rtol=1e-4, atol=1e-3, msg=key)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-5)


def test_out_of_memory_backs_off_the_mirror_batch_without_double_counting():
    clean = run_with_oom(tiny_predictor(8), fail_on_call=10**9)
    p = tiny_predictor(8)
    # after two tiles, only two mirrored copies fit in memory
    result = run_with_oom(p, fail_on_call=3, max_batch=2)
    assert p.mirror_batch == 2
    assert result[3][:2] == [8, 8] and set(result[3][2:]) <= {8, 4, 2}
    assert_same_prediction(result, clean)


def test_out_of_memory_fallback_rerun_starts_from_no_evidence():
    clean = run_with_oom(tiny_predictor(1), fail_on_call=10**9)
    # mirror_batch 1 cannot back off: nnU-Net's fallback reruns the whole window after two tiles
    result = run_with_oom(tiny_predictor(1), fail_on_call=2 * 8 + 1)
    assert len(result[3]) == len(clean[3]) + 2 * 8 + 1
    assert_same_prediction(result, clean)


@pytest.mark.parametrize(
    "checkpoint", ["checkpoint_best.pth", "checkpoint_latest.pth", "checkpoint_best_score.pth"]
)
def test_checkpoints_without_the_case_level_refit_are_refused(tmp_path, checkpoint, capsys):
    model = fake_model(tmp_path / "models", checkpoint=checkpoint)
    with pytest.raises(ValueError, match="case-level refit.*checkpoint_final.pth"):
        predictor.load_predictor(model, [0], checkpoint, device="cpu")
    error = run_cli("-i", image_folder(tmp_path / "in", ["a_0000.nii.gz"]), "-o", tmp_path / "out",
                    "-m", model, "-chk", checkpoint)
    assert error.code == 2
    assert "case-level refit" in capsys.readouterr().err


def test_find_images_in_a_tree_of_any_layout(tmp_path):
    root = image_folder(tmp_path / "images", ["b_0000.nii.gz", "notes.txt", ".DS_Store"])
    image_folder(root / "site1" / "2024", ["a_0000.nii.gz", "a.nii.gz"])
    image_folder(root / "site2", ["c_0000.nii.gz", "c_0000.nii"])
    image_folder(root / ".hidden", ["d_0000.nii.gz"])
    assert cli.find_images(root, recursive=True) == [
        ("a", root / "site1" / "2024" / "a_0000.nii.gz"),
        ("b", root / "b_0000.nii.gz"),
        ("c", root / "site2" / "c_0000.nii.gz"),
    ]
    # a mask named like a channel of another case is no channel: case quiz_0001 has no _0000 image
    image_folder(root / "site3", ["quiz_0001_0000.nii.gz", "quiz_0001.nii.gz"])
    assert [c for c, _ in cli.find_images(root, recursive=True)] == ["a", "b", "c", "quiz_0001"]


def test_find_images_in_a_tree_names_second_channels_and_duplicates(tmp_path):
    root = image_folder(tmp_path / "images", ["a_0000.nii.gz"])
    image_folder(root / "x", ["b_0000.nii.gz", "b_0001.nii.gz"])
    with pytest.raises(ValueError, match=r"x/b_0001.nii.gz: a second input channel \(_0001\) of case b"):
        cli.find_images(root, recursive=True)
    (root / "x" / "b_0001.nii.gz").unlink()
    image_folder(root / "y", ["a_0000.nii.gz"])
    with pytest.raises(ValueError, match=r"y/a_0000.nii.gz: case a found twice \(also .*images/a_0000.nii.gz\)"):
        cli.find_images(root, recursive=True)
    empty = image_folder(tmp_path / "empty" / "deep", ["scan.nii.gz"]).parent
    with pytest.raises(FileNotFoundError, match=f"input folder tree {empty} holds no \\*_0000.nii.gz images"):
        cli.find_images(empty, recursive=True)


def test_check_images_names_unloadable_and_4d_images(tmp_path, nifti):
    good = nifti.save(tmp_path / "a_0000.nii.gz", nifti.image(0))
    four_d = nifti.save(tmp_path / "b_0000.nii.gz", np.zeros((4, 4, 4, 2), dtype=np.float32))
    broken = tmp_path / "c_0000.nii.gz"
    broken.write_bytes(b"not an image")
    predictor.check_images([("a", good)])
    with pytest.raises(ValueError) as error:
        predictor.check_images([("a", good), ("b", four_d), ("c", broken)])
    lines = str(error.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{four_d}: shape (4, 4, 4, 2) is not one 3-D volume")
    assert lines[1].startswith(f"{broken}: does not load as an image")


def test_predict_images_uses_every_fold_of_the_imported_model(tmp_path, monkeypatch, nifti):
    model = fake_model(tmp_path / "model", folds=(0, 2))
    images = tmp_path / "images"
    nifti.save(images / "p" / "b_0000.nii.gz", nifti.image(1))
    nifti.save(images / "q" / "r" / "a_0000.nii.gz", nifti.image(2))
    calls = {}

    def fake_load(model_folder, folds, checkpoint, device, tta, step_size, mirror_batch):
        calls["load"] = (Path(model_folder), list(folds), checkpoint, device, tta, step_size, mirror_batch)
        return "predictor"

    def fake_predict(loaded, pairs, output_dir, write_masks=True):
        calls["predict"] = (loaded, list(pairs), Path(output_dir), write_masks)

    monkeypatch.setattr(predictor, "load_predictor", fake_load)
    monkeypatch.setattr(predictor, "predict_cases", fake_predict)
    monkeypatch.setattr(predictor.torch, "set_num_threads", lambda n: calls.setdefault("threads", n))
    predictor.predict_images(tmp_path / "model", images, tmp_path / "out", device="cpu", tta=False,
                             step_size=0.25, threads=3, mirror_batch=2)
    assert calls["load"] == (model, [0, 2], "checkpoint_final.pth", "cpu", False, 0.25, 2)
    assert calls["predict"] == (
        "predictor",
        [("a", images / "q" / "r" / "a_0000.nii.gz"), ("b", images / "p" / "b_0000.nii.gz")],
        tmp_path / "out",
        True,
    )
    assert calls["threads"] == 3
    (images / "p" / "b_0000.nii.gz").write_bytes(b"broken")
    calls.clear()
    with pytest.raises(ValueError, match="b_0000.nii.gz: does not load"):
        predictor.predict_images(tmp_path / "model", images, tmp_path / "out")
    assert "load" not in calls


def test_predict_cases_names_the_image_of_a_failing_case(tmp_path):
    class Failing(FakePredictor):
        def predict_case(self, image, output_truncated):
            raise MemoryError("out of memory")

    with pytest.raises(RuntimeError, match="x_0000.nii.gz: prediction of case quiz_001 failed \\(MemoryError"):
        predictor.predict_cases(Failing(), [("quiz_001", "x_0000.nii.gz")], tmp_path / "out")
