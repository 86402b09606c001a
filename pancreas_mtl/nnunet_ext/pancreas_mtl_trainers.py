"""Re-exports the multi-task trainers so nnU-Net finds them through nnUNet_extTrainer."""

from pancreas_mtl.training.trainer import (  # noqa: F401
    nnUNetTrainerMultiTask,
    nnUNetTrainerMultiTaskAttention,
)
