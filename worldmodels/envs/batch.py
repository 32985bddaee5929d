"""Several real episodes stepped in lockstep: the env side of the batched agent and of collection.

An :class:`EnvBatch` plays one episode per slot. ``reset(seeds)`` starts slot ``i`` on env seed
``seeds[i]``; ``step(actions, ids)`` advances only the live slots ``ids`` (a finished slot is never
stepped again). Frames are uint8 (64, 64, 3), preprocessed exactly as :func:`worldmodels.envs.make`'s.

- :class:`ReferenceBatch`: one ``worldmodels.envs.make`` env per slot (gymnasium / vizdoom / procgen),
  created on first use and reused, stepped one after the other in this process.
- ``worldmodels.envs.fast.EnvpoolBatch``: one envpool of N envs in C++ (CarRacing), stepped in one call.

A slot's episode depends on its seed only, never on its slot or on the other slots.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class EnvBatch:
    """Interface: ``reset(seeds) -> (obs (N, 64, 64, 3), levels (N,))`` and
    ``step(actions, ids) -> (obs, reward, terminated, truncated)`` for the slots ``ids``."""

    backend = "?"

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def step(self, actions: Sequence[Any], ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ReferenceBatch(EnvBatch):
    """The reference envs, one per slot; ``kwargs`` go to :func:`worldmodels.envs.make`."""

    backend = "reference"

    def __init__(self, name: str, envs: Sequence[Any] = (), **kwargs: Any):
        self.name, self.kwargs = name, kwargs
        self.envs: list[Any] = list(envs)  # given envs (any gymnasium.Env) are used first

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        from worldmodels.envs import make

        while len(self.envs) < len(seeds):
            self.envs.append(make(self.name, **self.kwargs))
        frames, levels = [], []
        for env, seed in zip(self.envs, seeds):
            obs, info = env.reset(seed=int(seed))
            frames.append(obs)
            levels.append(int(info.get("level", -1)))
        # np.stack copies: an env that reuses its frame buffer cannot change what we hand out
        return np.stack(frames).astype(np.uint8, copy=False), np.asarray(levels, dtype=np.int64)

    def step(self, actions: Sequence[Any], ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        frames, rewards, terms, truncs = [], [], [], []
        for action, i in zip(actions, ids):
            obs, reward, terminated, truncated, _ = self.envs[i].step(action)
            frames.append(obs)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
        return (np.stack(frames).astype(np.uint8, copy=False), np.asarray(rewards, dtype=np.float64), np.asarray(terms, dtype=bool),
                np.asarray(truncs, dtype=bool))

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []
