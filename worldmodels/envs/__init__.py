"""Real environments behind one name: ``make(name, **kwargs) -> gymnasium.Env`` with uint8 (64, 64, 3) frames.

Names: ``carracing``, ``doom-takecover``, ``procgen:<game>`` (every ProcGen game). The simulators
(gymnasium's box2d, vizdoom, procgen) are imported only by ``make``, so importing this module is cheap.
See docs/envs.md for the preprocessing, seeding and level conventions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worldmodels.errors import WorldModelsError

PROCGEN_GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
                 "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot")

# episode_seed layout (a 60-bit integer): purpose id in bits 56-59, user seed in bits 32-55,
# episode index in bits 0-31. Each purpose owns its own block, so the ranges can never overlap.
PURPOSES = {"collect": 1, "train": 2, "eval": 3}
SEED_BITS, INDEX_BITS = 24, 32

# ProcGen level split: training levels start at 0, test levels at PROCGEN_TEST_START.
PROCGEN_TEST_START = 100_000


def known_envs() -> list[str]:
    """Every name ``make`` accepts."""
    return ["carracing", "doom-takecover"] + [f"procgen:{g}" for g in PROCGEN_GAMES]


def env_family(name: str) -> str:
    """``"carracing" | "doom" | "procgen"``; raises WorldModelsError for an unknown name."""
    if name == "carracing":
        return "carracing"
    if name == "doom-takecover":
        return "doom"
    if name.startswith("procgen:") and name.split(":", 1)[1] in PROCGEN_GAMES:
        return "procgen"
    raise WorldModelsError(f"unknown env {name!r}; known envs: {', '.join(known_envs())}")


def make(name: str, **kwargs: Any):
    """A gymnasium.Env with observations uint8 (64, 64, 3) (see the module docstring for names).

    ``carracing`` and ``doom-takecover`` pass kwargs to ``gymnasium.make``; ProcGen takes
    ``num_levels`` (200), ``start_level`` (0), ``distribution_mode`` ("easy") and gym3 options.
    """
    family = env_family(name)
    try:
        if family == "carracing":
            from worldmodels.envs.carracing import make_carracing

            return make_carracing(**kwargs)
        if family == "doom":
            from worldmodels.envs.doom import make_doom

            return make_doom(**kwargs)
        from worldmodels.envs.procgen import ProcgenEnv

        return ProcgenEnv(name.split(":", 1)[1], **kwargs)
    except TypeError as err:  # an unexpected keyword argument for this env
        raise WorldModelsError(f"bad options for env {name!r} {kwargs}: {err}") from None


def describe_action_space(space) -> dict:
    """JSON-able description: ``{"type": "box", "shape", "low", "high"}`` or ``{"type": "discrete", "n"}``."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        return {"type": "box", "shape": [int(s) for s in space.shape],
                "low": np.asarray(space.low, dtype=float).ravel().tolist(),
                "high": np.asarray(space.high, dtype=float).ravel().tolist()}
    raise WorldModelsError(f"unsupported action space {space}; expected Box or Discrete")


def action_dim(desc: dict) -> int:
    """Width of the action input to M: the box size, or n for a discrete space (one-hot)."""
    if desc.get("type") == "discrete":
        return int(desc["n"])
    if desc.get("type") == "box":
        return int(np.prod(desc["shape"]))
    raise WorldModelsError(f"bad action space description {desc!r}")


def episode_seed(seed: int, index: int, purpose: str) -> int:
    """The env seed of episode ``index`` of a run seeded ``seed``, in the block reserved for ``purpose``.

    ``collect``, ``train`` and ``eval`` seeds never coincide, so evaluation never replays an episode
    seen in collection or training. Needs 0 <= seed < 2**24 and 0 <= index < 2**32.
    """
    if purpose not in PURPOSES:
        raise WorldModelsError(f"unknown seed purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")
    if not 0 <= seed < 2**SEED_BITS:
        raise WorldModelsError(f"seed must be in [0, {2**SEED_BITS}), got {seed}")
    if not 0 <= index < 2**INDEX_BITS:
        raise WorldModelsError(f"episode index must be in [0, {2**INDEX_BITS}), got {index}")
    return (PURPOSES[purpose] << (SEED_BITS + INDEX_BITS)) | (seed << INDEX_BITS) | index


def seed_range(purpose: str) -> tuple[int, int]:
    """``[low, high)`` of every seed ``episode_seed`` can return for ``purpose``."""
    if purpose not in PURPOSES:
        raise WorldModelsError(f"unknown seed purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")
    low = PURPOSES[purpose] << (SEED_BITS + INDEX_BITS)
    return low, low + 2 ** (SEED_BITS + INDEX_BITS)


def procgen_levels(split: str, num_levels: int) -> tuple[int, int]:
    """``(start_level, num_levels)`` for ProcGen ``"train"`` levels (from 0) or ``"test"`` levels
    (from 100,000): the two never overlap, for any ``num_levels`` in [1, 100,000]."""
    if not 1 <= num_levels <= PROCGEN_TEST_START:
        raise WorldModelsError(f"num_levels must be in [1, {PROCGEN_TEST_START}] so train and test levels "
                               f"stay disjoint, got {num_levels}")
    if split == "train":
        return 0, num_levels
    if split == "test":
        return PROCGEN_TEST_START, num_levels
    raise WorldModelsError(f"unknown level split {split!r}; expected 'train' or 'test'")
