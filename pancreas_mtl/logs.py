"""Send a step's output, including nnU-Net's prints and its worker processes, to one log file."""

from __future__ import annotations

import logging
import os
import sys


def log_to_file(path: str | os.PathLike) -> None:
    """Point stdout and stderr (file descriptors 1 and 2) at `path` and set up logging."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
