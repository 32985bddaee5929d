"""Small shared helpers: atomic files, exclusive locks, device choice, seeding, version info."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import random
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from worldmodels.errors import WorldModelsError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give users their usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``<path>.lock`` (released by the OS if the process dies).

    A second process asking for the same lock gets a clear error instead of corrupting the file.
    """
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorldModelsError(f"{path} is already being written by another process ({what}); "
                                   "wait for it to finish or write to another file") from None
        yield
    finally:
        fh.close()
        with contextlib.suppress(OSError):
            lock_path.unlink()


def pick_device(device: str = "auto"):
    """``auto`` -> cuda if available, else cpu; anything else is passed to torch.device and checked."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise WorldModelsError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorldModelsError(f"device {device!r} requested but torch sees no CUDA GPU; use --device cpu")
    return dev


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def version_info() -> dict[str, str]:
    """Versions recorded next to every checkpoint and dataset, so results can be traced."""
    import torch

    from worldmodels import __version__

    return {
        "worldmodels": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
