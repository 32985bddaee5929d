"""The dream: M (and V for pictures) as a batched torch simulator and as gymnasium environments."""

from worldmodels.dream.env import AugmentContext, DreamEnv, flops_per_step
from worldmodels.dream.gym import DreamGymEnv, DreamVectorEnv, make_action_space
