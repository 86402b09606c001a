"""CPUs and memory a training job asks for, derived from its nnU-Net data augmentation workers.

nnU-Net's guidance: a GPU needs at least 6 CPU cores (12 hardware threads) beside it; 10-12
augmentation workers keep a mid-range GPU busy, 28-32 an A100-class one. Each worker is a process
of its own, so a job that starts more workers than it has CPUs starves its GPU.
"""

from __future__ import annotations

# the training loop itself and nnU-Net's pin-memory thread
TRAINING_PROCESS_CPUS = 2
# the training process: network, optimiser state, a few batches in flight
TRAINING_BASE_MEM_MB = 12000
# one augmentation worker: its own torch import plus a queue of augmented patches
MEM_MB_PER_WORKER = 2500


def training_cpus(augmentation_workers: int, threads: int) -> int:
    """CPUs of a training job: one per augmentation worker plus the training process, at least `threads`."""
    return max(threads, augmentation_workers + TRAINING_PROCESS_CPUS)


def training_mem_mb(augmentation_workers: int) -> int:
    """Memory (MB) of a training job: the training process plus each augmentation worker."""
    return TRAINING_BASE_MEM_MB + MEM_MB_PER_WORKER * augmentation_workers

