"""Dream throughput: the batched DreamEnv against a naive per-member loop, and against the matmul roofline.

    python benchmarks/dream.py                 # B=1024, paper sizes (z 32, h 256, 5 Gaussians, 3 actions)
    python benchmarks/dream.py --device cpu --steps 20 --naive-sweeps 1
    python benchmarks/dream.py --device cuda --batch 1024 16384 --naive-members 2048 --generation

Prints, per device (CPU, and CUDA when present), in one run:
- batched: member-steps/s of one DreamEnv with B members (B x steps / s);
- naive: member-steps/s of B single dreams stepped one after another with the same M
  (``MDRNN.step`` + ``sample_gmm`` per member, B=1 each), timed over a few sweeps;
- the ratio of the two (target on CPU: >= 15x; on GPU: >= 200x);
- the machine's dense matmul rate for a matmul the size of the dream's LSTM gates,
  (B, A+Z+H) x (A+Z+H, 4H), and the fraction of it the batched dream reaches, counting the FLOPs of
  the two matmuls of a step (LSTM gates + mixture/reward/done head) (target on CPU: >= 0.5).

--batch takes several sizes (one block each). --naive-members N times the naive loop on the first N
members only (a single member's step does not depend on B; 16,384 single steps on a GPU take seconds).
--generation also times one paper-size CMA-ES generation in the dream: 64 candidates x 16 rollouts =
1024 members x 1000 steps, each member with its own linear controller on [z, h] (rollout_dream, the
path of train-controller --where dream); --generation-steps below 1000 extrapolates to 1000.
Each figure is also printed on one line starting with ``FIGURE`` (for scripts to collect).
"""

from __future__ import annotations

import argparse
import time

import torch

import numpy as np

from worldmodels.dream import DreamEnv, flops_per_step
from worldmodels.models.controller import BatchedController, make_action_map, n_params, rollout_dream
from worldmodels.models.mdrnn import MDRNN, sample_gmm


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    """Seconds per call of ``fn``, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


@torch.no_grad()
def bench(device: torch.device, B: int, args: argparse.Namespace) -> None:
    Z, A, H, K, tau = args.z, args.actions, args.hidden, args.k, args.temperature
    torch.manual_seed(0)
    m = MDRNN(Z, A, H, K).to(device).eval()
    m.head.bias[-1] = -20.0  # nobody ends: every step is a full batch step
    initial = (torch.randn(64, Z), torch.full((64, Z), -2.0))
    actions = torch.rand(B, A, device=device) * 2 - 1

    dream = DreamEnv(None, m, initial, tau, B, device, max_steps=10**9, seed=0)
    dream.reset()
    t_step = timed(lambda: dream.step(actions), device, args.steps)
    batched = B / t_step

    n_naive = min(B, args.naive_members or B)
    zs = [torch.randn(1, Z, device=device) for _ in range(n_naive)]
    states = [None] * n_naive
    g = torch.Generator(device=device).manual_seed(0)

    def sweep():  # one step of each of the n_naive single dreams, one after another
        for b in range(n_naive):
            out, states[b] = m.step(zs[b], actions[b:b + 1], states[b])
            zs[b] = sample_gmm(out.logpi, out.mu, out.logsigma, tau, g)

    t_sweep = timed(sweep, device, args.naive_sweeps, warmup=1)
    naive = n_naive / t_sweep

    x = torch.randn(B, A + Z + H, device=device)
    w = torch.randn(A + Z + H, 4 * H, device=device)
    t_mm = timed(lambda: x @ w, device, max(args.steps, 10))
    mm_rate = 2 * B * (A + Z + H) * 4 * H / t_mm
    dream_rate = flops_per_step(m, B) / t_step

    print(f"[{device.type}] B={B} z={Z} h={H} K={K} A={A} tau={tau} threads={torch.get_num_threads()}")
    print(f"  batched DreamEnv : {batched:12,.0f} member-steps/s  ({t_step * 1e3:.2f} ms per batched step)")
    print(f"  naive loop       : {naive:12,.0f} member-steps/s  ({t_sweep / n_naive * 1e6:.1f} us per single step"
          + (f", timed on {n_naive} members)" if n_naive < B else ")"))
    print(f"  speed-up         : {batched / naive:12.1f} x   (target: >= {15 if device.type == 'cpu' else 200} x)")
    print(f"  matmul rate      : {mm_rate / 1e9:12.1f} GFLOP/s  ({B}x{A + Z + H} @ {A + Z + H}x{4 * H})")
    print(f"  dream rate       : {dream_rate / 1e9:12.1f} GFLOP/s  ({flops_per_step(m, B) / 1e6:.0f} MFLOP per step)")
    print(f"  fraction         : {dream_rate / mm_rate:12.2f}     (target on CPU: >= 0.5)")
    print(f"FIGURE dream[{device.type},B={B}] batched {batched:,.0f} member-steps/s, naive {naive:,.0f} "
          f"member-steps/s, speed-up {batched / naive:.1f}x, {t_step * 1e3:.3f} ms/step, "
          f"{dream_rate / 1e9:.1f} of {mm_rate / 1e9:.1f} GFLOP/s")


@torch.no_grad()
def generation(device: torch.device, args: argparse.Namespace) -> None:
    """One paper-size CMA-ES generation in the dream: 64 x 16 members, each with its own controller, 1000 steps."""
    Z, A, H, K, steps, members = args.z, args.actions, args.hidden, args.k, args.generation_steps, 64 * 16
    torch.manual_seed(0)
    m = MDRNN(Z, A, H, K).to(device).eval()
    m.head.bias[-1] = -20.0  # nobody ends: every member plays all its steps
    initial = (torch.randn(64, Z), torch.full((64, Z), -2.0))
    amap = make_action_map("carracing", {"type": "box", "shape": [A]}) if A == 3 else None
    if amap is None:
        raise SystemExit("--generation needs --actions 3 (CarRacing's controller mapping)")
    params = np.random.default_rng(0).normal(0, 0.1, (64, n_params(Z + H, A, True)))
    ctrl = BatchedController(params, Z + H, A, True, rollouts=16, device=device)
    dream = DreamEnv(None, m, initial, args.temperature, members, device, max_steps=steps, obs_mode="zh", seed=0)
    rollout_dream(dream, ctrl, amap, seed=1, max_steps=5)  # warm-up: allocations, kernels
    sync(device)
    t0 = time.perf_counter()
    rollout_dream(dream, ctrl, amap, seed=2)
    sync(device)
    seconds = time.perf_counter() - t0
    if int(dream.lengths.min()) != steps:
        raise SystemExit("a dream member ended early: the timing would not be of full episodes")
    full = seconds * 1000 / steps
    how = "measured in full" if steps == 1000 else f"extrapolated from {steps} steps ({seconds:.2f} s)"
    print(f"[{device.type}] paper-size generation (64 x 16 rollouts x 1000 steps, C on [z, h]): "
          f"{full:.2f} s, {how}; {members * steps / seconds:,.0f} member-steps/s")
    print(f"FIGURE generation[{device.type}] 64x16x1000 steps: {full:.2f} s ({how})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1024], help="dream members B (one or more)")
    parser.add_argument("--steps", type=int, default=30, help="timed batched steps")
    parser.add_argument("--naive-sweeps", type=int, default=2, help="timed sweeps of the naive loop (B steps each)")
    parser.add_argument("--naive-members", type=int, default=0,
                        help="time the naive loop on this many members only (0: all B)")
    parser.add_argument("--generation", action="store_true",
                        help="also time one paper-size generation (64 x 16 members x 1000 steps)")
    parser.add_argument("--generation-steps", type=int, default=1000,
                        help="steps timed for --generation (below 1000: extrapolated)")
    parser.add_argument("--z", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--actions", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.15)
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA GPU")
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        for batch in args.batch:
            bench(device, batch, args)
        if args.generation:
            generation(device, args)


if __name__ == "__main__":
    main()
