"""Collection throughput (``worldmodels collect``'s real path), measured side by side in one run.

  1. CarRacing: the fast env (envpool) vs the reference env (gymnasium), W workers, env_batch episodes
     per task, frames written to an HDF5 file in episode order. Target >= 6x.
  2. ProcGen coinrun at W workers: the writer compressing chunks with ISA-L (today) vs HDF5's own zlib
     filter (before), which capped collection near 10k frames/s. Target >= 2.5x.
  With --scaling: the older check of 1 vs W workers and the writer's overhead over bare env stepping.
  With --controller RUN: an iterate round's data, RUN's C playing with action noise 0.1 then `encode` of every
  frame (before), against the collection writing the latents its V computed to play (today).
Every rate is the best of --repeats runs on a warm pool. The machine's CPU is printed first; the last
line gives both speed-ups.

  python benchmarks/collect.py [--workers 2] [--repeats 2]
  python benchmarks/collect.py --scaling --env carracing --episodes 16 --max-steps 500
  python benchmarks/collect.py --controller results/carracing-dream-expert/iterate-final --episodes 32
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from real_env import cpu_name
from worldmodels.data import ROLLOUTS, EpisodeWriter
from worldmodels.envs import describe_action_space, episode_seed, make
from worldmodels.parallel import BACKENDS, WorkerPool
from worldmodels.policies import resolve_policy
from worldmodels.stages import collect


def space_and_policy(env: str) -> tuple[dict, str]:
    probe = make(env)
    space = describe_action_space(probe.action_space)
    probe.close()
    return space, resolve_policy("auto", space)


def collect_rate(env: str, backend: str, workers: int, episodes: int, max_steps: int, env_batch: int,
                 repeats: int, tmp: Path, hdf5_compresses: bool = False, pool_backend: str = "local") -> float:
    """Best frames/s of write_episodes (episodes back to this process, written in order) on a warm pool."""
    space, policy = space_and_policy(env)
    seeds = [episode_seed(0, i, "collect") for i in range(episodes)]
    best = 0.0
    with WorkerPool(workers, initializer=collect._init_envs, initargs=(env, backend, {}), what="benchmark",
                    backend=pool_backend) as pool:
        pool.map(_warmup, [(policy, space, s) for s in seeds[:max(workers, 1)]])
        for rep in range(repeats):
            path = tmp / f"{backend}-{hdf5_compresses}-{rep}.h5"
            attrs = dict(env=env, env_kwargs={}, action_space=space, policy=policy, seed=0, max_steps=max_steps)
            start = time.perf_counter()
            with EpisodeWriter(path, ROLLOUTS, attrs, hdf5_compresses=hdf5_compresses) as writer:
                collect.write_episodes(writer, pool, policy, space, max_steps, seeds, env_batch=env_batch)
                frames = writer.n_frames
            best = max(best, frames / (time.perf_counter() - start))
            path.unlink()
    return best


def _bare(task: tuple) -> tuple[int, float]:
    """The worker-side work of collection (step, build arrays) without sending the episode back.

    Returns (frames, CPU seconds of this worker), so the cost per frame can be told apart from waiting.
    """
    policy, space, max_steps, seed = task
    cpu = time.process_time()
    frames = len(collect._collect_batch(policy, space, max_steps, [seed])[0]["arrays"]["obs"])
    return frames, time.process_time() - cpu


def _warmup(task: tuple) -> tuple[int, float]:
    return _bare((task[0], task[1], 5, task[2]))


def scaling(args: argparse.Namespace) -> None:
    """1 vs W workers, and the writer's cost over bare stepping (one episode per task, reference env)."""
    space, policy = space_and_policy(args.env)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in sorted({1, args.workers}):
            seeds = [episode_seed(0, i, "collect") for i in range(args.episodes)]
            with WorkerPool(workers, initializer=collect._init_envs, initargs=(args.env, "reference", {}),
                            what="benchmark", backend=args.backend) as pool:
                pool.map(_warmup, [(policy, space, s) for s in seeds[:max(2 * workers, 1)]])
                r: dict[str, float] = {}
                for rep in range(args.repeats):
                    start = time.perf_counter()
                    done = pool.map(_bare, [(policy, space, args.max_steps, s) for s in seeds])
                    frames = sum(f for f, _ in done)
                    bare = frames / (time.perf_counter() - start)
                    path = Path(tmp) / f"w{workers}-{rep}.h5"
                    attrs = dict(env=args.env, env_kwargs={}, action_space=space, policy=policy, seed=0,
                                 max_steps=args.max_steps)
                    start, cpu = time.perf_counter(), time.process_time()
                    with EpisodeWriter(path, ROLLOUTS, attrs) as writer:
                        collect.write_episodes(writer, pool, policy, space, args.max_steps, seeds)
                        written = writer.n_frames
                    r["bare"] = max(r.get("bare", 0.0), bare)
                    r["collect"] = max(r.get("collect", 0.0), written / (time.perf_counter() - start))
                    r["env_cpu"] = min(r.get("env_cpu", float("inf")), sum(c for _, c in done) / frames)
                    r["writer_cpu"] = min(r.get("writer_cpu", float("inf")), (time.process_time() - cpu) / written)
                    path.unlink()
                rows[workers] = r
    print(f"{'workers':>7} {'bare frames/s':>14} {'collect frames/s':>17} {'writer overhead':>16}")
    for w, r in rows.items():
        print(f"{w:>7} {r['bare']:>14.0f} {r['collect']:>17.0f} {100 * (1 - r['collect'] / r['bare']):>15.1f}%")
    print(f"scaling: collect W={args.workers} / W=1 = {rows[args.workers]['collect'] / rows[1]['collect']:.2f}x "
          "(target >= 1.7x for W=2 on 2 cores)")
    env_cpu, writer_cpu = rows[1]["env_cpu"], min(r["writer_cpu"] for r in rows.values())
    print(f"CPU per frame: env step {1e3 * env_cpu:.3f} ms in a worker, receive + write {1e3 * writer_cpu:.3f} ms "
          f"in the main process = {100 * writer_cpu / env_cpu:.1f}% of the env's cost")


def round_data(args: argparse.Namespace) -> None:
    """Seconds to an iterate round's rollouts and latents: collection then encode vs collection writing both,
    alternated --repeats times on the same seeds (the best of each)."""
    from worldmodels.stages import encode
    from worldmodels.stages.collect import controller_episodes

    run = Path(args.controller)
    seeds = [episode_seed(0, 2**24 + i, "collect") for i in range(args.episodes)]
    steps = args.max_steps if args.max_steps > 0 else None
    best = {"collect, then encode": float("inf"), "collect writing latents": float("inf")}
    frames = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for how in best:
                out, lat = Path(tmp) / f"{rep}-{len(how)}.h5", Path(tmp) / f"{rep}-{len(how)}-latents.h5"
                start = time.perf_counter()
                if how.endswith("encode"):
                    summary = controller_episodes(run, out, seeds, 0.1, steps, "auto", args.env_batch, args.workers,
                                                  {"seed": 0}, desc=how)
                    encode.run(encode.Config(data=str(out), vae=str(run / "vae"), out=str(lat), device="cpu"))
                else:
                    summary = controller_episodes(run, out, seeds, 0.1, steps, "auto", args.env_batch, args.workers,
                                                  {"seed": 0}, desc=how, latents=lat)
                best[how] = min(best[how], time.perf_counter() - start)
                frames = summary["frames"]
    print(f"{args.episodes} episodes of {run}'s C ({frames} frames, {summary['env_backend']} env):")
    for how, seconds in best.items():
        print(f"  {how:<24} {seconds:7.1f} s  {frames / seconds:7.0f} frames/s")
    before, now = best.values()
    print(f"speed-up: {before / now:.2f}x (the round's encode stage and a restore's encode left out)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (the best is kept)")
    parser.add_argument("--car-episodes", type=int, default=16, help="CarRacing episodes per fast run")
    parser.add_argument("--car-ref-episodes", type=int, default=4, help="CarRacing episodes per reference run")
    parser.add_argument("--car-steps", type=int, default=300, help="frames per CarRacing episode")
    parser.add_argument("--procgen-episodes", type=int, default=64)
    parser.add_argument("--procgen-steps", type=int, default=500, help="cap on frames per coinrun episode")
    parser.add_argument("--env-batch", type=int, default=8)
    parser.add_argument("--backend", default="local", choices=BACKENDS, help="worker pool backend")
    parser.add_argument("--scaling", action="store_true", help="run the 1-vs-W scaling check instead")
    parser.add_argument("--env", default="carracing", help="--scaling: env")
    parser.add_argument("--episodes", type=int, default=8, help="--scaling: episodes per timed run")
    parser.add_argument("--max-steps", type=int, default=300, help="--scaling: frames per episode "
                        "(--controller: a cap, 0 for the env's own limit)")
    parser.add_argument("--controller", default="", help="a run folder: time an iterate round's data instead")
    args = parser.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} cores; {args.workers} workers, best of {args.repeats}")
    if args.scaling:
        scaling(args)
        return
    if args.controller:
        round_data(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        w, tmp = args.workers, Path(tmp)
        ref = collect_rate("carracing", "reference", w, args.car_ref_episodes, args.car_steps, args.env_batch,
                           args.repeats, tmp, pool_backend=args.backend)
        fast = collect_rate("carracing", "fast", w, args.car_episodes, args.car_steps, args.env_batch,
                            args.repeats, tmp, pool_backend=args.backend)
        print(f"carracing, {args.car_steps}-frame episodes: reference {ref:,.0f} frames/s, fast {fast:,.0f} "
              f"frames/s -> {fast / ref:.1f}x (target >= 6x)")
        old = collect_rate("procgen:coinrun", "reference", w, args.procgen_episodes, args.procgen_steps,
                           args.env_batch, args.repeats, tmp, hdf5_compresses=True, pool_backend=args.backend)
        new = collect_rate("procgen:coinrun", "reference", w, args.procgen_episodes, args.procgen_steps,
                           args.env_batch, args.repeats, tmp, pool_backend=args.backend)
        print(f"procgen:coinrun: HDF5 zlib in the writer {old:,.0f} frames/s, ISA-L chunks {new:,.0f} frames/s "
              f"-> {new / old:.1f}x (target >= 2.5x)")
    print(f"speed-up: carracing fast/reference {fast / ref:.1f}x, coinrun writer new/old {new / old:.1f}x")


if __name__ == "__main__":
    main()
