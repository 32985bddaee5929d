"""Raw stepping speed of each env family, and what our 64x64 preprocessing costs on top.

    python benchmarks/envs.py [--steps 2000]

For each family, prints steps/s of the simulator as gymnasium/gym3 gives it (raw) and of
``worldmodels.envs.make(name)`` (ours), measured side by side in this run, with random actions;
their ratio is the preprocessing overhead. Also times a seeded ProcGen reset (recreates the gym3 env).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import gymnasium as gym
import numpy as np

from worldmodels import envs


def steps_per_second(env, steps: int, step=None) -> float:
    env.reset(seed=0)
    env.action_space.seed(0)
    t = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t)


class Gym3Steps:
    """Bare gym3 ProcgenGym3Env with the same options, stepped in the same loop."""

    def __init__(self, game: str):
        with contextlib.redirect_stderr(io.StringIO()):
            from procgen import ProcgenGym3Env
        self.env = ProcgenGym3Env(num=1, env_name=game, num_levels=200, start_level=0,
                                  distribution_mode="easy", rand_seed=0, num_threads=0)
        self.action_space = gym.spaces.Discrete(15)

    def reset(self, seed=None):
        return None, {}

    def step(self, action):
        self.env.act(np.array([action], np.int32))
        reward, ob, first = self.env.observe()
        return ob["rgb"][0], reward[0], False, False, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    # The raw env is the one inside our frame wrapper (for Doom: with its ini file kept out of the cwd).
    pairs = {
        "carracing": (lambda: envs.make("carracing").env, args.steps // 4),
        "doom-takecover": (lambda: envs.make("doom-takecover").env, args.steps),
        "procgen:coinrun": (lambda: Gym3Steps("coinrun"), args.steps * 5),
    }
    print(f"{'env':18s} {'raw steps/s':>12s} {'ours steps/s':>13s} {'ours/raw':>9s}")
    for name, (make_raw, steps) in pairs.items():
        raw = steps_per_second(make_raw(), steps)
        ours = steps_per_second(envs.make(name), steps)
        print(f"{name:18s} {raw:12.0f} {ours:13.0f} {ours / raw:9.2f}")
    env = envs.make("procgen:coinrun")
    t = time.perf_counter()
    for seed in range(100):
        env.reset(seed=seed)
    print(f"procgen seeded reset (recreates the gym3 env): {(time.perf_counter() - t) * 10:.1f} ms")


if __name__ == "__main__":
    main()
