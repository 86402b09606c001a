"""Node-local copy of the preprocessed dataset for a training job (config key node_local_scratch).

Training reads every preprocessed case many times over days; on a cluster that data sits on a
shared file system. Staging it to the node's own disk (`$TMPDIR` on most Slurm clusters) for the
job, as khanlab's nnU-Net training workflows do, takes that load off the shared file system. The
copy is removed when the job ends, also when Slurm ends it at the walltime.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, MutableMapping

logger = logging.getLogger(__name__)

STAGE_PREFIX = "pancreas-mtl-preprocessed-"


def scratch_root(setting: bool | str, environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Folder to stage under, from the config value.

    false: none (read the preprocessed data where it is); true: $TMPDIR, else the system
    temporary folder; a string: that folder, with environment variables and ~ expanded ("true"
    and "false", as the command line's --config gives them, count as the booleans).
    """
    if isinstance(setting, str) and setting.strip().lower() in ("true", "false", ""):
        # `--config node_local_scratch=true` reaches the config as the string "true"
        setting = setting.strip().lower() == "true"
    if setting is False:
        return None
    if setting is True:
        return Path(environ.get("TMPDIR") or tempfile.gettempdir())
    expanded = os.path.expanduser(os.path.expandvars(str(setting)))
    if "$" in expanded:
        raise ValueError(f"config key node_local_scratch: {setting!r} names an unset environment variable")
    return Path(expanded).absolute()


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


@contextmanager
def staged_preprocessed(
    dataset_folder: str | os.PathLike,
    setting: bool | str,
    environ: MutableMapping[str, str] = os.environ,
) -> Iterator[Path | None]:
    """Copy `dataset_folder` (<nnUNet_preprocessed>/DatasetXXX_Name) under scratch and point
    nnUNet_preprocessed at the copy until the block ends; then restore it and remove the copy.

    Yields the staged nnUNet_preprocessed root, or None when `setting` turns staging off.
    nnU-Net reads nnUNet_preprocessed when nnunetv2 is first imported: enter this before that.
    """
    root = scratch_root(setting, environ)
    if root is None:
        yield None
        return
    source = Path(dataset_folder)
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=root))
    previous = environ.get("nnUNet_preprocessed")
    try:
        started = time.monotonic()
        shutil.copytree(source, stage / source.name, symlinks=True)
        logger.info(
            "staged %s (%.0f MB) to %s in %.1f s",
            source, folder_size_mb(stage), stage, time.monotonic() - started,
        )  # fmt: skip
        environ["nnUNet_preprocessed"] = str(stage)
        yield stage
    finally:
        if previous is None:
            environ.pop("nnUNet_preprocessed", None)
        else:
            environ["nnUNet_preprocessed"] = previous
        shutil.rmtree(stage, ignore_errors=True)
        logger.info("removed %s", stage)


def stage_preprocessed_for_job(dataset_folder: str | os.PathLike, setting: bool | str) -> Path | None:
    """`staged_preprocessed` for the rest of this process: the copy is removed when the process
    exits, and on SIGTERM (what Slurm sends at the walltime or on scancel) at once, before the
    process ends: Slurm's SIGKILL follows within seconds, while an unwinding training can wait
    on its augmentation workers for longer."""
    stack = ExitStack()
    staged = stack.enter_context(staged_preprocessed(dataset_folder, setting))
    if staged is None:
        return None
    atexit.register(stack.close)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):

        def remove_then_terminate(signum, frame):
            stack.close()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, remove_then_terminate)
    return staged
