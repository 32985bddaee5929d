"""Random exploration policies for collecting rollouts (see ../shared/REFERENCE.md, "Data").

- ``brownian`` (continuous actions): a_0 ~ U(low, high), a_{t+1} = clip(a_t + sqrt(1/50) * N(0, I), low, high),
  the smooth random driving ctallec used for CarRacing.
- ``random``: i.i.d. uniform samples of the action space.
- ``repeat``: a uniform random action held for 1-10 frames (the paper's Doom data).
- ``auto``: brownian for a Box space, repeat for a Discrete one.

Policies work on the JSON action-space description of ``worldmodels.envs.describe_action_space`` and draw
every random number from the generator they are given, so an episode is fixed by its seed alone.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from worldmodels.errors import WorldModelsError

POLICIES = ("auto", "brownian", "random", "repeat")
BROWNIAN_DT = 1 / 50
MAX_HOLD = 10


def resolve_policy(name: str, space: Mapping[str, Any]) -> str:
    """The concrete policy for ``name`` on this action space (``auto`` picks one); refuses a bad pair."""
    if name not in POLICIES:
        raise WorldModelsError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    kind = space.get("type")
    if name == "auto":
        return "brownian" if kind == "box" else "repeat"
    if name == "brownian" and kind != "box":
        raise WorldModelsError("the brownian policy needs continuous (Box) actions; use --policy repeat or random")
    return name


class _Uniform:
    """Uniform samples of a Box (float32 array) or a Discrete space (int)."""

    def __init__(self, space: Mapping[str, Any], rng: np.random.Generator):
        self.rng = rng
        self.discrete = space.get("type") == "discrete"
        if self.discrete:
            self.n, self.start = int(space["n"]), int(space.get("start", 0))
        else:
            shape = tuple(space["shape"])
            self.low = np.asarray(space["low"], dtype=np.float64).reshape(shape)
            self.high = np.asarray(space["high"], dtype=np.float64).reshape(shape)
            if not (np.isfinite(self.low).all() and np.isfinite(self.high).all()):
                raise WorldModelsError("random policies need a bounded action space (finite low and high)")

    def sample(self) -> Any:
        if self.discrete:
            return self.start + int(self.rng.integers(self.n))
        return self.rng.uniform(self.low, self.high).astype(np.float32)


class RandomPolicy(_Uniform):
    """i.i.d. uniform actions."""

    def reset(self) -> None:
        pass

    def act(self, obs: Any = None) -> Any:
        return self.sample()


class RepeatPolicy(_Uniform):
    """A uniform random action held for a uniform 1..MAX_HOLD frames, then a new one."""

    def reset(self) -> None:
        self.left = 0

    def act(self, obs: Any = None) -> Any:
        if self.left == 0:
            self.action, self.left = self.sample(), int(self.rng.integers(1, MAX_HOLD + 1))
        self.left -= 1
        return self.action


class BrownianPolicy(_Uniform):
    """Brownian motion inside the Box: a_{t+1} = clip(a_t + sqrt(dt) * N(0, I), low, high)."""

    def __init__(self, space: Mapping[str, Any], rng: np.random.Generator, dt: float = BROWNIAN_DT):
        super().__init__(space, rng)
        if self.discrete:
            raise WorldModelsError("the brownian policy needs continuous (Box) actions")
        self.scale = math.sqrt(dt)

    def reset(self) -> None:
        self.action = self.sample().astype(np.float64)

    def act(self, obs: Any = None) -> np.ndarray:
        action = self.action.astype(np.float32)
        step = self.scale * self.rng.standard_normal(self.action.shape)
        self.action = np.clip(self.action + step, self.low, self.high)
        return action


def make_policy(name: str, space: Mapping[str, Any], rng: np.random.Generator):
    """A policy with ``reset()`` and ``act(obs) -> action`` for this action-space description."""
    cls = {"brownian": BrownianPolicy, "random": RandomPolicy, "repeat": RepeatPolicy}[resolve_policy(name, space)]
    return cls(space, rng)
