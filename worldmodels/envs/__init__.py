"""Real environments behind one name: ``make(name, backend, **kwargs) -> gymnasium.Env`` with uint8 (64, 64, 3)
frames, and ``make_batch(name, backend, **kwargs) -> EnvBatch`` for episodes stepped in lockstep.

Names: ``carracing``, ``doom-takecover``, ``procgen:<game>`` (every ProcGen game). Backends: ``reference``
(gymnasium / vizdoom / procgen, the envs every reported number is measured on) and ``fast`` (envpool's
C++ CarRacing, see :mod:`worldmodels.envs.fast`); ``auto`` resolves to ``fast`` where envpool is installed
and has the env. The simulators are imported only by ``make``, so importing this module is cheap.
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


ENV_BACKENDS = ("auto", "reference", "fast")


def resolve_backend(name: str, backend: str) -> str:
    """``reference`` or ``fast`` for env ``name``.

    ``auto`` is ``fast`` where envpool is installed and has the env, else ``reference`` (with a one-line
    notice when only the missing envpool install stands in the way). An explicit ``fast`` that cannot
    run here is a one-line error.
    """
    from worldmodels.envs.fast import FAST_ENVS, envpool_status, notice

    env_family(name)
    if backend not in ENV_BACKENDS:
        raise WorldModelsError(f"unknown env backend {backend!r}; choose one of {', '.join(ENV_BACKENDS)}")
    if backend == "reference":
        return backend
    status = envpool_status(name)
    if backend == "fast":
        if status:
            raise WorldModelsError(f"--env-backend fast: {status}")
        return "fast"
    if status and name in FAST_ENVS:
        notice(f"{status}; using the reference {name} env (--env-backend reference silences this)")
    return "reference" if status else "fast"


def make_batch(name: str, backend: str = "reference", **kwargs: Any):
    """An :class:`worldmodels.envs.batch.EnvBatch` of env ``name`` on ``backend`` (``auto`` resolved here)."""
    backend = resolve_backend(name, backend)
    if backend == "fast":
        from worldmodels.envs.fast import EnvpoolBatch

        return EnvpoolBatch(name, **kwargs)
    from worldmodels.envs.batch import ReferenceBatch

    make(name, **kwargs).close()  # bad options fail here, once, not in the first episode
    return ReferenceBatch(name, **kwargs)


def make(name: str, backend: str = "reference", **kwargs: Any):
    """A gymnasium.Env with observations uint8 (64, 64, 3) (see the module docstring for names).

    ``carracing`` and ``doom-takecover`` pass kwargs to ``gymnasium.make`` (or to envpool on the fast
    backend); ProcGen takes ``num_levels`` (200), ``start_level`` (0), ``distribution_mode`` ("easy")
    and gym3 options.
    """
    family = env_family(name)
    if resolve_backend(name, backend) == "fast":
        from worldmodels.envs.fast import make_fast

        return make_fast(name, **kwargs)
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
