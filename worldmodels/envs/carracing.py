"""``carracing``: gymnasium CarRacing-v3 (continuous), the paper's crop of rows 0:84 resized to 64x64."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from worldmodels.envs.frames import FrameWrapper

CROP_ROWS = 84  # rows 84:96 of the 96x96 frame are the dashboard


def make_carracing(**kwargs: Any) -> gym.Env:
    """``gymnasium.make("CarRacing-v3", **kwargs)`` with 64x64 frames; kwargs pass through."""
    return FrameWrapper(gym.make("CarRacing-v3", **kwargs), crop_rows=CROP_ROWS)
