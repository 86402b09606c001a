"""Stock nnUNetTrainer with the multi-task trainer's schedule, for side-by-side comparisons.

Nothing but the epoch and iteration counts and the learning rate differ from nnUNetTrainer; they
come from the same settings file the multi-task trainer reads (handed over by nnunet_env.trainer_settings).
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from pancreas_mtl.training.settings import load_settings


class nnUNetTrainerStockSchedule(nnUNetTrainer):
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        settings = load_settings()
        self.num_epochs = settings.epochs
        self.num_iterations_per_epoch = settings.iterations_per_epoch
        self.num_val_iterations_per_epoch = settings.val_iterations_per_epoch
        self.initial_lr = settings.initial_lr
