"""Train one fold through nnU-Net's own entry points, resuming from the latest checkpoint."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..nnunet_env import ensure_ext_trainer_path, resolve_device, trainer_name, trainer_settings
from .settings import TrainerSettings, settings_from_config, train_section

logger = logging.getLogger(__name__)


def train_fold(
    dataset_id: int,
    configuration: str,
    fold: int,
    plans_identifier: str,
    train: dict,
    threads: int = 1,
    nnunet_validation: bool = False,
    predict: dict | None = None,
) -> Path:
    """Train (or resume) one fold with the workflow's `train` config section; return its
    checkpoint_final.pth.

    A fold whose final checkpoint exists is left alone; an interrupted one continues from its
    latest checkpoint rather than from epoch 0. `predict` (the workflow's `predict` section) gives
    the refit and the case validation prediction's sliding-window step and mirror batch.
    """
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    train = train_section(train)
    ensure_ext_trainer_path()
    os.environ["nnUNet_n_proc_DA"] = str(train["data_augmentation_workers"])
    torch_device = resolve_device(train["device"])
    if torch_device.type == "cpu":
        # the job's threads unless torch_threads says otherwise: one thread beside the augmentation
        # worker made the demo's epochs 1.6x slower on an idle 2-core machine (docs/performance.md)
        n = train["torch_threads"] or max(1, threads)
        torch.set_num_threads(n)
        logger.info("training on CPU with %d PyTorch thread(s)", n)
    settings = settings_from_config(train)
    TrainerSettings.from_dict(settings)

    with trainer_settings(settings):
        trainer = get_trainer_from_args(
            str(dataset_id),
            configuration,
            fold,
            trainer_name(train["head"]),
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
        if predict:
            trainer.case_step_size = predict.get("step_size", trainer.case_step_size)
            trainer.case_mirror_batch = predict.get("mirror_batch", trainer.case_mirror_batch)
        maybe_load_checkpoint(trainer, resume, False)
        if torch.cuda.is_available():
            # as stock run_training: cuDNN picks the fastest kernels for the fixed patch size
            torch.backends.cudnn.deterministic = False
            torch.backends.cudnn.benchmark = True
        trainer.run_training()
        if nnunet_validation:
            trainer.perform_actual_validation(False)
    return final
