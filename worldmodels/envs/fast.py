"""The ``fast`` env backend: envpool's C++ envs, batched natively (``pip install envpool==1.2.5``).

Only CarRacing has one: envpool's CarRacing-v3 steps ~8x faster per core than gymnasium's, whose step
is ~97 % pygame drawing. Its frames look like gymnasium's (same colours, scale and car) but it draws
its own tracks: the same seed gives another track than gymnasium's, so the two backends agree in
distribution, not per seed (docs/envs.md measures how closely). envpool takes int32 seeds only;
:func:`fast_seed` maps our 60-bit episode seeds into int32 keeping the purposes' blocks disjoint.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from worldmodels.envs.batch import EnvBatch
from worldmodels.errors import WorldModelsError

# Our env name -> (envpool task id, rows kept before the resize: the same crop as the reference env).
FAST_ENVS = {"carracing": ("CarRacing-v3", 84)}
ENVPOOL_VERSION = "1.2.5"

# int32 seed layout: purpose id (0-3) in bits 29-30, then 29 bits for the episode within the purpose.
_PURPOSE_SHIFT, _LOW_BITS = 29, 29
_LOW_MASK = (1 << _LOW_BITS) - 1
_SEED_MIX = 0x9E3779B1  # spreads user seeds over the 29-bit block (Fibonacci hashing)


def fast_seed(seed: int) -> int:
    """An int32 envpool seed for one of our env seeds.

    Seeds made by ``episode_seed(s, i, purpose)`` keep their purpose (collect 1, train 2, eval 3) in
    bits 29-30, so the blocks of collection, training and evaluation stay disjoint as in the reference
    backend. Within a block, episodes ``i`` and ``j`` of one run seed map to different int32 seeds
    whenever ``i != j (mod 2**29)``. Any other seed maps into block 0 (its value mod 2**29).
    """
    from worldmodels.envs import INDEX_BITS, PURPOSES, SEED_BITS

    seed = int(seed)
    if seed < 0:
        raise WorldModelsError(f"env seeds must be non-negative, got {seed}")
    purpose = seed >> (SEED_BITS + INDEX_BITS)
    if purpose in PURPOSES.values() and seed < 1 << (SEED_BITS + INDEX_BITS + 4):
        user = (seed >> INDEX_BITS) & ((1 << SEED_BITS) - 1)
        index = seed & ((1 << INDEX_BITS) - 1)
        return (purpose << _PURPOSE_SHIFT) | ((index + user * _SEED_MIX) & _LOW_MASK)
    return seed & _LOW_MASK


def envpool_status(name: str) -> str | None:
    """None when the fast backend can run ``name`` here, else why not (one line)."""
    if name not in FAST_ENVS:
        return f"no fast backend for {name!r} (envpool is used for: {', '.join(FAST_ENVS)})"
    try:
        import envpool  # noqa: F401
    except ImportError:
        return ("envpool is not installed (pip install envpool==1.2.5; wheels exist for CPython >= 3.11 "
                "on Linux x86_64)")
    except Exception as err:  # a broken install: say so rather than fail later
        return f"envpool does not import: {type(err).__name__}: {err}".splitlines()[0]
    return None


def _make_pool(name: str, seeds: Sequence[int], num_threads: int, kwargs: dict[str, Any]):
    import warnings

    import envpool

    task, _ = FAST_ENVS[name]
    try:
        with warnings.catch_warnings():  # envpool's spaces are float64-bounded; gymnasium warns on the cast
            warnings.simplefilter("ignore")
            return envpool.make(task, env_type="gymnasium", num_envs=len(seeds),
                                env_seed=[fast_seed(s) for s in seeds], num_threads=num_threads, **kwargs)
    except (TypeError, AssertionError, ValueError, KeyError) as err:
        raise WorldModelsError(f"bad options for the fast {name} env {kwargs}: {err}".splitlines()[0]) from None


class EnvpoolBatch(EnvBatch):
    """An envpool of one env per slot, made anew by each ``reset`` from the slots' seeds (~1 ms per env)."""

    backend = "fast"

    def __init__(self, name: str, num_threads: int = 1, **kwargs: Any):
        status = envpool_status(name)
        if status:
            raise WorldModelsError(f"--env-backend fast: {status}")
        self.name, self.num_threads, self.kwargs = name, num_threads, kwargs
        self.crop_rows = FAST_ENVS[name][1]
        self.pool = None

    def _frames(self, obs: np.ndarray) -> np.ndarray:
        from worldmodels.envs.frames import resize_frame

        return np.stack([resize_frame(o, self.crop_rows) for o in obs])

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        self.close()
        self.pool = _make_pool(self.name, seeds, self.num_threads, self.kwargs)
        obs, info = self.pool.reset()
        order = np.argsort(info["env_id"])
        return self._frames(obs[order]), np.full(len(seeds), -1, dtype=np.int64)

    def step(self, actions: Sequence[Any], ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int32)
        obs, reward, terminated, truncated, info = self.pool.step(np.asarray(actions, dtype=np.float32), env_id=ids)
        # envpool answers in its own order: put the rows back in the order of ``ids``
        where = {int(e): k for k, e in enumerate(info["env_id"])}
        order = np.array([where[int(i)] for i in ids])
        return (self._frames(obs[order]), np.asarray(reward, dtype=np.float64)[order],
                np.asarray(terminated, dtype=bool)[order], np.asarray(truncated, dtype=bool)[order])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make_fast(name: str, **kwargs: Any):
    """One fast env as a ``gymnasium.Env`` (a pool of one, remade at every seeded reset)."""
    import gymnasium as gym

    from worldmodels.envs.frames import OBS_SPACE

    batch = EnvpoolBatch(name, **kwargs)

    class FastEnv(gym.Env):
        metadata = {"render_modes": []}
        observation_space = OBS_SPACE
        action_space = gym.spaces.Box(np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32))

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            super().reset(seed=seed)
            if seed is None:
                seed = int(self.np_random.integers(1 << _LOW_BITS))
            obs, levels = batch.reset([seed])
            return obs[0], {"level": int(levels[0])}

        def step(self, action: Any):
            obs, reward, terminated, truncated = batch.step([np.asarray(action, np.float32)], [0])
            return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

        def close(self) -> None:
            batch.close()

    return FastEnv()


def notice(message: str) -> None:
    """One line on stderr, once per message per process."""
    if message not in _NOTICED:
        _NOTICED.add(message)
        print(f"worldmodels: {message}", file=sys.stderr)


_NOTICED: set[str] = set()
