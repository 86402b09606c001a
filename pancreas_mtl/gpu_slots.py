"""A GPU of its own for each GPU job on a workstation, and a clear stop when torch cannot use CUDA.

Snakemake's `gpu` resource is only a counter: with `--resources gpu=2` the local executor starts
two GPU jobs but sets no CUDA_VISIBLE_DEVICES, so both would train on cuda:0. `claim_gpu` makes
each job take a free GPU index under a file lock (held until the process ends, however it ends)
and sets CUDA_VISIBLE_DEVICES before torch initialises CUDA. Where CUDA_VISIBLE_DEVICES is already
set (Slurm sets it for the GPUs it allocated, or the user chose) or the job runs inside a Slurm
job, nothing is claimed.

`check_gpu_usable` stops a GPU step whose torch sees no CUDA while CUDA is what the config asks
for, instead of silently training on the CPU for days (the usual cause: a conda env that resolved
to CPU-only PyTorch, or a CUDA build newer than the node's driver).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, MutableMapping

logger = logging.getLogger(__name__)

LOCK_DIR_ENV = "PANCREAS_MTL_GPU_LOCK_DIR"
# Slurm sets these in a job that was allocated GPUs
SLURM_GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")

# open lock files of this process: a claim lasts as long as the process
_held: list[IO] = []


class GpuUnavailableError(RuntimeError):
    """The config asks for CUDA, but torch in this environment cannot use it."""


def nvidia_gpu_count(
    proc_dir: str | os.PathLike = "/proc/driver/nvidia/gpus", dev_dir: str | os.PathLike = "/dev"
) -> int:
    """NVIDIA GPUs in this machine, read from the driver's files without initialising CUDA."""
    proc_dir, dev_dir = Path(proc_dir), Path(dev_dir)
    if proc_dir.is_dir():
        found = sum(1 for _ in proc_dir.iterdir())
        if found:
            return found
    return sum(1 for p in dev_dir.glob("nvidia[0-9]*") if p.name[len("nvidia") :].isdigit())


def default_lock_dir() -> Path:
    """Lock folder shared by every job of this user on this machine (GPUs are per machine)."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    return Path(tempfile.gettempdir()) / f"pancreas-mtl-gpu-locks-{os.getuid()}"


def wants_gpu(device: str) -> bool:
    """Whether a step configured with `device` may run on CUDA ('auto', 'cuda', 'cuda:N')."""
    return device == "auto" or device.split(":")[0] == "cuda"


def claim_gpu(
    device: str = "auto",
    gpu_count: int | None = None,
    lock_dir: str | os.PathLike | None = None,
    environ: MutableMapping[str, str] = os.environ,
    poll_seconds: float = 5.0,
) -> int | None:
    """Take a GPU no other job of this user holds and set CUDA_VISIBLE_DEVICES to it.

    Returns the GPU index, or None when nothing was claimed: CPU device, an explicit `cuda:N`,
    CUDA_VISIBLE_DEVICES already set, inside a Slurm job, or no NVIDIA GPU. With every GPU held,
    waits until one is released (a job's claim ends with its process).
    """
    if not wants_gpu(device) or ":" in device:
        return None
    if "CUDA_VISIBLE_DEVICES" in environ or "SLURM_JOB_ID" in environ:
        return None
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    count = nvidia_gpu_count() if gpu_count is None else gpu_count
    if count < 1:
        return None
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    waiting_since = None
    while True:
        for index in range(count):
            handle = open(lock_dir / f"gpu{index}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held.append(handle)
            environ["CUDA_VISIBLE_DEVICES"] = str(index)
            logger.info("GPU %d of %d claimed (CUDA_VISIBLE_DEVICES=%d, lock in %s)", index, count, index, lock_dir)
            return index
        if waiting_since is None:
            waiting_since = time.monotonic()
            logger.info("all %d GPUs are held by other jobs; waiting for one to be released", count)
        time.sleep(poll_seconds)


def release_gpus() -> None:
    """Give back every GPU this process claimed (also happens when the process ends)."""
    while _held:
        _held.pop().close()


def gpu_problem(
    device: str,
    cuda_available: bool,
    torch_version: str,
    torch_cuda: str | None,
    gpu_count: int,
    environ: MutableMapping[str, str] = os.environ,
) -> str | None:
    """Why a step configured with `device` must not run, or None when it may.

    'cpu' always runs. 'cuda' and 'cuda:N' need torch to see CUDA. 'auto' needs torch to see CUDA
    when the machine has an NVIDIA GPU (the job was given hardware it cannot use); on a machine
    without one, 'auto' runs on the CPU.
    """
    if not wants_gpu(device) or cuda_available:
        return None
    if device == "auto" and gpu_count == 0:
        return None
    if gpu_count:
        seen = f"this machine has {gpu_count} NVIDIA GPU(s)"
    else:
        seen = "this machine has no NVIDIA GPU"
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        seen += f" (CUDA_VISIBLE_DEVICES={visible!r})"
    if torch_cuda is None:
        cause = (
            f"torch {torch_version} is a CPU-only build. With --sdm conda, the env resolved to "
            "CPU-only PyTorch: envs/nnunet.yaml asks conda-forge for pytorch-gpu, which a "
            "GPU-less login node only solves with CONDA_OVERRIDE_CUDA set (profiles/README.md); "
            "remove the broken env under .snakemake/conda (or --conda-prefix) and build it again. "
            "In a virtualenv, install a CUDA wheel of torch."
        )
    elif not gpu_count:
        cause = "run this step on a machine, or in a Slurm job, with a GPU."
    else:
        cause = (
            f"torch {torch_version} is built for CUDA {torch_cuda} but cannot use a GPU: the "
            f"NVIDIA driver may be older than CUDA {torch_cuda} needs (nvidia-smi shows the newest "
            "CUDA version the driver supports; pin cuda-version in envs/nnunet.yaml to it), or "
            "CUDA_VISIBLE_DEVICES hides every GPU."
        )
    return (
        f"config key train.device is {device!r}, {seen}, but torch sees no CUDA device: {cause} "
        "Set train.device: cpu to run this step on the CPU anyway."
    )


def parse_time_device_problem(
    device: str,
    gpu_count: int | None = None,
    submit_host: bool | None = None,
    environ: MutableMapping[str, str] = os.environ,
) -> str | None:
    """Why the workflow should stop while Snakemake reads it, or None.

    An explicit 'cuda' or 'cuda:N' on a machine without an NVIDIA GPU stops at once, before days
    of work start. Where jobs may run elsewhere (a Slurm job, or a host with sbatch that submits
    to GPU nodes) nothing is known yet: the GPU steps check for themselves (`check_gpu_usable`).
    Reads the driver's files only; torch is not imported.
    """
    if device.split(":")[0] != "cuda" or "SLURM_JOB_ID" in environ:
        return None
    if submit_host is None:
        submit_host = shutil.which("sbatch") is not None
    count = nvidia_gpu_count() if gpu_count is None else gpu_count
    if submit_host or count:
        return None
    return (
        f"config key train.device is {device!r} but this machine has no NVIDIA GPU. Set "
        "train.device: cpu to run on the CPU anyway (e.g. --config \"train={'device': 'cpu'}\"), "
        "or run where a GPU is (a cluster profile checks in each GPU job)."
    )


def check_gpu_usable(device: str, gpu_count: int | None = None) -> None:
    """Raise GpuUnavailableError when `device` asks for CUDA that torch here cannot use."""
    if not wants_gpu(device):
        return
    import torch

    count = nvidia_gpu_count() if gpu_count is None else gpu_count
    problem = gpu_problem(device, torch.cuda.is_available(), torch.__version__, torch.version.cuda, count)
    if problem:
        raise GpuUnavailableError(problem)
    if device == "auto" and not torch.cuda.is_available():
        allocated = [f"{k}={os.environ[k]}" for k in SLURM_GPU_VARIABLES if os.environ.get(k)]
        if allocated:
            logger.warning(
                "Slurm allocated a GPU (%s) but this node has no NVIDIA GPU; running on the CPU",
                ", ".join(allocated),
            )


def prepare_gpu_job(device: str) -> int | None:
    """What a GPU step does first: claim a GPU of its own, then check torch can use it."""
    index = claim_gpu(device)
    check_gpu_usable(device)
    return index
