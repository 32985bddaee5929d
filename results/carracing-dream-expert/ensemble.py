"""The last rounds' Cs driving together: each step, the mean of their actions, each C reading its own M's h.

    python results/carracing-dream-expert/ensemble.py [ROUND ...] [--episodes 100] [--out DIR]

The Cs of the given rounds (default 50 51 52: the last three, chosen before any score, not by one) share the kept
V; each keeps its own M (its round's), fed the action the car takes, so each C sees the h it was evolved with.
The car takes the mean of their CarRacing actions (steering, gas, brake after each C's action map). No C is changed
and no real return chooses anything: it is a fixed combination of controllers evolved only in the dream. Played on
the evaluation tracks exactly as `worldmodels evaluate` plays one C (reference env, the same seeds, V's z sampled
from each episode's own stream), and paired per track with round 52's C. With one ROUND it plays that round's C
alone (a check: it must reproduce that C's evaluation). --seed 1 plays 100 other tracks, as `evaluate --seed 1`.
Records to results/carracing-dream-expert/ensemble/.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BATCH = 10  # envs stepped together in one worker


def load_members(rounds: list[int]) -> list[tuple]:
    """(M, C's parameters) of each round, from the shipped rounds."""
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.models.mdrnn import load_mdrnn
    from worldmodels.stages.evaluate import controller_params

    members = []
    for r in rounds:
        folder = HERE / "iterate" / f"round-{r}"
        params, _ = controller_params(load_checkpoint(folder / "controller", kind="controller"), "auto")
        members.append((load_mdrnn(folder / "mdrnn", "cpu").eval(), np.asarray(params)))
    return members


def play(task: tuple[list[int], list[int]]) -> list[dict]:
    """The ensemble of ``rounds`` on env ``seeds``: one episode each (BatchAgent.play's loop, K Ms and Cs)."""
    import torch

    from worldmodels.envs import make_batch
    from worldmodels.models.controller import BatchedController, controller_input, make_action_map
    from worldmodels.models.vae import frames_to_tensor, load_vae
    from worldmodels.play import BatchAgent, noise_keys

    rounds, seeds = task
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    vae = load_vae(HERE / "models" / "vae", "cpu")
    members = load_members(rounds)
    amap = make_action_map("carracing", {"type": "box", "shape": [3]})
    hidden = members[0][0].hidden
    agent = BatchAgent(vae, members[0][0], amap, "zh", vae.z_dim + hidden)
    envs = make_batch("carracing", "reference")
    n = len(seeds)
    ctrls = [BatchedController(np.repeat(p[None], n, 0), vae.z_dim + hidden, 3, True) for _, p in members]
    states = [(torch.zeros(n, hidden), torch.zeros(n, hidden)) for _ in members]
    obs, _ = envs.reset(seeds)
    keys, t = noise_keys(seeds), torch.zeros(n, dtype=torch.int64)
    z = torch.zeros(n, vae.z_dim)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    live = np.arange(n)
    while len(live):
        ids = torch.as_tensor(live)
        mu, logvar = vae.encode(frames_to_tensor(obs))
        z[ids] = agent.sample(mu, logvar, keys[ids], t[ids])
        action = torch.stack([amap(c(controller_input(z, s, "zh"))) for c, s in zip(ctrls, states)]).mean(0)
        states = [m.step(z, amap.model_input(action), s)[1] for (m, _), s in zip(members, states)]
        obs, reward, terminated, truncated = envs.step([amap.env_action(action[i]) for i in live], live)
        returns[live] += reward
        lengths[live] += 1
        t[ids] += 1
        done = terminated | truncated
        obs, live = obs[~done], live[~done]
    envs.close()
    return [{"seed": s, "return": float(r), "length": int(n_)} for s, r, n_ in zip(seeds, returns, lengths)]


def main() -> int:
    sys.path[:0] = [str(ROOT / "results")]
    from tables import _paired

    from worldmodels.envs import episode_seed
    from worldmodels.stages.study import bootstrap_ci

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rounds", type=int, nargs="*", default=[50, 51, 52])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="the evaluation tracks' seed (evaluate --seed: 1 plays "
                        "100 other tracks)")
    parser.add_argument("--out", default=None, help="record folder (default: ensemble/rounds-A-B-C[-seedK])")
    args = parser.parse_args()
    missing = [r for r in args.rounds if not (HERE / "iterate" / f"round-{r}" / "controller").is_dir()]
    if missing:
        print(f"ensemble.py: rounds {missing} are not shipped in {HERE / 'iterate'}", file=sys.stderr)
        return 1
    seeds = [episode_seed(args.seed, i, "eval") for i in range(args.episodes)]
    tasks = [(args.rounds, seeds[i:i + BATCH]) for i in range(0, len(seeds), BATCH)]
    start = time.time()
    with mp.get_context("spawn").Pool(2) as pool:
        rows = [row for part in pool.map(play, tasks) for row in part]
    out = Path(args.out) if args.out else HERE / "ensemble" / ("rounds-" + "-".join(map(str, args.rounds))
                                                               + (f"-seed{args.seed}" if args.seed else ""))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "returns.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["seed", "return", "length"])
        writer.writeheader()
        writer.writerows(rows)
    r = np.array([row["return"] for row in rows])
    low, high = bootstrap_ci(r)
    # round 52's C on the same tracks (ab.round_evaluation; its seed-1 evaluation in ab/round-52/round-52-c)
    baseline = (HERE / "iterate-final" / "eval-test" / "returns.csv" if not args.seed else
                HERE / "ab" / "round-52" / "round-52-c" / f"eval-test-seed{args.seed}" / "returns.csv")
    summary = {"rounds": args.rounds, "seed": args.seed, "episodes": len(r), "mean": float(r.mean()), "std": float(r.std()),
               "ci95": [low, high], "median": float(np.median(r)), "over_800": int((r > 800).sum()),
               "under_600": int((r < 600).sum()), "under_300": int((r < 300).sum()),
               "minus_round_52": _paired(out / "returns.csv", baseline), "env_backend": "reference",
               "seconds": round(time.time() - start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
