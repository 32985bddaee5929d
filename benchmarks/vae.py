"""V's input path: does streaming frames from rollouts.h5 slow training down, and does memory stay flat?

Throughput (default): training images/s of the train-vae stage reading a rollouts.h5 through its
streaming loader (FrameStream), against the same model and optimizer fed from an in-memory uint8 tensor,
side by side in one run (alternating, best of --repeats each). Target: loader cost <= 10 % on CPU.

    python benchmarks/vae.py [--frames 3000] [--workers 0] [--device auto] [--repeats 2]

Memory (--memory): peak RSS of one shuffled epoch through the loader over a small file and over a file of
more than 1 GB of raw frames (default 90,000 frames = 1.1 GB), each in a fresh process; with
--with-training also of the full stage (one epoch of training) on both.

    python benchmarks/vae.py --memory [--frames 90000] [--with-training]

Synthetic frames (a gradient, a moving square and a band of noise, so lzf compresses them about as
well as real game frames) are written with the data layer's EpisodeWriter into --dir (reused if present).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels.data import ROLLOUTS, EpisodeWriter, open_rollouts
from worldmodels.metrics import read_metrics
from worldmodels.models.vae import ConvVAE
from worldmodels.stages import train_vae
from worldmodels.utils import pick_device

EPISODE = 1000


def episode_frames(index: int, length: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(length)
    frames = np.empty((length, 64, 64, 3), np.uint8)
    frames[:] = np.linspace(0, 150, 64, dtype=np.uint8)[None, None, :, None]      # (1, 1, 64, 1) gradient
    frames[:, 48:56] = rng.integers(0, 256, (length, 8, 64, 3), dtype=np.uint8)   # noise band
    colour = rng.integers(60, 255, 3).astype(np.uint8)
    xs, ys = (5 * t + 13 * index) % 40, (3 * t) % 40
    for i in range(length):
        frames[i, ys[i]:ys[i] + 24, xs[i]:xs[i] + 24] = colour
    return frames


def make_file(path: Path, n_frames: int) -> Path:
    """A rollouts.h5 of ``n_frames`` synthetic frames in 1000-frame episodes (reused if big enough)."""
    if path.exists():
        with open_rollouts(path) as f:
            if f.n_frames >= n_frames:
                return path
    attrs = {"env": "synthetic", "env_kwargs": {}, "action_space": {"type": "discrete", "n": 3},
             "policy": "random", "seed": 0, "max_steps": EPISODE}
    rng = np.random.default_rng(0)
    with EpisodeWriter(path, ROLLOUTS, attrs) as writer:
        while writer.n_frames < n_frames:
            n = min(EPISODE, n_frames - writer.n_frames)
            writer.append({"obs": episode_frames(writer.n_episodes, n, rng), "action": np.zeros(n, np.int64),
                           "reward": np.zeros(n, np.float32), "terminated": np.arange(n) == n - 1,
                           "truncated": np.zeros(n, bool)}, seed=writer.n_episodes)
    return path


def with_cpu_time(train_epoch):
    """train_epoch that also reports the CPU seconds of this process (robust to other jobs on the machine)."""
    def timed(*args, **kw):
        c0 = time.process_time()
        stats = train_epoch(*args, **kw)
        return {**stats, "cpu_s": time.process_time() - c0}
    return timed


def stage_images_per_s(data: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """One epoch of the real stage (HDF5 -> FrameStream -> model): images per wall second and per CPU second."""
    cfg = train_vae.Config(data=str(data), out=str(out), epochs=1, batch_size=args.batch_size, val_fraction=0.0,
                           workers=args.workers, device=args.device, fresh=True)
    plain = train_vae.train_epoch
    train_vae.train_epoch = with_cpu_time(plain)  # the stage looks it up at call time
    try:
        train_vae.run(cfg)
    finally:
        train_vae.train_epoch = plain
    record = read_metrics(out / "metrics.jsonl")[-1]
    return record["vae/images_per_s"], args.frames / record["cpu_s"]


def memory_images_per_s(frames: torch.Tensor, args: argparse.Namespace) -> tuple[float, float]:
    """The same training epoch (train_vae.train_epoch, same step and optimizer) fed from a uint8 tensor."""
    device = pick_device(args.device)
    cfg = train_vae.Config(data="-", out="-", batch_size=args.batch_size, device=args.device)
    model = ConvVAE(cfg.z_dim).to(device)
    step = train_vae._Step(model, cfg, device)
    model.to(memory_format=step.layout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=True)
    perm = torch.randperm(len(frames))
    batches = (frames[perm[i:i + args.batch_size]] for i in range(0, len(frames), args.batch_size))
    stats = with_cpu_time(train_vae.train_epoch)(step, opt, batches, -(-len(frames) // args.batch_size),
                                                 "in-memory", Path("-"), 0)
    return stats["vae/images_per_s"], len(frames) / stats["cpu_s"]


def loader_frames_per_s(data: Path, args: argparse.Namespace) -> float:
    """The loader alone: one shuffled epoch of FrameStream over the same file, no model."""
    with open_rollouts(data) as f:
        ranges = [(int(e["start"]), int(e["start"] + e["length"])) for e in f.episodes]
    stream = train_vae.FrameStream(str(data), ranges, args.batch_size, args.buffer, shuffle=True)
    t0 = time.perf_counter()
    n = sum(len(b) for b in train_vae._loader(stream, args.workers, torch.device("cpu")))
    return n / (time.perf_counter() - t0)


def throughput(args: argparse.Namespace, work: Path) -> None:
    data = make_file(work / f"rollouts-{args.frames}.h5", args.frames)
    with open_rollouts(data) as f:
        frames = torch.from_numpy(f.read("obs", 0, args.frames))                   # (F, 64, 64, 3) uint8
    stage, memory, loader = [], [], []
    for r in range(args.repeats):
        stage.append(stage_images_per_s(data, work / "vae", args))
        memory.append(memory_images_per_s(frames, args))
        loader.append(loader_frames_per_s(data, args))
        print(f"repeat {r + 1}: stage (HDF5 stream) {stage[-1][0]:.1f} img/s ({stage[-1][1]:.1f} per CPU s), "
              f"in-memory {memory[-1][0]:.1f} img/s ({memory[-1][1]:.1f} per CPU s), loader alone {loader[-1]:.0f} frames/s")
    (wall_stage, cpu_stage), (wall_memory, cpu_memory) = np.max(stage, axis=0), np.max(memory, axis=0)
    # wall clock is the figure that matters on a quiet machine; per CPU second is what survives a busy one
    # (it leaves out loader processes, so it means something only with --workers 0)
    print(json.dumps({"frames": args.frames, "batch_size": args.batch_size, "workers": args.workers,
                      "device": str(pick_device(args.device)), "torch_threads": torch.get_num_threads(),
                      "stage_images_per_s": round(wall_stage, 1), "memory_images_per_s": round(wall_memory, 1),
                      "loader_cost_percent": round(100 * (1 - wall_stage / wall_memory), 1),
                      "stage_images_per_cpu_s": round(cpu_stage, 1), "memory_images_per_cpu_s": round(cpu_memory, 1),
                      "loader_cost_percent_cpu": round(100 * (1 - cpu_stage / cpu_memory), 1),
                      # the loader's share of an epoch if it ran serially with training (as with --workers 0)
                      "loader_alone_frames_per_s": round(max(loader)),
                      "loader_share_percent": round(100 * wall_memory / max(loader), 1)}))


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: one epoch of the loader alone, or of the stage; prints peak RSS (MB)."""
    t0 = time.perf_counter()
    if args.child == "loader":
        with open_rollouts(args.data) as f:
            ranges = [(int(e["start"]), int(e["start"] + e["length"])) for e in f.episodes]
        stream = train_vae.FrameStream(args.data, ranges, args.batch_size, args.buffer, shuffle=True)
        n = sum(len(b) for b in train_vae._loader(stream, args.workers, torch.device("cpu")))
    else:
        n = train_vae.run(train_vae.Config(data=args.data, out=args.out, epochs=1, batch_size=args.batch_size,
                                           val_fraction=0.0, workers=args.workers, device=args.device,
                                           shuffle_buffer=args.buffer, fresh=True))["epoch"]
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": round(self_mb, 1), "peak_worker_rss_mb": round(workers_mb, 1),
                      "seconds": round(time.perf_counter() - t0, 1), "count": n}))


def memory(args: argparse.Namespace, work: Path) -> None:
    small = make_file(work / f"rollouts-{args.frames // 9}.h5", args.frames // 9)
    big = make_file(work / f"rollouts-{args.frames}.h5", args.frames)
    modes = ["loader", "stage"] if args.with_training else ["loader"]
    for mode in modes:
        for data, n in ((small, args.frames // 9), (big, args.frames)):
            cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--out", str(work / "vae-mem"),
                   "--batch-size", str(args.batch_size), "--buffer", str(args.buffer), "--workers", str(args.workers),
                   "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(f"{mode} epoch over {n} frames ({n * 64 * 64 * 3 / 1e9:.2f} GB raw), buffer {args.buffer} frames, "
                  f"workers {args.workers}: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=None, help="3000 (throughput) or 90000 (--memory)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--buffer", type=int, default=train_vae.Config.shuffle_buffer)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--with-training", action="store_true")
    parser.add_argument("--dir", default=None, help="folder for the synthetic files (default: a temp folder)")
    parser.add_argument("--child", choices=["loader", "stage"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.frames = args.frames or (90_000 if args.memory else 3_000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        (memory if args.memory else throughput)(args, work)


if __name__ == "__main__":
    main()
