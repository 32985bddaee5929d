"""Dream variations' cost: dream steps/s of the plain dream, a K = 3 ensemble, dropout 0.1, both, and the
pessimistic dream (penalty over 8 dropout masks).

    python benchmarks/dream_ensembles.py              # CPU, one torch thread, B = 1024, z 32, h 256, K 5, A 3
    python benchmarks/dream_ensembles.py --device cuda --threads 0

The variants are timed interleaved, in rounds, and each keeps its best round, so a background load that
comes and goes weighs on all of them alike. Each figure is also printed on a line starting with ``FIGURE``.
"""

from __future__ import annotations

import argparse
import time

import torch

from real_env import cpu_name
from worldmodels.dream import DreamEnv
from worldmodels.models.mdrnn import MDRNN


def model(seed: int, args: argparse.Namespace, device: torch.device) -> MDRNN:
    torch.manual_seed(seed)
    m = MDRNN(args.z, args.actions, args.hidden, args.k).to(device).eval()
    with torch.no_grad():
        m.head.bias[-1] = -20.0  # nobody ends: every step is a full batch step
    return m


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--z", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--k", type=int, default=5, help="mixture components")
    parser.add_argument("--actions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ms = [model(seed, args, device) for seed in range(3)]
    initial = (torch.randn(64, args.z), torch.full((64, args.z), -2.0))
    actions = torch.rand(args.batch, args.actions, device=device) * 2 - 1
    variants = {"plain": {}, "K=3": {"models": ms[1:]}, "dropout=0.1": {"dropout": 0.1},
                "K=3+dropout=0.1": {"models": ms[1:], "dropout": 0.1}, "penalty": {"penalty": 1.0}}
    dreams = {name: DreamEnv(None, ms[0], initial, 1.15, args.batch, device, 10**9, seed=0, **kw)
              for name, kw in variants.items()}
    for dream in dreams.values():
        dream.reset()
    best = dict.fromkeys(dreams, float("inf"))
    for _ in range(args.rounds):
        for name, dream in dreams.items():
            for _ in range(3):
                dream.step(actions)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                dream.step(actions)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], (time.perf_counter() - t0) / args.steps)
    print(f"{cpu_name()} [{device.type}] threads={torch.get_num_threads()} "
          f"B={args.batch} z={args.z} h={args.hidden} K={args.k} A={args.actions}")
    for name, seconds in best.items():
        print(f"  {name:16s} {seconds * 1e3:7.2f} ms/step  {1 / seconds:7.1f} steps/s  "
              f"{args.batch / seconds:10,.0f} member-steps/s  ({seconds / best['plain']:.2f}x plain)")
        print(f"FIGURE dream_ensembles[{device.type},{name}] {seconds * 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
