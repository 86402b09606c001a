"""The multi-task trainers, one per registered head, where nnU-Net looks for them (nnUNet_extTrainer)."""

from pancreas_mtl.training.trainer import TRAINERS

globals().update(TRAINERS)
