"""A trained model that travels: one zip in the layout of nnU-Net's own model export, and its import.

The zip's top level is `DatasetXXX_Name/<trainer>__<plans>__<configuration>/` with plans.json,
dataset.json, dataset_fingerprint.json and `fold_N/<checkpoint>` for every packed fold, as
`nnunetv2.model_sharing.model_export.export_pretrained_model` writes it, so stock
`nnUNetv2_install_pretrained_model_from_zip` installs it. The subtype head and its case-level
refit are part of each checkpoint's network weights. nnU-Net's exporter itself is not used: it
insists on files a model trained here does not have (fold_N/validation/summary.json).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from ..layout import check_model_folder

FINAL_CHECKPOINT = "checkpoint_final.pth"
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
# packed beside the checkpoints when present: training curves and records, small
FOLD_RECORDS = (
    "debug.json",
    "progress.png",
    "case_level_refit.json",
    "classification_monitor.json",
    "classification_monitor.csv",
    "classification_monitor.png",
    "validation/summary.json",
)
FOLD_FOLDER = re.compile(r"^fold_(\d+)$")
MODEL_FOLDER = re.compile(r"^[^_].*__.+__.+$")
HEAD_PREFIX = "head."


class ModelError(ValueError):
    """A model that this workflow cannot predict with; the message names the file."""


def model_folds(model_folder: str | os.PathLike, checkpoint: str = FINAL_CHECKPOINT) -> list[int]:
    """Folds of a results folder that hold `checkpoint`, sorted; ModelError when there is none."""
    model_folder = Path(model_folder)
    folds = sorted(
        int(m.group(1))
        for p in model_folder.iterdir()
        if (m := FOLD_FOLDER.match(p.name)) and (p / checkpoint).is_file()
    )
    if not folds:
        raise ModelError(f"model folder {model_folder} holds no fold_N/{checkpoint}")
    return folds


def input_channels(dataset_json: str | os.PathLike) -> list[str]:
    """The input channels a model's dataset.json asks for (nnU-Net's channel_names, or modality)."""
    dataset = json.loads(Path(dataset_json).read_text())
    channels = dataset.get("channel_names", dataset.get("modality", {}))
    return [str(channels[k]) for k in sorted(channels, key=int)]


def check_head(checkpoint: str | os.PathLike) -> str:
    """The trainer name of a checkpoint whose network carries the subtype head; ModelError otherwise."""
    import torch

    checkpoint = Path(checkpoint)
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for damaged or foreign files
        raise ModelError(f"{checkpoint}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    weights = saved.get("network_weights") if isinstance(saved, dict) else None
    if not isinstance(weights, dict):
        raise ModelError(f"{checkpoint}: not an nnU-Net checkpoint (no network_weights)")
    trainer = str(saved.get("trainer_name", "unknown trainer"))
    if not any(k.startswith(HEAD_PREFIX) for k in weights):
        raise ModelError(
            f"{checkpoint}: a stock nnU-Net checkpoint ({trainer}) without this workflow's subtype "
            "head; nnUNetv2_predict can segment with it, but it cannot classify. Give a model "
            "trained by this workflow."
        )
    return trainer


def check_multitask_model(
    model_folder: str | os.PathLike, checkpoint: str = FINAL_CHECKPOINT, folds: Sequence[int] | None = None
) -> list[int]:
    """The folds of a results folder this workflow can predict with, every one checked.

    ModelError (or FileNotFoundError) naming the file for a folder that is not an nnU-Net results
    folder, a missing fold checkpoint, a model asking for more than one input channel, or a
    checkpoint without the subtype head. Without `folds`, every fold holding `checkpoint`.
    """
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise FileNotFoundError(f"model folder {model_folder} does not exist")
    folds = model_folds(model_folder, checkpoint) if folds is None else [int(f) for f in folds]
    check_model_folder(model_folder, folds, checkpoint)
    dataset_json = model_folder / "dataset.json"
    channels = input_channels(dataset_json)
    if len(channels) != 1:
        raise ModelError(
            f"{dataset_json}: the model takes {len(channels)} input channels ({', '.join(channels)}); "
            "this workflow predicts from one CT channel per case (<case>_0000.nii.gz)"
        )
    for fold in folds:
        check_head(model_folder / f"fold_{fold}" / checkpoint)
    return folds


def _files_to_pack(model_folder: Path, folds: Sequence[int], checkpoints: Sequence[str]) -> list[Path]:
    files = [model_folder / name for name in MODEL_FILES if (model_folder / name).is_file()]
    for fold in folds:
        fold_folder = model_folder / f"fold_{fold}"
        files += [fold_folder / c for c in checkpoints]
        files += [fold_folder / r for r in FOLD_RECORDS if (fold_folder / r).is_file()]
    return files


def pack_model(
    model_folder: str | os.PathLike,
    folds: Sequence[int],
    output_zip: str | os.PathLike,
    checkpoints: Iterable[str] = (FINAL_CHECKPOINT,),
) -> Path:
    """Zip a trained model (the given folds) as nnU-Net's model export lays it out; return the zip.

    The zip is written through a temporary sibling, so a failed pack leaves no half-written file.
    """
    model_folder = Path(model_folder).resolve()
    checkpoints = list(dict.fromkeys(checkpoints))
    for checkpoint in checkpoints:
        check_multitask_model(model_folder, checkpoint, folds)
    # entries are relative to nnU-Net's results root: DatasetXXX_Name/<model>/...
    root = model_folder.parent.parent
    output_zip = Path(output_zip)
    output_zip.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output_zip.name}.", suffix=".tmp", dir=output_zip.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in _files_to_pack(model_folder, folds, checkpoints):
                archive.write(path, path.relative_to(root).as_posix())
        os.replace(tmp, output_zip)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output_zip


def _model_in_zip(source: Path, names: Sequence[str]) -> PurePosixPath:
    """`DatasetXXX_Name/<model>` of the one model a zip holds; ModelError naming the zip otherwise."""
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise ModelError(f"{source}: entry {name!r} points outside the folder it unpacks to")
    models = sorted(
        {PurePosixPath(n).parent for n in names if len(PurePosixPath(n).parts) == 3 and n.endswith("/plans.json")}
    )
    if not models:
        raise ModelError(
            f"{source}: no model in this zip (expected DatasetXXX_Name/<trainer>__<plans>__<configuration>/"
            "plans.json, as `pack` and nnUNetv2_export_model_to_zip write)"
        )
    if len(models) > 1:
        raise ModelError(f"{source} holds {len(models)} models ({', '.join(map(str, models))}); pack one per zip")
    return models[0]


def _find_model_folder(source: Path) -> Path:
    """The results folder of one model: `source` itself, or the one model inside a results tree."""
    if (source / "plans.json").is_file():
        return source
    found = sorted({p.parent for pattern in ("*/plans.json", "*/*/plans.json") for p in source.glob(pattern)
                    if MODEL_FOLDER.match(p.parent.name)})
    if len(found) == 1:
        return found[0]
    hint = f": it holds {len(found)} ({', '.join(str(f) for f in found)})" if found else ""
    raise FileNotFoundError(
        f"model folder {source} lacks plans.json: give the <trainer>__<plans>__<configuration> "
        f"folder of one model, or its packed zip{hint}"
    )


def import_model(
    source: str | os.PathLike, destination: str | os.PathLike, checkpoint: str = FINAL_CHECKPOINT
) -> Path:
    """Put a model (a packed zip, or a results folder) under `destination`, checked; return its folder.

    A zip is unpacked, a folder is linked, both as `destination/DatasetXXX_Name/<model>`; the
    destination is replaced only once the model has passed `check_multitask_model`.
    """
    source, destination = Path(source), Path(destination)
    if not source.exists():
        raise FileNotFoundError(f"model {source} does not exist")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        if source.is_dir():
            folder = _find_model_folder(source.resolve())
            check_multitask_model(folder, checkpoint)
            relative = PurePosixPath(folder.parent.name, folder.name)
            (staging / relative).parent.mkdir(parents=True)
            (staging / relative).symlink_to(folder, target_is_directory=True)
        elif zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                names = archive.namelist()
                relative = _model_in_zip(source, names)
                archive.extractall(staging, [n for n in names if PurePosixPath(n).parts[:2] == relative.parts])
            try:
                check_multitask_model(staging / relative, checkpoint)
            except (ModelError, FileNotFoundError) as error:
                # name the file inside the zip, not the staging folder it was unpacked to
                raise ModelError(str(error).replace(f"{staging}{os.sep}", f"{source}:")) from None
        else:
            raise ModelError(f"model {source} is neither a model folder nor a zip file")
        if destination.is_symlink() or destination.is_file():
            destination.unlink()
        elif destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination / relative


def installed_model(destination: str | os.PathLike) -> Path:
    """The model folder `import_model` put under `destination`."""
    destination = Path(destination)
    found = sorted(p.parent for p in destination.glob("*/*/plans.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{destination} holds {len(found)} imported models, expected one")
    return found[0]
