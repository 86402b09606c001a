"""A trained model that travels: pack into nnU-Net's export layout, install with stock nnU-Net, import."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from pancreas_mtl.inference import model_package
from pancreas_mtl.inference.model_package import (
    ModelError,
    check_multitask_model,
    import_model,
    installed_model,
    model_folds,
    pack_model,
)
from pancreas_mtl.layout import check_model_folder

DATASET = "Dataset501_PancreasMTL"
NAME = "nnUNetTrainerMultiTask__nnUNetPlans__3d_cpu"


def save_checkpoint(path: Path, head: bool = True, trainer: str = "nnUNetTrainerMultiTask", seed: int = 0):
    weights = {"encoder.stages.0.weight": torch.randn(2, 3, generator=torch.Generator().manual_seed(seed))}
    if head:
        weights["head.classifier.1.weight"] = torch.ones(3, 4) * seed
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": weights, "trainer_name": trainer, "current_epoch": 10}, path)


def fake_model(root: Path, folds=(0,), head: bool = True, channels=("CT",), name: str = NAME,
               trainer: str = "nnUNetTrainerMultiTask") -> Path:
    """A results folder as training leaves it: plans, dataset, fingerprint, fold checkpoints, records."""
    model = root / DATASET / name
    model.mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps({"plans_name": "nnUNetPlans"}))
    (model / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {"background": 0, "pancreas": [1, 2], "lesion": 2},
        "file_ending": ".nii.gz",
        "num_subtypes": 3,
    }))
    (model / "dataset_fingerprint.json").write_text(json.dumps({"spacings": [[2.5, 1.5, 1.5]]}))
    for fold in folds:
        save_checkpoint(model / f"fold_{fold}" / "checkpoint_final.pth", head=head, trainer=trainer, seed=fold)
        (model / f"fold_{fold}" / "progress.png").write_bytes(b"png")
        (model / f"fold_{fold}" / "case_level_refit.json").write_text("{}")
        (model / f"fold_{fold}" / "checkpoint_latest.pth").write_bytes(b"not packed")
    return model


def test_pack_writes_nnunet_export_layout(tmp_path):
    model = fake_model(tmp_path / "nnUNet_results", folds=(0, 1, 2))
    packed = pack_model(model, [0, 2], tmp_path / "package" / f"{NAME}.zip")
    assert packed == tmp_path / "package" / f"{NAME}.zip"
    names = set(zipfile.ZipFile(packed).namelist())
    top = f"{DATASET}/{NAME}"
    assert names == {
        f"{top}/plans.json", f"{top}/dataset.json", f"{top}/dataset_fingerprint.json",
        *(f"{top}/fold_{f}/{n}" for f in (0, 2)
          for n in ("checkpoint_final.pth", "progress.png", "case_level_refit.json")),
    }
    assert not list(packed.parent.glob(".*.tmp"))


def test_stock_nnunet_installs_the_packed_zip(tmp_path, monkeypatch):
    from nnunetv2.model_sharing import model_import

    model = fake_model(tmp_path / "trained", folds=(0, 1))
    packed = pack_model(model, [0, 1], tmp_path / "model.zip")
    installed_root = tmp_path / "elsewhere" / "nnUNet_results"
    # nnU-Net reads nnUNet_results once, at import: point the installer at a fresh tree
    monkeypatch.setattr(model_import, "nnUNet_results", str(installed_root))
    model_import.install_model_from_zip_file(str(packed))
    installed = installed_root / DATASET / NAME
    check_model_folder(installed, [0, 1], "checkpoint_final.pth")
    for relative in ("plans.json", "dataset.json", "dataset_fingerprint.json", "fold_1/checkpoint_final.pth"):
        assert (installed / relative).read_bytes() == (model / relative).read_bytes()
    assert check_multitask_model(installed) == [0, 1]


def test_import_unpacks_a_zip_and_links_a_folder(tmp_path):
    model = fake_model(tmp_path / "nnUNet_results", folds=(0, 1))
    packed = pack_model(model, [1], tmp_path / "model.zip")

    from_zip = import_model(packed, tmp_path / "a" / "model")
    assert from_zip == tmp_path / "a" / "model" / DATASET / NAME and not from_zip.is_symlink()
    assert model_folds(from_zip) == [1]
    assert installed_model(tmp_path / "a" / "model") == from_zip

    from_folder = import_model(model, tmp_path / "b" / "model")
    assert from_folder.is_symlink() and from_folder.resolve() == model.resolve()
    assert model_folds(from_folder) == [0, 1]
    assert installed_model(tmp_path / "b" / "model") == from_folder
    # the results tree above a single model is accepted too
    assert import_model(tmp_path / "nnUNet_results", tmp_path / "c").resolve() == model.resolve()
    # importing again replaces the earlier import
    assert import_model(packed, tmp_path / "b" / "model") == from_folder
    assert not from_folder.is_symlink()


def test_import_of_a_missing_or_foreign_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'absent.zip'} does not exist"):
        import_model(tmp_path / "absent.zip", tmp_path / "model")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ModelError, match=f"{notes} is neither a model folder nor a zip file"):
        import_model(notes, tmp_path / "model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty} lacks plans.json"):
        import_model(empty, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_import_refuses_zips_without_one_model(tmp_path):
    stray = tmp_path / "stray.zip"
    with zipfile.ZipFile(stray, "w") as archive:
        archive.writestr("readme.txt", "no model here")
    with pytest.raises(ModelError, match="no model in this zip"):
        import_model(stray, tmp_path / "model")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../outside/plans.json", "{}")
    with pytest.raises(ModelError, match="points outside"):
        import_model(evil, tmp_path / "model")
    root = tmp_path / "nnUNet_results"
    fake_model(root)
    fake_model(root, name="nnUNetTrainerMultiTask__nnUNetPlans__3d_fullres")
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    with pytest.raises(ModelError, match="holds 2 models"):
        import_model(two, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_stock_checkpoint_without_head_is_refused_naming_it(tmp_path):
    stock = fake_model(tmp_path / "nnUNet_results", head=False, trainer="nnUNetTrainer",
                       name="nnUNetTrainer__nnUNetPlans__3d_cpu")
    checkpoint = stock / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(ModelError, match=f"{checkpoint}: a stock nnU-Net checkpoint \\(nnUNetTrainer\\)"):
        import_model(stock, tmp_path / "model")
    with pytest.raises(ModelError, match="stock nnU-Net checkpoint"):
        pack_model(stock, [0], tmp_path / "stock.zip")
    assert not (tmp_path / "stock.zip").exists()
    # a stock export of the same model: the message names the checkpoint inside the zip
    exported = tmp_path / "exported.zip"
    with zipfile.ZipFile(exported, "w") as archive:
        for path in sorted(stock.rglob("*")):
            archive.write(path, path.relative_to(tmp_path / "nnUNet_results").as_posix())
    with pytest.raises(ModelError) as error:
        import_model(exported, tmp_path / "model")
    assert f"{exported}:{DATASET}/nnUNetTrainer__nnUNetPlans__3d_cpu/fold_0/checkpoint_final.pth" in str(error.value)
    assert "without this workflow's subtype head" in str(error.value)


def test_model_with_two_input_channels_is_refused_naming_dataset_json(tmp_path):
    model = fake_model(tmp_path / "nnUNet_results", channels=("CT", "PET"))
    with pytest.raises(ModelError, match=f"{model / 'dataset.json'}: the model takes 2 input channels \\(CT, PET\\)"):
        check_multitask_model(model)


def test_damaged_checkpoint_and_missing_folds_are_named(tmp_path):
    model = fake_model(tmp_path / "nnUNet_results", folds=(0,))
    with pytest.raises(FileNotFoundError, match="fold_3/checkpoint_final.pth"):
        check_multitask_model(model, folds=[0, 3])
    with pytest.raises(ModelError, match="holds no fold_N/checkpoint_best.pth"):
        check_multitask_model(model, "checkpoint_best.pth")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"truncated")
    with pytest.raises(ModelError, match=f"{model / 'fold_0' / 'checkpoint_final.pth'}: not a readable checkpoint"):
        check_multitask_model(model)


def test_input_channels_read_modality_of_old_datasets(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"modality": {"1": "PET", "0": "CT"}}))
    assert model_package.input_channels(path) == ["CT", "PET"]
