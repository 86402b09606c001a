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
    error = run_cli("-i", images, "-o", tmp_path / "out", "-m", model, "-chk", "checkpoint_best.pth")
    assert "fold_0/checkpoint_best.pth" in str(error.code)
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
