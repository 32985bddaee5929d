"""Can a study world pay C a reward? What M's reward head predicts at a world's rewarded frames, and what a linear
probe on V's latents can read there, on the world's last 40 episodes (fitted on the others).

    python results/procgen-study/reward_probe.py data/procgen-study/bigfish/seed0

A WORLD folder holds latents.h5 and, optionally, mdrnn/ (without it, only the probes on V's latents run).

M predicts the reward of step t from h after (z_t, a_t). The probes regress "this step was rewarded" (positive
and negative rewards apart) on z_t alone, and on z_t with the next frame's z_{t+1}: if neither separates rewarded
steps (AUC near 0.5), V's latents do not show the event and no reward head on them can learn it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from worldmodels.data import open_latents
from worldmodels.errors import WorldModelsError
from worldmodels.models.mdrnn import load_mdrnn

HELD_OUT = 40


def auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive scores above a negative (Mann-Whitney U)."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    n1 = positive.sum()
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(score) - n1)))


def main(world: str) -> None:
    m = load_mdrnn(f"{world}/mdrnn") if Path(world, "mdrnn").exists() else None  # a V alone: the probes only
    now, both, rewards, held, predicted = [], [], [], [], []
    with open_latents(f"{world}/latents.h5") as f:
        n = f.n_episodes
        for i in range(n):
            ep = f.episode(i)
            mu, r, a = ep["mu"].astype(np.float32), ep["reward"], ep["action"]
            nxt = np.concatenate([mu[1:], mu[-1:]])  # an episode's last step has no next frame: its own
            now.append(mu)
            both.append(np.concatenate([mu, nxt, nxt - mu], 1))
            rewards.append(r)
            held.append(np.full(len(r), i >= n - HELD_OUT))
            if i >= n - HELD_OUT and m is not None:
                a = np.eye(m.action_dim, dtype=np.float32)[a.astype(int)] if a.ndim == 1 else a.astype(np.float32)
                with torch.no_grad():
                    out, _ = m(torch.as_tensor(mu[None]), torch.as_tensor(a[None]))
                predicted.append(out.reward[0].numpy())
    r, held = np.concatenate(rewards), np.concatenate(held)
    p = np.concatenate(predicted) if predicted else None
    print(f"{world}: {len(r)} steps, {(r != 0).sum()} rewarded; the last {HELD_OUT} episodes held out "
          f"({held.sum()} steps)")
    for value in np.unique(r[held]) if p is not None else ():
        s = p[r[held] == value]
        print(f"  M's reward head where the real reward is {value:+g}: mean {s.mean():+.3f}, "
              f"10/50/90 % {np.quantile(s, 0.1):+.3f} / {np.median(s):+.3f} / {np.quantile(s, 0.9):+.3f} ({len(s)} steps)")
    for sign, event in (("positive", r > 0), ("negative", r < 0)):
        if event[held].sum() == 0 or event[~held].sum() == 0:
            continue
        line = [f"  {sign} rewards: M's head AUC {auc(event[held], p if sign == 'positive' else -p):.2f}"
                if p is not None else f"  {sign} rewards: no M"]
        for name, x in (("z_t", now), ("z_t and z_t+1", both)):
            x = np.concatenate(x).astype(np.float64)
            x = np.concatenate([x, np.ones((len(x), 1))], 1)
            w = np.linalg.solve(x[~held].T @ x[~held] + 1e-2 * np.eye(x.shape[1]), x[~held].T @ event[~held])
            line.append(f"linear probe on {name} {auc(event[held], x[held] @ w):.2f}")
        print(", ".join(line))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[0] + "\nusage: python results/procgen-study/reward_probe.py WORLD")
    try:
        main(sys.argv[1])
    except WorldModelsError as err:
        raise SystemExit(f"reward_probe: {err}") from None
