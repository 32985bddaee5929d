"""Figures the stages write (PNG via matplotlib, saved as 256-colour palettes; GIF via imageio): one function
per figure.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so they never touch a notebook's
backend or global state, and are saved atomically so a killed run never leaves a torn PNG.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from worldmodels.utils import atomic_path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a 256-colour PNG atomically; returns the path.

    A palette PNG is 1.5-2.5x smaller than matplotlib's RGBA one for these figures (a 64-row latent traversal:
    2.4 MB -> 1.4 MB), and shipped models carry their figures in git (results/ stays under ~100 MB)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    buf.seek(0)
    with Image.open(buf) as image, atomic_path(path) as tmp:
        image.convert("RGB").quantize(256).save(tmp, format="PNG", optimize=True)
    return path


def tile(images: np.ndarray, pad: int = 2, value: int = 255) -> np.ndarray:
    """uint8 images (R, C, H, W, 3) -> one (R*(H+pad)-pad, C*(W+pad)-pad, 3) mosaic with white gaps."""
    rows, cols, h, w, ch = images.shape
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, ch), value, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = images[r, c]
    return out


def reconstruction_grid(real: np.ndarray, recon: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Real frames (N, 64, 64, 3) uint8 in the top row, their reconstructions below; PNG at ``path``."""
    if real.shape != recon.shape:
        raise ValueError(f"real {real.shape} and reconstructions {recon.shape} differ")
    mosaic = tile(np.stack([real, recon]))                       # (2*(64+2)-2, N*(64+2)-2, 3)
    fig = Figure(figsize=(max(2.0, mosaic.shape[1] / 60), mosaic.shape[0] / 60 + 0.4))
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([32, 32 + 66], ["real", "V(real)"])
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def latent_traversal(images: np.ndarray, values: Sequence[float], path: str | os.PathLike, title: str = "") -> Path:
    """Decoded frames (Z, S, 64, 64, 3): row i sweeps latent dimension i through ``values`` (S of them)."""
    n_dims, n_steps = images.shape[:2]
    if len(values) != n_steps:
        raise ValueError(f"{len(values)} values for {n_steps} columns")
    mosaic = tile(images)
    fig = Figure(figsize=(mosaic.shape[1] / 60 + 0.6, mosaic.shape[0] / 60 + 0.6))
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([32 + 66 * i for i in range(n_steps)], [f"{v:+.1f}" for v in values], fontsize=7)
    ax.set_yticks([32 + 66 * i for i in range(n_dims)], [f"z{i}" for i in range(n_dims)], fontsize=7)
    ax.tick_params(labeltop=True)  # the value of each column readable at the top of a tall figure
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def learning_curve(records: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """CMA-ES learning curve from ``controller/metrics.jsonl`` records: the population's best, mean and
    worst fitness per generation, and the mean solution's periodic scores (``eval/*``, ``eval_real/*``)
    as points with one-standard-deviation bars."""
    gens = [r for r in records if "cmaes/mean" in r]
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    if gens:
        x = np.array([r["generation"] + 1 for r in gens])
        best, mean, worst = (np.array([float(r[f"cmaes/{k}"]) for r in gens]) for k in ("best", "mean", "worst"))
        ax.fill_between(x, worst, best, alpha=0.2, color="tab:blue", label="population best..worst")
        ax.plot(x, mean, color="tab:blue", label="population mean")
    for prefix, color, label in (("eval", "tab:red", "mean solution"), ("eval_real", "tab:green", "mean solution, real env")):
        pts = [r for r in records if f"{prefix}/mean" in r]
        if pts:
            ax.errorbar([r["generation"] + 1 for r in pts], [float(r[f"{prefix}/mean"]) for r in pts],
                        yerr=[float(r[f"{prefix}/std"]) for r in pts], fmt="o-", color=color, capsize=3,
                        markersize=4, label=label)
    ax.set_xlabel("generation")
    ax.set_ylabel("return (fitness = mean over rollouts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def iterate_rounds(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """`worldmodels iterate`'s rounds (rows of iterate/rounds.csv, numbers or their text): C's dream score and its
    real score per round, the real one with +-1 standard error bars (std / sqrt(n)), against the real frames M
    had learned from; PNG at ``path``. The gap between the two lines is how much the dream overpays."""
    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) if r.get(key) not in (None, "", "None") else np.nan for r in rows])

    frames = column("real_frames") / 1e6
    real, std, n = column("real_mean"), column("real_std"), column("real_n")
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot(frames, column("dream_score"), "s--", color="tab:red", markersize=5, label="dream score")
    ax.errorbar(frames, real, yerr=std / np.sqrt(np.maximum(n, 1)), fmt="o-", color="tab:green", capsize=3,
                markersize=5, label="real score (± 1 standard error)")
    for r, x, y in zip(column("round"), frames, real):
        if np.isfinite(r) and np.isfinite(y):
            ax.annotate(f"{int(r)}", (x, y), textcoords="offset points", xytext=(5, -11), ha="left", fontsize=7)
    ax.set_xlabel("real frames M learned from (millions); numbers are rounds")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def episode_gif(frames: np.ndarray, path: str | os.PathLike, fps: int = 30, scale: int = 2) -> Path:
    """uint8 frames (T, H, W, 3) -> an animated GIF, each frame upscaled ``scale`` times (nearest; at 2 an
    evaluation episode's GIF is ~1 MB, half of what 4 gave, so shipped results can carry theirs)."""
    import imageio.v2 as imageio

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"expected frames (T, H, W, 3), got {frames.shape}")
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)  # (T, H*scale, W*scale, 3)
    path = Path(path)
    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, list(big), format="GIF", duration=1000 / fps, loop=0)
    return path


def dream_vs_real(real: np.ndarray, dream: np.ndarray, path: str | os.PathLike, title: str = "",
                  columns: int = 10) -> Path:
    """Real frames (T, 64, 64, 3) above M's dream of the same episode (T, 64, 64, 3), ``columns`` evenly
    spaced time steps; PNG at ``path``."""
    if real.shape != dream.shape:
        raise ValueError(f"real {real.shape} and dream {dream.shape} differ")
    steps = np.unique(np.linspace(0, len(real) - 1, min(columns, len(real))).round().astype(int))
    mosaic = tile(np.stack([real[steps], dream[steps]]))
    fig = Figure(figsize=(max(2.0, mosaic.shape[1] / 60), mosaic.shape[0] / 60 + 0.6))
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([32, 32 + 66], ["real", "dream"])
    ax.set_xticks([32 + 66 * i for i in range(len(steps))], [f"t={s}" for s in steps], fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def frame_rows(rows: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike, title: str = "",
               columns: int = 10) -> Path:
    """Labelled rows of frames over time, e.g. reality and dreams at several temperatures: each row is
    (label, uint8 frames (T, 64, 64, 3)), all of the same T; ``columns`` evenly spaced time steps; PNG."""
    if not rows:
        raise ValueError("no rows to draw")
    length = len(rows[0][1])
    if any(frames.shape != rows[0][1].shape for _, frames in rows):
        raise ValueError(f"rows differ in shape: {[frames.shape for _, frames in rows]}")
    steps = np.unique(np.linspace(0, length - 1, min(columns, length)).round().astype(int))
    mosaic = tile(np.stack([frames[steps] for _, frames in rows]))      # (R*66-2, C*66-2, 3)
    fig = Figure(figsize=(max(2.0, mosaic.shape[1] / 60) + 0.8, mosaic.shape[0] / 60 + 0.6))
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([32 + 66 * i for i in range(len(rows))], [label for label, _ in rows], fontsize=7)
    ax.set_xticks([32 + 66 * i for i in range(len(steps))], [f"t={s}" for s in steps], fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def fidelity_scatter(panels: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[str]]], path: str | os.PathLike,
                     highlight: str = "mean") -> Path:
    """Dream vs real mean return, a point per controller and a panel per dream setting: each panel is
    (title, dream (C,), real (C,), controller names). The controller named ``highlight`` (the run's C) is red;
    the dashed line is dream = real, so points below it are controllers the dream overrates."""
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.8 * rows), layout="constrained")  # no title over the labels above
    for k, (title, dream, real, names) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        dream, real = np.asarray(dream, dtype=float), np.asarray(real, dtype=float)
        mark = np.array([name == highlight for name in names])
        ax.scatter(dream[~mark], real[~mark], s=18, color="tab:blue", label="controllers")
        if mark.any():
            ax.scatter(dream[mark], real[mark], s=45, color="tab:red", label="the run's C")
        lo, hi = min(dream.min(), real.min()), max(dream.max(), real.max())
        ax.plot([lo, hi], [lo, hi], "--", color="gray", linewidth=1, label="dream = real")
        ax.set_xlabel("dream return")
        ax.set_ylabel("real return")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)
