"""Which part of action noise lifts a dream-trained CarRacing C: its randomness or its clipped mean, on steering or
on the pedals. Plays the same fast-backend tracks (env seeds 900000 + i, never an evaluation's) once per variant:

  python results/carracing-dream-expert/action-noise/decompose.py RUN EPISODES none,full,steer,pedals,brake,expected

RUN holds vae/, mdrnn/ and controller/ (e.g. a folder of links to iterate-final's). Variants, all at std 0.1:
none (C as evolved), full (what collect/evaluate --noise 0.1 play), steer / pedals / gas / brake (noise on those
actions only), expected (no randomness: each action replaced by the mean of its clipped noisy value). A
diagnostic: it swaps worldmodels.play.explore for the variant, so M sees the actions taken, as in collect and
evaluate. Prints one line per variant: returns and C's own actions (before any noise).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import worldmodels.play as play
from worldmodels.checkpoint import load_checkpoint
from worldmodels.envs import make_batch
from worldmodels.models.controller import controller_input_dim, make_action_map
from worldmodels.models.mdrnn import load_mdrnn
from worldmodels.models.vae import load_vae
from worldmodels.stages.evaluate import controller_params

STD = 0.1
LOW, HIGH = torch.tensor([-1.0, 0.0, 0.0]), torch.ones(3)  # steering, gas, brake
COLUMNS = {"steer": [0], "pedals": [1, 2], "gas": [1], "brake": [2]}


def expected_clip(a: torch.Tensor, lo: float, hi: float, s: float) -> torch.Tensor:
    """E[clip(a + eps, lo, hi)] for eps ~ N(0, s^2)."""
    a = a.double()
    lo_z, hi_z = (lo - a) / s, (hi - a) / s
    cdf = torch.special.ndtr
    pdf = lambda x: torch.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)  # noqa: E731
    return (lo * cdf(lo_z) + hi * (1 - cdf(hi_z)) + a * (cdf(hi_z) - cdf(lo_z)) + s * (pdf(lo_z) - pdf(hi_z))).float()


def variant(kind: str, explore, seen: list):
    def act(action, action_map, noise, rngs):
        seen.append(action.numpy().copy())
        if kind == "none":
            return action
        if kind == "expected":
            return torch.stack([expected_clip(action[:, i], float(LOW[i]), float(HIGH[i]), STD) for i in range(3)], -1)
        noisy = explore(action, action_map, STD, rngs)
        if kind == "full":
            return noisy
        out = action.clone()
        out[:, COLUMNS[kind]] = noisy[:, COLUMNS[kind]]
        return out
    return act


def main(run: Path, episodes: int, kinds: list[str]) -> None:
    torch.set_num_threads(1)
    vae = load_vae(run / "vae/checkpoint.pt", "cpu")
    mdrnn = load_mdrnn(run / "mdrnn/checkpoint.pt", "cpu").eval()
    params, _ = controller_params(load_checkpoint(run / "controller/checkpoint.pt"), "auto")
    agent = play.BatchAgent(vae, mdrnn, make_action_map("carracing", {"type": "box", "shape": [3]}), "zh",
                            controller_input_dim(vae.z_dim, mdrnn.hidden, "zh"))
    envs = make_batch("carracing", "fast")
    explore, seeds = play.explore, list(range(900_000, 900_000 + episodes))
    for kind in kinds:
        seen: list = []
        play.explore = variant(kind, explore, seen)
        results = []
        for i in range(0, episodes, 16):
            batch = seeds[i:i + 16]
            results += agent.play(envs, np.stack([params] * len(batch)), batch, 1000, noise=1.0)  # noise: on
        r = np.array([x["return"] for x in results])
        a = np.concatenate(seen)
        print(f"{kind:9s} {r.mean():7.1f} ± {r.std():5.1f}  median {np.median(r):6.1f}  <300 {(r < 300).sum():2d}  "
              f">800 {(r > 800).sum():2d}  C's actions: |steer| {np.abs(a[:, 0]).mean():.3f}, gas {a[:, 1].mean():.3f} "
              f"(>= 0.99 on {(a[:, 1] > 0.99).mean():.0%} of steps), brake {a[:, 2].mean():.3f} "
              f"(0 on {(a[:, 2] == 0).mean():.0%})", flush=True)
    play.explore = explore


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(","))
