"""``doom-takecover``: ViZDoom's VizdoomTakeCover-v1, the 240x320 screen resized to 64x64, Discrete(3)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import gymnasium as gym

from worldmodels.envs.frames import FrameWrapper

# The paper's DoomTakeCover ends an episode after 2100 frames (~60 s); ViZDoom's scenario has no limit.
MAX_EPISODE_STEPS = 2100


class DoomFrames(FrameWrapper):
    """64x64 frames from ``obs["screen"]``; keeps ViZDoom's ini file out of the working directory."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)  # recorded first: the parent's would win
        super().__init__(env, key="screen")
        # ViZDoom writes _vizdoom.ini into the current directory unless told otherwise; the game is
        # only initialised on the first reset, so the path can still be changed here.
        ini = os.path.join(tempfile.gettempdir(), f"worldmodels-vizdoom-{os.getuid()}.ini")
        env.unwrapped.game.set_doom_config_path(ini)


def make_doom(**kwargs: Any) -> gym.Env:
    """``gymnasium.make("VizdoomTakeCover-v1", max_episode_steps=2100, **kwargs)`` with 64x64 frames."""
    from vizdoom import gymnasium_wrapper  # noqa: F401  (registers the Vizdoom* ids)

    kwargs.setdefault("max_episode_steps", MAX_EPISODE_STEPS)
    return DoomFrames(gym.make("VizdoomTakeCover-v1", **kwargs))
