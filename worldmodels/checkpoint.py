"""Checkpoints: one torch file per stage, written atomically, carrying kind, config and versions.

Layout of the saved dict: ``{"kind": "vae"|"mdrnn"|"controller", "id": <uuid hex>, "meta": versions,
"config": {...}, ...stage-specific entries (model, optimizer, epoch, ...)}``. The ``id`` is created
once per training run and kept across resumes, so downstream files (latents, controllers) can record
exactly which model produced them.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from worldmodels.errors import WorldModelsError
from worldmodels.utils import atomic_path, version_info

CHECKPOINT_NAME = "checkpoint.pt"
# What only a resumed training needs: the optimizer, RNG snapshots, CMA-ES's state (its covariance is N x N
# floats: 9.5 MB for Doom's 1,088-parameter C, 390 MB with the rest for ProcGen's 4,335).
RESUME_STATE = ("optimizer", "rng", "es", "np_rng")


def without_resume_state(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's state less what only resuming its training needs (a finished, shippable model)."""
    return {k: v for k, v in state.items() if k not in RESUME_STATE}


def checkpoint_file(path: str | os.PathLike) -> Path:
    """Accept a checkpoint file or the stage directory that holds ``checkpoint.pt``."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() or not path.suffix else path


def new_id() -> str:
    return uuid.uuid4().hex


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` plus kind and version info; returns the file written."""
    path = checkpoint_file(path)
    state = dict(payload)
    state["kind"] = kind
    state.setdefault("id", new_id())
    state["meta"] = {**version_info(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint, with a one-line error for a missing, corrupt or wrong-kind file."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise WorldModelsError(f"no checkpoint at {path}" + (f" (train the {kind} stage first)" if kind else ""))
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise WorldModelsError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else 'corrupt'})") from None
    if not isinstance(state, dict) or "kind" not in state:
        raise WorldModelsError(f"{path} is not a worldmodels checkpoint")
    if kind is not None and state["kind"] != kind:
        raise WorldModelsError(f"{path} holds a {state['kind']} checkpoint, expected {kind}")
    return state
