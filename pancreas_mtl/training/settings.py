"""Training settings for the multi-task trainer.

nnU-Net builds trainers from a fixed constructor signature, so the workflow hands settings over
in a JSON file named by the PANCREAS_MTL_TRAINER_SETTINGS environment variable. Without it the
defaults below apply: the full-scale (GPU) recipe.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

SETTINGS_ENV = "PANCREAS_MTL_TRAINER_SETTINGS"


@dataclasses.dataclass
class TrainerSettings:
    num_epochs: int = 500
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    initial_lr: float = 1e-2
    grad_clip: float = 12.0
    cls_loss_weight: float = 0.3
    cls_warmup_epochs: int = 15
    cls_ramp_epochs: int = 15
    head_lr_multiplier: float = 4.0
    head_momentum: float = 0.9
    head_encoder_gradient: float = 0.0
    class_weighting: str = "balanced"
    intensity_augmentation: float = 1.0
    early_stopping_patience: int = 100
    early_stopping_min_delta: float = 0.0
    score_seg_weight: float = 0.5
    checkpoint_every: int = 5
    restore_best: bool = False
    case_level_refit: bool = True
    refit_c: float = 1.0
    unpredicted_warning_epochs: int = 5
    case_validation_every: int = 1
    subtype_table: str | None = None

    def cls_weight_at(self, epoch: int) -> float:
        """Classification loss weight: zero during warm-up, then a linear ramp to the target."""
        if epoch < self.cls_warmup_epochs:
            return 0.0
        if self.cls_ramp_epochs <= 0:
            return self.cls_loss_weight
        ramp = min(1.0, (epoch - self.cls_warmup_epochs + 1) / self.cls_ramp_epochs)
        return self.cls_loss_weight * ramp

    @classmethod
    def from_dict(cls, values: dict) -> "TrainerSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown trainer settings: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_settings() -> TrainerSettings:
    path = os.environ.get(SETTINGS_ENV)
    if not path:
        return TrainerSettings()
    return TrainerSettings.from_dict(json.loads(Path(path).read_text()))


def settings_from_config(train: dict) -> dict:
    """Trainer settings from the workflow's `train` config section."""
    stopping = train.get("early_stopping", {})
    values = {
        "num_epochs": train["epochs"],
        "iterations_per_epoch": train["iterations_per_epoch"],
        "val_iterations_per_epoch": train["val_iterations_per_epoch"],
        "initial_lr": train["initial_lr"],
        "grad_clip": train["grad_clip"],
        "cls_loss_weight": train["cls_loss_weight"],
        "cls_warmup_epochs": train["cls_warmup_epochs"],
        "cls_ramp_epochs": train["cls_ramp_epochs"],
        "head_lr_multiplier": train["head_lr_multiplier"],
        "head_momentum": train["head_momentum"],
        "head_encoder_gradient": train["head_encoder_gradient"],
        "class_weighting": train["class_weighting"],
        "intensity_augmentation": train["intensity_augmentation"],
        "early_stopping_patience": stopping.get("patience", 100),
        "early_stopping_min_delta": stopping.get("min_delta", 0.0),
        "score_seg_weight": stopping.get("seg_weight", 0.5),
        "restore_best": stopping.get("restore_best", False),
        "case_level_refit": train["case_level_refit"],
        "checkpoint_every": train["checkpoint_every"],
    }
    return TrainerSettings.from_dict(values).to_dict()
