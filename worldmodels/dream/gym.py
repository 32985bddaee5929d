"""The dream behind gymnasium's interfaces: one dream as a ``gymnasium.Env``, B dreams as a ``VectorEnv``.

Both return numpy arrays (what gymnasium agents expect), so each step syncs with the device once;
for the fastest loops use :class:`~worldmodels.dream.env.DreamEnv` directly. The vector env uses
gymnasium 1.x's default ``NEXT_STEP`` autoreset: the step after a member ends resets it, ignores its
action and returns its first observation with reward 0.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldmodels.dream.env import DreamEnv
from worldmodels.errors import WorldModelsError
from worldmodels.models.mdrnn import MDRNN


def make_action_space(desc: gym.Space | Mapping[str, Any] | None, action_dim: int) -> gym.Space:
    """A gymnasium space from a space, a ``describe_action_space`` dict, or None (Box(-1, 1, (A,)))."""
    if isinstance(desc, gym.Space):
        space = desc
    elif desc is None:
        space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
    elif desc.get("type") == "discrete":
        space = gym.spaces.Discrete(int(desc["n"]))
    elif desc.get("type") == "box":
        space = gym.spaces.Box(np.asarray(desc["low"], np.float32), np.asarray(desc["high"], np.float32),
                               tuple(desc["shape"]), np.float32)
    else:
        raise WorldModelsError(f"unsupported action space description {desc!r}")
    width = space.n if isinstance(space, gym.spaces.Discrete) else int(np.prod(space.shape))
    if width != action_dim:
        raise WorldModelsError(f"action space {space} does not match M's action_dim {action_dim}")
    return space


def observation_space(dream: Any) -> gym.spaces.Box:
    """C's input [z, (c,) h] as a Box: h = o * tanh(c) lies in [-1, 1]; z and c are any finite float32."""
    big = np.finfo(np.float32).max
    z, hidden = dream.mdrnn.z_dim, dream.mdrnn.hidden
    n_state = {"z": 0, "zh": 1, "zch": 2}[dream.obs_mode]
    low = np.full(dream.obs_dim, -big, np.float32)
    if n_state:
        low[z + (n_state - 1) * hidden:] = -1.0  # the h block comes last
    return gym.spaces.Box(low, -low, (dream.obs_dim,), np.float32)


def _to_torch_actions(actions: Any, space: gym.Space, device: torch.device) -> torch.Tensor:
    if isinstance(space, gym.spaces.Discrete):
        return torch.as_tensor(np.asarray(actions, dtype=np.int64), device=device).reshape(-1)
    return torch.as_tensor(np.asarray(actions, dtype=np.float32), device=device)


class DreamGymEnv(gym.Env):
    """One dream of M as a gymnasium env: observations [z, h] (or [z, c, h], z) float32."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, vae: Any, mdrnn: MDRNN, initial_latents: tuple[torch.Tensor, torch.Tensor],
                 temperature: float = 1.0, device: torch.device | str = "cpu", max_steps: int = 1000,
                 reward: str = "predicted", obs_mode: str = "zh", action_space: Any = None,
                 render_mode: str | None = None, augmentations: Sequence[Any] = ()):
        if render_mode not in (None, "rgb_array"):
            raise WorldModelsError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.dream = DreamEnv(vae, mdrnn, initial_latents, temperature, 1, device, max_steps, reward, obs_mode,
                              seed=0, augmentations=augmentations)
        self.render_mode = render_mode
        self._seeded = False
        self.action_space = make_action_space(action_space, mdrnn.action_dim)
        self.observation_space = observation_space(self.dream)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is None and not self._seeded:
            seed = int(self.np_random.integers(2**62))  # first reset without a seed: a fresh random stream
        self._seeded = True
        obs = self.dream.reset(seed=seed)
        return obs[0].cpu().numpy().astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = _to_torch_actions(action, self.action_space, self.dream.device).reshape(1, *(
            () if isinstance(self.action_space, gym.spaces.Discrete) else self.action_space.shape))
        obs, reward, _, info = self.dream.step(a)
        return (obs[0].cpu().numpy().astype(np.float32), float(reward[0]), bool(info["terminated"][0]),
                bool(info["truncated"][0]), {})

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.dream.frames([0])[0]


class DreamVectorEnv(VectorEnv):
    """B dreams of M as a gymnasium vector env, stepped together by one :class:`DreamEnv`."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, vae: Any, mdrnn: MDRNN, initial_latents: tuple[torch.Tensor, torch.Tensor], num_envs: int,
                 temperature: float = 1.0, device: torch.device | str = "cpu", max_steps: int = 1000,
                 reward: str = "predicted", obs_mode: str = "zh", action_space: Any = None,
                 seed: int | None = None, augmentations: Sequence[Any] = ()):
        self.dream = DreamEnv(vae, mdrnn, initial_latents, temperature, num_envs, device, max_steps, reward,
                              obs_mode, seed=seed, augmentations=augmentations)
        self.num_envs = num_envs
        self.single_action_space = make_action_space(action_space, mdrnn.action_dim)
        self.single_observation_space = observation_space(self.dream)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._autoreset = torch.zeros(num_envs, dtype=torch.bool, device=self.dream.device)
        self._any_autoreset = False  # on the host: skip reset_members (and its augmentation redraws) when none

    def reset(self, *, seed: int | Sequence[int] | None = None,
              options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None and not isinstance(seed, int):
            raise WorldModelsError("DreamVectorEnv.reset takes one int seed (members get their own streams from it)")
        super().reset(seed=seed)
        obs = self.dream.reset(seed=seed)
        self._autoreset.zero_()
        self._any_autoreset = False
        return obs.cpu().numpy().astype(np.float32), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        restart = self._autoreset
        if self._any_autoreset:
            self.dream.reset_members(restart, delay=1)  # frozen this step: they first move at the next one
        a = _to_torch_actions(actions, self.single_action_space, self.dream.device)
        obs, reward, _, info = self.dream.step(a, frozen=restart)
        self._autoreset = info["terminated"] | info["truncated"]
        terminated, truncated = info["terminated"].cpu().numpy(), info["truncated"].cpu().numpy()
        self._any_autoreset = bool((terminated | truncated).any())
        return (obs.cpu().numpy().astype(np.float32), reward.cpu().numpy().astype(np.float64), terminated, truncated,
                {})
