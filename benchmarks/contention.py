"""M training beside other work: OpenMP's spin-waiting, passive waiting and one thread, side by side in one run.

    python benchmarks/contention.py                   # M steps at the pipeline's size, quiet and beside busy cores
    python benchmarks/contention.py --steps 5 --busy 2

On a small machine users run a stage while something else holds the cores (a campaign, a second stage). Torch's
CPU build uses GNU OpenMP, whose threads spin at every parallel region's end before they sleep; when another
process holds the core a spinning thread's partner needs, each region waits for a scheduler time slice. This
script times the same M training steps (``benchmarks/train_throughput.py``'s, in a fresh interpreter each,
because OpenMP reads its settings when torch loads) under six conditions: quiet or beside ``--busy``
processes that each spin a core in pure Python, and OpenMP's default waiting, ``OMP_WAIT_POLICY=PASSIVE`` or
one torch thread (``OMP_NUM_THREADS=1``, what scripts/campaign.sh gives a campaign started beside another).
It prints one ``FIGURE`` line per condition and the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from real_env import cpu_name

HERE = Path(__file__).resolve().parent


def spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


CONDITIONS = {"default": {}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
              "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"}}


def m_steps_per_s(args: argparse.Namespace, settings: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(settings)
    cmd = [sys.executable, str(HERE / "train_throughput.py"), "--device", "cpu", "--modes", "", "--warmup", "1",
           "--mdrnn-steps", str(args.steps), "--mdrnn-batch", str(args.batch), "--seq-len", str(args.seq_len)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        raise SystemExit(f"train_throughput.py failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    match = re.search(r"FIGURE M\[cpu\] ([\d,.]+) sequences/s", out.stdout)
    if not match:
        raise SystemExit(f"no M figure in train_throughput.py's output:\n{out.stdout}")
    return float(match.group(1).replace(",", "")) / args.batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed M steps per condition")
    p.add_argument("--batch", type=int, default=16, help="sequences per M step (the default preset's)")
    p.add_argument("--seq-len", type=int, default=200, help="steps per sequence")
    p.add_argument("--busy", type=int, default=os.cpu_count() or 2,
                   help="busy processes beside M (default: one per core)")
    p.add_argument("--timeout", type=float, default=600, help="seconds one condition may take")
    args = p.parse_args()
    print(f"CPU {cpu_name()}, {os.cpu_count()} cores; M batch {args.batch} x {args.seq_len} steps, "
          f"{args.steps} timed steps a condition; busy processes: {args.busy}")
    rates: dict[tuple[str, str], float] = {}
    for load in ("quiet", "busy"):
        stop = mp.Event()
        n = args.busy if load == "busy" else 0
        workers = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(n)]
        for w in workers:
            w.start()
        time.sleep(0.5 if workers else 0)
        try:
            for name, settings in CONDITIONS.items():
                rates[load, name] = m_steps_per_s(args, settings)
                print(f"FIGURE M[{load}, {name}] {rates[load, name]:.2f} steps/s")
        finally:
            stop.set()
            for w in workers:
                w.join()
    for name in CONDITIONS:
        print(f"{name}: quiet {rates['quiet', name] / rates['quiet', 'default']:.2f}x and busy "
              f"{rates['busy', name] / rates['busy', 'default']:.2f}x the default's speed; busy / quiet "
              f"{rates['busy', name] / rates['quiet', name]:.3f}")


if __name__ == "__main__":
    main()
