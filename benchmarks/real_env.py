"""Agent-steps/s of the real-env path (train-controller --where real, evaluate) on CarRacing: today's vs the new one.

    python benchmarks/real_env.py [--workers 2] [--steps 300] [--env-batch 16] [--drift 0]

Paper-sized models with random weights (V z=32, M h=256, C on [z, h]); every episode plays --steps steps
with its own controller (random parameters, sigma 0.1). Measured side by side on one --workers pool each:
  old: the reference env (gymnasium CarRacing-v3), one episode per task and a batch of one in the agent,
       as before the batched agent existed (the batched agent at batch 1 stands in for the old Agent);
  new: the fast env (envpool CarRacing-v3), --env-batch episodes per task, one V/M/C forward per step.
Then, in this process on one thread, where a fast agent step goes: envpool step, frame resize, V encode,
C + M. With --drift N, N full-length episodes are played at batch 1 and at --env-batch on the fast env,
and the per-episode return differences and both means (with their standard errors) are printed.
The last line is the speed-up, new / old.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from controller import H, Z, paper_models
from worldmodels.envs import episode_seed, make_batch
from worldmodels.models.controller import BatchedController, controller_input, make_action_map, n_params
from worldmodels.parallel import WorkerPool
from worldmodels.play import BatchAgent, batch_tasks, init_worker, worker_batch

AMAP = make_action_map("carracing", {"type": "box", "shape": [3]})


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def rate(spec: dict, workers: int, params: np.ndarray, seeds: list[int], env_batch: int) -> tuple[float, list]:
    """agent-steps/s of playing every (params[i], seeds[i]) on a warm pool."""
    tasks = batch_tasks(params, seeds, env_batch)
    with WorkerPool(workers, init_worker, (spec,), what="benchmark") as pool:
        pool.map(worker_batch, batch_tasks(params[:workers], seeds[:workers], 1))  # warm-up: models loaded
        t = time.perf_counter()
        results = [r for batch in pool.map(worker_batch, tasks) for r in batch]
        seconds = time.perf_counter() - t
    return sum(r["length"] for r in results) / seconds, results


def breakdown(vae, mdrnn, params: np.ndarray, env_batch: int, steps: int = 100) -> None:
    """Milliseconds per agent step of each part of a fast batched step, on one thread."""
    torch.set_num_threads(1)
    envs = make_batch("carracing", "fast")
    seeds = [episode_seed(9, i, "train") for i in range(env_batch)]
    envs.reset(seeds)
    raw = envs.pool
    act = np.tile(np.array([[0.0, 0.5, 0.0]], np.float32), (env_batch, 1))
    ids = np.arange(env_batch, dtype=np.int32)
    t = time.perf_counter()
    for _ in range(steps):
        obs, *_ = raw.step(act, env_id=ids)
    env_ms = (time.perf_counter() - t) / (steps * env_batch) * 1e3
    t = time.perf_counter()
    for _ in range(steps // 10):
        frames = envs._frames(obs)
    resize_ms = (time.perf_counter() - t) / (steps // 10 * env_batch) * 1e3
    agent = BatchAgent(vae, mdrnn, AMAP, "zh", Z + H)
    keys, tt = torch.zeros(env_batch, dtype=torch.int64), torch.zeros(env_batch, dtype=torch.int64)
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(steps // 10):
            z = agent.encode(frames, keys, tt)
        v_ms = (time.perf_counter() - t) / (steps // 10 * env_batch) * 1e3
        ctrl = BatchedController(params[:env_batch], Z + H, 3, True)
        state = (torch.zeros(env_batch, H), torch.zeros(env_batch, H))
        t = time.perf_counter()
        for _ in range(steps // 10):
            a = AMAP(ctrl(controller_input(z, state, "zh")))
            _, state = mdrnn.step(z, AMAP.model_input(a), state)
        cm_ms = (time.perf_counter() - t) / (steps // 10 * env_batch) * 1e3
    envs.close()
    total = env_ms + resize_ms + v_ms + cm_ms
    print(f"one fast agent step at batch {env_batch}, one thread: envpool step {env_ms:.3f} ms, resize "
          f"{resize_ms:.3f} ms, V encode {v_ms:.3f} ms, C + M {cm_ms:.3f} ms = {total:.3f} ms "
          f"(-> {1e3 / total:,.0f} agent-steps/s per core before Python and IPC overheads)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=300, help="steps per episode")
    p.add_argument("--old-episodes", type=int, default=8, help="episodes on today's path")
    p.add_argument("--new-episodes", type=int, default=64, help="episodes on the new path")
    p.add_argument("--env-batch", type=int, default=16)
    p.add_argument("--drift", type=int, default=0, help="episodes of the batch-size drift check (0: skip)")
    args = p.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; V z={Z}, M h={H}, "
          f"episodes of {args.steps} steps, {args.workers} workers")
    n = n_params(Z + H, 3, True)
    episodes = max(args.old_episodes, args.new_episodes, args.drift)
    params = np.random.default_rng(0).normal(0, 0.1, (episodes, n))
    seeds = [episode_seed(0, i, "eval") for i in range(episodes)]
    with tempfile.TemporaryDirectory() as tmp:
        vae, mdrnn, vae_path, mdrnn_path = paper_models(Path(tmp))
        spec = {"vae": str(vae_path), "mdrnn": str(mdrnn_path), "env": "carracing", "env_kwargs": {},
                "max_steps": args.steps, "obs_mode": "zh", "input_dim": Z + H, "action_map": AMAP.to_dict()}
        old, _ = rate({**spec, "env_backend": "reference"}, args.workers, params[:args.old_episodes],
                      seeds[:args.old_episodes], 1)
        print(f"old: reference env, batch 1        : {old:8,.0f} agent-steps/s ({args.old_episodes} episodes)")
        new, _ = rate({**spec, "env_backend": "fast"}, args.workers, params[:args.new_episodes],
                      seeds[:args.new_episodes], args.env_batch)
        print(f"new: fast env, batch {args.env_batch:<3}          : {new:8,.0f} agent-steps/s "
              f"({args.new_episodes} episodes)")
        breakdown(vae, mdrnn, params, args.env_batch)
        if args.drift:
            long = {**spec, "env_backend": "fast", "max_steps": None}
            _, one = rate(long, args.workers, params[:args.drift], seeds[:args.drift], 1)
            _, many = rate(long, args.workers, params[:args.drift], seeds[:args.drift], args.env_batch)
            a, b = np.array([r["return"] for r in one]), np.array([r["return"] for r in many])
            diff = np.abs(a - b)
            print(f"batch drift over {args.drift} full episodes: mean return {a.mean():.2f} ± {a.std() / np.sqrt(len(a)):.2f} "
                  f"(batch 1) vs {b.mean():.2f} ± {b.std() / np.sqrt(len(b)):.2f} (batch {args.env_batch}); "
                  f"|per-episode difference| median {np.median(diff):.3g}, max {diff.max():.3g}, "
                  f"{np.mean(diff < 1e-6):.0%} identical; mean difference {abs(a.mean() - b.mean()):.2f}")
    print(f"speed-up: {new / old:.1f}x")


if __name__ == "__main__":
    main()
