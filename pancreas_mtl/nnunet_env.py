"""nnU-Net conventions in one place: names of datasets, plans, trainers and model folders, the
folders nnU-Net reads from its environment, the extra-trainer path, the torch device and the
hand-off of trainer settings. Bottom layer: importing it loads neither torch nor nnU-Net, so the
Snakefile and dry runs can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

PLANS_IDENTIFIERS = {
    "ExperimentPlanner": "nnUNetPlans",
    "nnUNetPlannerResEncM": "nnUNetResEncUNetMPlans",
    "nnUNetPlannerResEncL": "nnUNetResEncUNetLPlans",
    "nnUNetPlannerResEncXL": "nnUNetResEncUNetXLPlans",
}
# The one registry of subtype heads by name: the trainer nnU-Net loads for each. The head classes
# are registered under the same names in training/heads.py (a test checks both and the schema agree).
HEAD_TRAINERS = {
    "lesion_pooling": "nnUNetTrainerMultiTask",
    "attention_fusion": "nnUNetTrainerMultiTaskAttention",
}
PATH_VARIABLES = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"
EXT_TRAINER_DIR = str(Path(__file__).resolve().parent / "nnunet_ext")
# nnU-Net builds trainers through a fixed constructor: settings travel in a JSON file named here
SETTINGS_VARIABLE = "PANCREAS_MTL_TRAINER_SETTINGS"
# the one checkpoint that carries the head's case-level refit (done at the end of training)
FINAL_CHECKPOINT = "checkpoint_final.pth"


def dataset_name(dataset_id: int, name: str) -> str:
    return f"{dataset_prefix(dataset_id)}{name}"


def dataset_prefix(dataset_id: int) -> str:
    """What every folder of dataset `dataset_id` starts with in nnU-Net's trees."""
    return f"Dataset{int(dataset_id):03d}_"


def plans_identifier(planner: str) -> str:
    try:
        return PLANS_IDENTIFIERS[planner]
    except KeyError:
        raise ValueError(f"unknown planner {planner!r}; choose one of {sorted(PLANS_IDENTIFIERS)}") from None


def trainer_name(head: str) -> str:
    try:
        return HEAD_TRAINERS[head]
    except KeyError:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEAD_TRAINERS)}") from None


def model_folder_name(trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's results folder name for a trainer/plans/configuration triple."""
    return f"{trainer}__{plans}__{configuration}"


def set_nnunet_paths(raw: str, preprocessed: str, results: str) -> None:
    """nnU-Net reads its folders from environment variables; set them to absolute paths."""
    for key, value in (("raw", raw), ("preprocessed", preprocessed), ("results", results)):
        os.environ[PATH_VARIABLES[key]] = os.path.abspath(value)


def ensure_ext_trainer_path() -> None:
    """Make nnU-Net find our trainers by name (nnUNet_extTrainer, nnU-Net >= 2.8)."""
    paths = [p for p in os.environ.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep) if p]
    if EXT_TRAINER_DIR not in paths:
        os.environ[EXT_TRAINER_VARIABLE] = os.pathsep.join([*paths, EXT_TRAINER_DIR])


def resolve_device(name: str):
    """'auto' picks CUDA when present, else CPU; 'cuda', 'cuda:1', 'cpu', 'mps' are taken as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def check_prediction_checkpoint(name: str) -> None:
    """Refuse a checkpoint without the case-level refit of the subtype head.

    The refit runs once, at the end of training, and only checkpoint_final.pth is saved after it;
    checkpoint_best.pth, checkpoint_latest.pth and checkpoint_best_score.pth hold a head whose
    output layer was fit on patches, not on whole cases as it is used.
    """
    if name != FINAL_CHECKPOINT:
        raise ValueError(
            f"checkpoint {name!r} does not carry the subtype head's case-level refit; predict "
            f"with {FINAL_CHECKPOINT} (config key predict.checkpoint, pancreas-mtl-predict -chk)"
        )


def default_threads(device_type: str) -> int:
    """Torch threads as nnUNetv2_predict sets them: every CPU on CPU, one when a GPU computes."""
    return (os.cpu_count() or 1) if device_type == "cpu" else 1


@contextlib.contextmanager
def trainer_settings(settings: dict) -> Iterator[None]:
    """Hand trainer settings to trainers nnU-Net constructs inside this block."""
    previous = os.environ.get(SETTINGS_VARIABLE)
    with tempfile.TemporaryDirectory(prefix="pancreas_mtl_settings_") as tmp:
        path = Path(tmp) / "settings.json"
        path.write_text(json.dumps(settings))
        os.environ[SETTINGS_VARIABLE] = str(path)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(SETTINGS_VARIABLE, None)
            else:
                os.environ[SETTINGS_VARIABLE] = previous


def handed_settings() -> dict:
    """The settings handed over by `trainer_settings`; empty outside such a block."""
    path = os.environ.get(SETTINGS_VARIABLE)
    return json.loads(Path(path).read_text()) if path else {}
