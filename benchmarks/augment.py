"""Cost of the augmentations inside a batched dream: dream steps/s with each augmentation vs the plain dream.

Run: .venv/bin/python benchmarks/augment.py [--batch 1024] [--steps 200] [--device auto]
Prints, side by side in one run, steps/s of the plain dream and of the dream with each augmentation
(probability 0.5, window = steps, paper-sized V and M: z 32, LSTM 256, 5 gaussians, ProcGen's 15 actions),
and the ratio augmented / plain (1.0 = free).
"""

from __future__ import annotations

import argparse
import time

import torch

from worldmodels.augment import AUGMENTATIONS, build_augmentations
from worldmodels.dream import DreamEnv
from worldmodels.models.mdrnn import MDRNN
from worldmodels.models.vae import ConvVAE
from worldmodels.utils import pick_device


def steps_per_second(vae, m, names, batch, steps, device) -> float:
    initial = (torch.randn(64, 32), torch.full((64, 32), -2.0))
    augs = build_augmentations(names, {n: {"probability": 0.5, "window": steps} for n in names})
    dream = DreamEnv(vae, m, initial, 1.0, batch, device, steps + 1, seed=0, augmentations=augs)
    actions = torch.zeros(batch, dtype=torch.int64, device=device)
    with torch.no_grad():
        dream.reset()
        dream.step(actions)  # warm-up
        dream.reset()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            dream.step(actions)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    vae, m = ConvVAE(32).to(device).eval(), MDRNN(32, 15, 256, 5).to(device).eval()
    with torch.no_grad():
        m.head.bias[-1] = -20.0  # never done: every member runs every step
    plain = steps_per_second(vae, m, [], args.batch, args.steps, device)
    print(f"device {device}, batch {args.batch}, {args.steps} steps, each trajectory chosen with p 0.5")
    print(f"{'plain dream':50s} {plain:9.1f} steps/s   ratio 1.00")
    for names in [[n] for n in AUGMENTATIONS] + [list(AUGMENTATIONS)]:
        sps = steps_per_second(vae, m, names, args.batch, args.steps, device)
        print(f"{'+'.join(names):50s} {sps:9.1f} steps/s   ratio {sps / plain:.2f}")


if __name__ == "__main__":
    main()
