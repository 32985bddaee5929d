"""Compare the reference and fast CarRacing backends from the files results/env-fidelity/run.sh made.

    python results/env-fidelity/analyse.py DATA OUT

Frame statistics and brownian returns over each backend's 100 training episodes; V's reconstruction error
(the loss's squared error per frame, summed over pixels) of each V on each backend's 20 test episodes;
and C's returns on 100 tracks of each, when DATA/c-run was evaluated. Writes OUT/fidelity.json and .md.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from worldmodels.data import open_rollouts
from worldmodels.models.vae import frames_to_tensor, load_vae

BACKENDS = ("reference", "fast")


def frame_stats(path: Path) -> dict:
    """Per-channel mean and std, a 32-bin histogram of all pixel values, the mean frame, and episode returns."""
    total, sq, n, hist = np.zeros(3), np.zeros(3), 0, np.zeros(32)
    mean_frame = np.zeros((64, 64, 3))
    with open_rollouts(path) as f:
        for start in range(0, f.n_frames, 4096):
            obs = np.asarray(f.read("obs", start, min(start + 4096, f.n_frames)), dtype=np.float64)
            total += obs.sum(axis=(0, 1, 2))
            sq += (obs ** 2).sum(axis=(0, 1, 2))
            mean_frame += obs.sum(axis=0)
            hist += np.histogram(obs, bins=32, range=(0, 256))[0]
            n += len(obs)
        ep = f.episodes
        rewards = np.asarray(f.read("reward", 0, f.n_frames), dtype=np.float64)
        returns = np.array([rewards[s:s + l].sum() for s, l in zip(ep["start"], ep["length"])])
    mean = total / (n * 64 * 64)
    return {"frames": n, "mean": mean.tolist(), "std": np.sqrt(sq / (n * 64 * 64) - mean ** 2).tolist(),
            "hist": (hist / hist.sum()).tolist(), "mean_frame": mean_frame / n, "returns": returns}


@torch.no_grad()
def recon_error(vae_dir: Path, path: Path) -> float:
    vae = load_vae(vae_dir, "cpu").eval()
    errs = []
    with open_rollouts(path) as f:
        for start in range(0, f.n_frames, 500):
            x = frames_to_tensor(np.asarray(f.read("obs", start, min(start + 500, f.n_frames))))
            mu, _ = vae.encode(x)
            errs.append(((vae.decode(mu) - x) ** 2).sum(dim=(1, 2, 3)).numpy())
    return float(np.concatenate(errs).mean())


def ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    return float(np.max(np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                               - np.searchsorted(np.sort(b), grid, "right") / len(b))))


def summary(x: np.ndarray) -> dict:
    return {"n": len(x), "mean": float(x.mean()), "std": float(x.std()), "se": float(x.std() / np.sqrt(len(x)))}


def main(data: Path, out: Path) -> None:
    res: dict = {}
    stats = {b: frame_stats(data / b / "train.h5") for b in BACKENDS}
    res["frames"] = {b: {k: stats[b][k] for k in ("frames", "mean", "std")} for b in BACKENDS}
    res["frames"]["mean_frame_abs_diff"] = float(np.abs(stats["reference"]["mean_frame"]
                                                        - stats["fast"]["mean_frame"]).mean())
    res["frames"]["hist_total_variation"] = 0.5 * float(np.abs(np.subtract(stats["reference"]["hist"],
                                                                             stats["fast"]["hist"])).sum())
    res["brownian_returns"] = {b: summary(stats[b]["returns"]) for b in BACKENDS}
    res["brownian_returns"]["ks"] = ks(stats["reference"]["returns"], stats["fast"]["returns"])
    res["vae_recon"] = {f"V({v}) on {d}": recon_error(data / v / "vae", data / d / "test.h5")
                        for v in BACKENDS for d in BACKENDS}
    ctrl = {}
    for b, folder in (("reference", "eval-test"), ("fast", "eval-test-fast")):
        path = data / "c-run" / folder / "returns.csv"
        if path.exists():
            with open(path) as fh:
                ctrl[b] = np.array([float(r["return"]) for r in csv.DictReader(fh)])
    if ctrl:
        res["controller"] = {b: summary(x) for b, x in ctrl.items()}
        if len(ctrl) == 2:
            res["controller"]["ks"] = ks(ctrl["reference"], ctrl["fast"])
    (out / "fidelity.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# CarRacing: reference (gymnasium) vs fast (envpool) backend", "",
             "Made by `bash results/env-fidelity/run.sh`; numbers from `analyse.py`.", "",
             "| measure | reference | fast |", "|---|---:|---:|"]
    f = res["frames"]
    lines.append(f"| frames (100 brownian episodes) | {f['reference']['frames']} | {f['fast']['frames']} |")
    lines.append("| pixel mean R, G, B | " + " | ".join(", ".join(f"{m:.1f}" for m in f[b]["mean"]) for b in BACKENDS) + " |")
    lines.append("| pixel std R, G, B | " + " | ".join(", ".join(f"{m:.1f}" for m in f[b]["std"]) for b in BACKENDS) + " |")
    r = res["brownian_returns"]
    lines.append("| brownian return, mean ± std (se) | " + " | ".join(
        f"{r[b]['mean']:.1f} ± {r[b]['std']:.1f} ({r[b]['se']:.1f})" for b in BACKENDS) + " |")
    for v in BACKENDS:
        lines.append(f"| V trained on {v}: recon error on test frames of | " + " | ".join(
            f"{res['vae_recon'][f'V({v}) on {d}']:.1f}" for d in BACKENDS) + " |")
    if "controller" in res:
        c = res["controller"]
        lines.append("| C (trained on fast) on 100 eval tracks, mean ± std (se) | " + " | ".join(
            f"{c[b]['mean']:.1f} ± {c[b]['std']:.1f} ({c[b]['se']:.1f})" if b in c else "—" for b in BACKENDS) + " |")
    lines += ["", f"- mean frame, |reference − fast| averaged over pixels: {f['mean_frame_abs_diff']:.2f} / 255",
              f"- pixel-value histograms (32 bins), total variation distance: {f['hist_total_variation']:.3f}",
              f"- brownian returns, two-sample KS statistic: {r['ks']:.3f} (n = 100 each)"]
    if "controller" in res and "ks" in res["controller"]:
        lines.append(f"- C's returns, two-sample KS statistic: {res['controller']['ks']:.3f}")
    (out / "fidelity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
