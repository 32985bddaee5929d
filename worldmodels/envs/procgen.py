"""``procgen:<game>``: gym3's ProcgenGym3Env (one env) as a proper gymnasium.Env.

gym3 auto-resets: the observation that follows the last action of an episode is already the next
episode's first frame, and procgen never renders the terminal state. This wrapper returns, on the
terminal step, a copy of the last frame of the finished episode (never the next episode's first
frame), and keeps the auto-reset frame for the next ``reset()`` without a seed. Datasets store only
the frames actions were chosen on (``obs[t] -> action[t] -> reward[t]``), so no information is lost.

Seeding: ``reset(seed=s)`` recreates the gym3 env with a ``rand_seed`` drawn from ``np_random``
(seeded by ``s``): the level sequence and the in-game randomness follow from it, so the same seed
and actions replay the same episode. Recreating costs a few ms (measured in docs/envs.md).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from worldmodels.envs import PROCGEN_GAMES as GAMES
from worldmodels.envs.frames import OBS_SPACE

DISTRIBUTION_MODES = ("easy", "hard", "extreme", "memory")
# procgen's C++ aborts the whole process on an unsupported mode, so check before creating it.
MODE_GAMES = {"extreme": ("chaser", "dodgeball", "leaper", "starpilot"),
              "memory": ("caveflyer", "dodgeball", "heist", "jumper", "maze", "miner")}
GYM3_OPTIONS = ("center_agent", "use_backgrounds", "use_monochrome_assets", "restrict_themes",
                "use_generated_assets", "paint_vel_info", "use_sequential_levels")
# Episode time limits set in procgen's C++ games (Game::timeout, default 1000); reaching one is a
# truncation, not a termination.
TIMEOUTS = {"bigfish": 6000, "bossfight": 4000, "plunder": 4000, "maze": 500, "leaper": 500}
N_ACTIONS = 15


def _gym3_env_class():
    """procgen's gym3 env class, imported without the old-gym banner (and nothing else silenced).

    procgen imports the unmaintained ``gym`` package, whose import prints gym_notices' deprecation
    banner to stderr. While procgen is imported, that one notice table is empty; gym then stays
    imported, so a later ``import gym`` (stable-baselines3 does one) prints nothing either.
    """
    import sys
    import types

    if "gym" not in sys.modules:
        saved = sys.modules.get("gym_notices.notices")
        sys.modules["gym_notices.notices"] = types.SimpleNamespace(notices={})
        try:
            import procgen  # noqa: F401  (imports gym while its notice table is empty)
        finally:
            if saved is None:
                sys.modules.pop("gym_notices.notices", None)
            else:
                sys.modules["gym_notices.notices"] = saved
    from procgen import ProcgenGym3Env

    return ProcgenGym3Env


class ProcgenEnv(gym.Env):
    """One ProcGen game; observations uint8 (64, 64, 3), actions Discrete(15), ``info["level"]``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, game: str, num_levels: int = 200, start_level: int = 0,
                 distribution_mode: str = "easy", render_mode: str | None = None, **options: Any):
        from worldmodels.errors import WorldModelsError

        if game not in GAMES:
            raise WorldModelsError(f"unknown procgen game {game!r}; known: {', '.join(GAMES)}")
        if distribution_mode not in DISTRIBUTION_MODES:
            raise WorldModelsError(f"unknown procgen distribution_mode {distribution_mode!r}; "
                                   f"known: {', '.join(DISTRIBUTION_MODES)}")
        if game not in MODE_GAMES.get(distribution_mode, GAMES):
            raise WorldModelsError(f"procgen:{game} has no {distribution_mode!r} mode; it exists for "
                                   f"{', '.join(MODE_GAMES[distribution_mode])}")
        unknown = sorted(set(options) - set(GYM3_OPTIONS))
        if unknown:
            raise WorldModelsError(f"unknown procgen option(s) {', '.join(unknown)}; valid: num_levels, "
                                   f"start_level, distribution_mode, {', '.join(GYM3_OPTIONS)}")
        if num_levels < 0 or start_level < 0:
            raise WorldModelsError(f"procgen num_levels and start_level must be >= 0, got {num_levels}, {start_level}")
        if render_mode not in (None, "rgb_array"):
            raise WorldModelsError(f"procgen render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.game, self.render_mode = game, render_mode
        # num_threads=0 steps in the calling thread: ~1.8x faster than gym3's default pool of 4 for
        # one env, and W collection workers do not each start 4 threads.
        self._kwargs = dict(env_name=game, num_levels=num_levels, start_level=start_level,
                            distribution_mode=distribution_mode, num_threads=0, **options)
        self._timeout = TIMEOUTS.get(game, 1000)
        self.observation_space = OBS_SPACE
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._gym3 = None
        self._obs: np.ndarray | None = None
        self._next_first: np.ndarray | None = None  # gym3's auto-reset frame, waiting for reset()
        self._level = -1
        self._steps = 0
        self._done = True

    def _recreate(self, rand_seed: int) -> np.ndarray:
        if self._gym3 is not None:
            self._gym3.close()
        self._gym3 = _gym3_env_class()(num=1, rand_seed=rand_seed, **self._kwargs)
        _, ob, _ = self._gym3.observe()
        return ob["rgb"][0].copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None or self._next_first is None:
            obs = self._recreate(int(self.np_random.integers(0, 2**31 - 1)))
        else:  # continue with the episode gym3 already started: cheaper, and still reproducible
            obs = self._next_first
        self._next_first = None
        self._level = int(self._gym3.get_info()[0]["level_seed"])
        self._obs, self._steps, self._done = obs, 0, False
        return obs, {"level": self._level}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._done:
            raise gym.error.ResetNeeded("procgen: call reset() before step() (episode finished or not started)")
        self._gym3.act(np.asarray([action], dtype=np.int32).reshape(1))
        reward, ob, first = self._gym3.observe()
        self._steps += 1
        info: dict[str, Any] = {"level": self._level}
        terminated = truncated = False
        if first[0]:  # the episode ended and gym3 has already started the next one
            complete = bool(self._gym3.get_info()[0]["prev_level_complete"])
            truncated = not complete and self._steps >= self._timeout
            terminated = not truncated
            info["level_complete"] = complete
            self._next_first = ob["rgb"][0].copy()
            self._done = True
            obs = self._obs.copy()
        else:
            obs = ob["rgb"][0].copy()
        self._obs = obs
        return obs, float(reward[0]), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array" and self._obs is not None:
            return self._obs.copy()
        return None

    def close(self) -> None:
        if self._gym3 is not None:
            self._gym3.close()
            self._gym3 = None
        super().close()
