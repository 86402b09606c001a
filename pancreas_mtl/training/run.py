"""Train one fold through nnU-Net's own entry points, resuming from the latest checkpoint."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from .settings import SETTINGS_ENV, TrainerSettings
from ..naming import trainer_name

logger = logging.getLogger(__name__)

EXT_TRAINER_DIR = str(Path(__file__).resolve().parent.parent / "nnunet_ext")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda', 'cuda:1', 'cpu', 'mps' are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def ensure_ext_trainer_path() -> None:
    """Make nnU-Net find our trainers by name (nnUNet_extTrainer, nnU-Net >= 2.8)."""
    paths = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if EXT_TRAINER_DIR not in paths:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([*paths, EXT_TRAINER_DIR])


def train_fold(
    dataset_id: int,
    configuration: str,
    fold: int,
    plans_identifier: str,
    head: str,
    settings: dict,
    device: str = "auto",
    threads: int = 1,
    data_augmentation_workers: int = 1,
    nnunet_validation: bool = False,
) -> Path:
    """Train (or resume) one fold; return its checkpoint_final.pth.

    A fold whose final checkpoint exists is left alone; an interrupted one continues from its
    latest checkpoint rather than from epoch 0.
    """
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    ensure_ext_trainer_path()
    os.environ["nnUNet_n_proc_DA"] = str(data_augmentation_workers)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    TrainerSettings.from_dict(settings)

    with tempfile.TemporaryDirectory() as tmp:
        settings_file = Path(tmp) / "settings.json"
        settings_file.write_text(json.dumps(settings))
        previous = os.environ.get(SETTINGS_ENV)
        os.environ[SETTINGS_ENV] = str(settings_file)
        try:
            trainer = get_trainer_from_args(
                str(dataset_id),
                configuration,
                fold,
                trainer_name(head),
                plans_identifier,
                device=torch_device,
            )
            final = Path(trainer.output_folder) / "checkpoint_final.pth"
            if final.is_file():
                logger.info("fold %s already trained: %s", fold, final)
                return final
            resume = (Path(trainer.output_folder) / "checkpoint_latest.pth").is_file()
            if resume:
                logger.info("resuming fold %s from checkpoint_latest.pth", fold)
            maybe_load_checkpoint(trainer, resume, False)
            trainer.run_training()
            if nnunet_validation:
                trainer.perform_actual_validation(False)
        finally:
            if previous is None:
                os.environ.pop(SETTINGS_ENV, None)
            else:
                os.environ[SETTINGS_ENV] = previous
    return final
