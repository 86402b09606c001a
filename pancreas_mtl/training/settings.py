"""Training settings of the multi-task trainer: the workflow's `train` config section, filtered.

Settings carry the config keys' own names, and their defaults are the config schema's, so the
hand-off from the workflow is a filter and no default is written twice. nnU-Net constructs
trainers through a fixed signature, so the workflow hands them over with
`nnunet_env.trainer_settings`; a trainer built without that (stock `nnUNetv2_train -tr
nnUNetTrainerMultiTask`) gets the GPU recipe, `config/gpu.yaml` over the schema's defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import yaml

from ..nnunet_env import handed_settings

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
GPU_CONFIG = REPO / "config" / "gpu.yaml"


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    patience: int
    min_delta: float
    seg_weight: float
    restore_best: bool


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    initial_lr: float
    grad_clip: float
    cls_loss_weight: float
    cls_warmup_epochs: int
    cls_ramp_epochs: int
    head_lr_multiplier: float
    head_momentum: float
    head_encoder_gradient: float
    class_weighting: str
    intensity_augmentation: float
    early_stopping: EarlyStopping
    case_level_refit: bool
    refit_c: float
    refit_tta: bool
    case_stage: str
    case_stage_c: list
    case_validation_every: int
    checkpoint_every: int
    progress_png_every: int

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
        """Settings from (part of) a `train` section; missing keys take the schema's defaults."""
        merged = schema_defaults()
        unknown = sorted(set(values) - set(merged))
        if unknown:
            raise ValueError(f"unknown trainer settings: {', '.join(unknown)}")
        stopping = dict(values.get("early_stopping", {}))
        unknown = sorted(set(stopping) - set(merged["early_stopping"]))
        if unknown:
            raise ValueError(f"unknown early_stopping settings: {', '.join(unknown)}")
        merged.update({k: v for k, v in values.items() if k != "early_stopping"})
        merged["early_stopping"] = EarlyStopping(**{**merged["early_stopping"], **stopping})
        return cls(**merged)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _train_schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())["properties"]["train"]["properties"]


def _defaults(properties: dict) -> dict:
    return {
        key: _defaults(spec["properties"]) if spec.get("type") == "object" else spec["default"]
        for key, spec in properties.items()
    }


@functools.cache
def _train_defaults() -> dict:
    return _defaults(_train_schema())


def train_section(values: dict) -> dict:
    """A whole `train` config section: `values` over the schema's defaults."""
    merged = copy.deepcopy(_train_defaults())
    for key, value in values.items():
        merged[key] = {**merged[key], **value} if isinstance(merged.get(key), dict) else value
    return merged


def schema_defaults() -> dict:
    """The trainer settings' defaults as the config schema writes them."""
    return settings_from_config(_train_defaults())


def settings_from_config(train: dict) -> dict:
    """The trainer settings within a `train` config section (run-level keys such as folds, head,
    device and workers are left out)."""
    names = {f.name for f in dataclasses.fields(TrainerSettings)}
    return {k: copy.deepcopy(v) for k, v in train.items() if k in names}


def gpu_recipe() -> dict:
    """Trainer settings of config/gpu.yaml."""
    return settings_from_config(yaml.safe_load(GPU_CONFIG.read_text()).get("train", {}))


def load_settings() -> TrainerSettings:
    """Settings handed over by the workflow, or the GPU recipe for a trainer started on its own."""
    handed = handed_settings()
    return TrainerSettings.from_dict(handed if handed else gpu_recipe())
