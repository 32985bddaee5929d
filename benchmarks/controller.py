"""How fast candidates are scored: CMA-ES fitness in the batched dream vs the real CarRacing env.

    python benchmarks/controller.py [--steps 100] [--workers 2] [--batch 1024] [--gen-steps 50] [--device auto]

Paper-sized CarRacing models with random weights (V z=32, M h=256, C 867 parameters, input [z, h]).
One "candidate evaluation" is one episode of --steps steps played by one controller. Measured side by
side in this run:
  dream: --batch members (64 x 16 = 1024 in the paper), each with its own controller, one batched
         DreamEnv run on --device (M's done bias is pushed down so every member plays all --steps);
  real:  the same controller size and episode length in CarRacing, --workers worker processes
         (V + M on CPU in each, batches of 16 episodes, as train-controller --where real does, on the
         env backend auto picks: envpool's where installed).
Then the wall-clock of one paper-sized generation in the dream (64 x 16 rollouts of 1000 steps) on
CPU, extrapolated from --gen-steps steps of the 1024-member batch (the step cost does not change
within an episode), and on CUDA, measured in full, when a GPU is present.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels.checkpoint import save_checkpoint
from worldmodels.dream import DreamEnv
from worldmodels.envs import describe_action_space, episode_seed, make, resolve_backend
from worldmodels.models.controller import BatchedController, make_action_map, n_params, rollout_dream
from worldmodels.models.mdrnn import MDRNN
from worldmodels.models.vae import ConvVAE
from worldmodels.parallel import WorkerPool
from worldmodels.play import batch_tasks, init_worker, worker_batch

Z, H = 32, 256


def paper_models(folder: Path):
    torch.manual_seed(0)
    vae, mdrnn = ConvVAE(Z), MDRNN(Z, 3, H)
    with torch.no_grad():
        mdrnn.head.bias[-1] = -20.0  # done logit: no early ends, every episode plays all its steps
    vae_path = save_checkpoint(folder / "vae", "vae", {"model": vae.state_dict(), "z_dim": Z})
    mdrnn_path = save_checkpoint(folder / "mdrnn", "mdrnn", {"model": mdrnn.state_dict(), "model_args": mdrnn.config})
    return vae.eval(), mdrnn.eval(), vae_path, mdrnn_path


def dream_seconds(vae, mdrnn, batch: int, steps: int, device: torch.device, params: np.ndarray) -> float:
    """Seconds for one batched dream of ``batch`` members x ``steps`` steps (construction excluded)."""
    amap = make_action_map("carracing", {"type": "box", "shape": [3]})
    mdrnn = mdrnn.to(device)
    initial = (torch.randn(16, Z), torch.full((16, Z), -2.0))
    dream = DreamEnv(vae, mdrnn, initial, 1.15, batch, device, steps, obs_mode="zh", seed=0)
    ctrl = BatchedController(params[:batch], Z + H, 3, True, device=device)
    rollout_dream(dream, ctrl, amap, seed=1, max_steps=5)  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    rollout_dream(dream, ctrl, amap, seed=2)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    assert int(dream.lengths.min()) == steps, "a dream member ended early"
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="episode length for the side-by-side comparison")
    p.add_argument("--workers", type=int, default=2, help="real-env worker processes")
    p.add_argument("--episodes", type=int, default=0, help="real episodes (default: 16 per worker)")
    p.add_argument("--batch", type=int, default=1024, help="dream members (population x rollouts)")
    p.add_argument("--gen-steps", type=int, default=50, help="steps measured for the CPU generation estimate")
    p.add_argument("--device", default="auto", help="dream device for the comparison: auto, cpu, cuda")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    episodes = args.episodes or 16 * max(1, args.workers)
    amap = make_action_map("carracing", describe_action_space(make("carracing").action_space))
    n = n_params(Z + H, amap.output_dim, amap.bias)
    params = np.random.default_rng(0).normal(0, 0.1, (max(args.batch, 1024, episodes), n))
    print(f"controller: {n} parameters (input [z, h] = {Z}+{H}), episodes of {args.steps} steps, "
          f"torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        vae, mdrnn, vae_path, mdrnn_path = paper_models(Path(tmp))
        secs = dream_seconds(vae, mdrnn, args.batch, args.steps, device, params)
        dream_rate = args.batch / secs
        print(f"dream ({device.type}, batch {args.batch}): {secs:.2f} s -> {dream_rate:.1f} candidate evals/s "
              f"({args.batch * args.steps / secs:,.0f} member-steps/s)")

        spec = {"vae": str(vae_path), "mdrnn": str(mdrnn_path), "env": "carracing", "env_kwargs": {},
                "env_backend": resolve_backend("carracing", "auto"), "max_steps": args.steps, "obs_mode": "zh",
                "input_dim": Z + H, "action_map": amap.to_dict()}
        seeds = [episode_seed(0, i, "train") for i in range(episodes)]
        with WorkerPool(args.workers, init_worker, (spec,), what="benchmark") as pool:
            warm = max(1, args.workers)
            pool.map(worker_batch, batch_tasks(params[:warm], seeds[:warm], 1))  # warm-up: workers loaded V and M
            t = time.perf_counter()
            results = [r for batch in pool.map(worker_batch, batch_tasks(params[:episodes], seeds, 16)) for r in batch]
            real_secs = time.perf_counter() - t
        steps = sum(r["length"] for r in results)
        real_rate = episodes / real_secs
        print(f"real CarRacing ({spec['env_backend']} env, {args.workers} workers, {episodes} episodes, {steps} steps): {real_secs:.2f} s "
              f"-> {real_rate:.2f} candidate evals/s ({steps / real_secs:,.0f} steps/s)")
        print(f"ratio dream/real: {dream_rate / real_rate:.1f}x candidate evaluations per second")

        cpu_secs = dream_seconds(vae, mdrnn, 1024, args.gen_steps, torch.device("cpu"), params)
        print(f"paper-sized generation in the dream on CPU (64 x 16 rollouts x 1000 steps): "
              f"~{cpu_secs * 1000 / args.gen_steps:.0f} s, extrapolated from {args.gen_steps} steps "
              f"measured ({cpu_secs:.2f} s)")
        if torch.cuda.is_available():
            gpu_secs = dream_seconds(vae, mdrnn, 1024, 1000, torch.device("cuda"), params)
            print(f"paper-sized generation in the dream on CUDA ({torch.cuda.get_device_name()}): "
                  f"{gpu_secs:.2f} s measured in full")


if __name__ == "__main__":
    main()
