"""What every training stage shares: refusing to resume a different run, stopping on NaN, RNG snapshots."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from worldmodels.errors import WorldModelsError


def check_same_run(saved: dict[str, Any], new: dict[str, Any], continuation_safe: Iterable[str], out: Path) -> None:
    """Refuse to resume ``out`` when a setting outside ``continuation_safe`` differs from the saved run's."""
    safe = set(continuation_safe) | {"out"}
    changed = [f"{k}: {saved.get(k)!r} -> {new[k]!r}" for k in new if k not in safe and saved.get(k) != new[k]]
    if changed:
        raise WorldModelsError(f"{out} holds a run with a different config ({'; '.join(changed)}); "
                               "rerun with the same options to resume, add --fresh to start over, "
                               "or choose another --out")


def finite_or_stop(values: dict[str, float], where: str, out: Path, unit: str, saved: int) -> None:
    """Stop with one clear line when a loss is NaN/inf; ``saved`` is the last checkpointed ``unit`` (0: none)."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        kept = f"the checkpoint of {unit} {saved} in {out} is kept" if saved else "no checkpoint was written"
        raise WorldModelsError(f"{', '.join(f'{k} = {v}' for k, v in bad.items())} {where}; stopped, "
                               f"{kept}; try a lower --lr")


def rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
