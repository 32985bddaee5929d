"""Train V, the convolutional VAE, on the frames of a rollouts.h5 file.

Frames are streamed from HDF5 (shuffled chunk order + a bounded in-memory shuffle buffer), so memory
stays flat whatever the dataset size. Whole episodes are held out for validation. Each epoch appends
`vae/*` and `val/vae/*` to metrics.jsonl, redraws reconstructions.png and saves checkpoint.pt atomically;
the end of training draws traversal.png. Rerunning the same command resumes; --fresh starts over.

--data a.h5,b.h5 trains on several rollouts files of one env as one dataset, each file's episodes split
into training and validation on their own; --init DIR starts from another V's weights (fine-tuning, as
`worldmodels iterate` refits V), with a fresh optimizer.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from worldmodels import config as cfgmod
from worldmodels import plots
from worldmodels.checkpoint import CHECKPOINT_NAME, checkpoint_file, load_checkpoint, new_id, save_checkpoint
from worldmodels.data import ROLLOUTS, EpisodeFiles, open_rollouts, split_paths
from worldmodels.data.schema import OBS_CHUNK_FRAMES
from worldmodels.errors import WorldModelsError
from worldmodels.training import check_same_run, finite_or_stop, rng_states, set_rng_states
from worldmodels.metrics import MetricsLogger
from worldmodels.models.vae import ConvVAE, frames_to_tensor, tensor_to_frames, vae_loss
from worldmodels.utils import exclusive_lock, pick_device, seed_everything


@dataclasses.dataclass
class Config:
    data: str = cfgmod.option("", "rollouts.h5 written by `worldmodels collect` (required); several of one env as "
                                  "a.h5,b.h5: one dataset, each file split on its own")
    out: str = cfgmod.option("", "run folder for V, e.g. runs/<name>/vae (required)")
    env: str = cfgmod.option("", "the data's env, to apply a preset's env block (e.g. doom-takecover: z_dim 64); "
                                 "checked against the file")
    z_dim: int = cfgmod.option(32, "latent size (paper: 32 CarRacing, 64 Doom)")
    epochs: int = cfgmod.option(10, "total epochs over the training frames (may grow on resume)")
    batch_size: int = cfgmod.option(100, "frames per step")
    epoch_frames: int = cfgmod.option(0, "frames per epoch (0: every training frame); a shorter epoch reads a new "
                                         "random draw of chunks each time, which bounds a fine-tune on large data")
    lr: float = cfgmod.option(1e-4, "Adam learning rate")
    kl_tolerance: float = cfgmod.option(0.5, "KL floor per latent dimension, in nats")
    val_fraction: float = cfgmod.option(0.05, "fraction of episodes held out for validation")
    shuffle_buffer: int = cfgmod.option(10_000, "frames in the in-memory shuffle buffer, per loader (12 KiB each)")
    workers: int = cfgmod.option(0, "DataLoader processes reading HDF5 (0: read in the main process)")
    device: str = cfgmod.option("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    bf16: Optional[bool] = cfgmod.option(None, "bf16 autocast (default: on CUDA, and on CPUs with AMX, where it "
                                               "trains ~1.4x faster; see benchmarks/README.md)")
    channels_last: bool = cfgmod.option(True, "channels-last memory layout (faster convolutions on CPU and CUDA)")
    seed: int = cfgmod.option(0, "seed for weights, sampling, validation split and data order")
    tensorboard: Optional[bool] = cfgmod.option(None, "also log to <out>/tensorboard (default: when installed)")
    init: Optional[str] = cfgmod.option(None, "start from this V's weights (its folder or checkpoint.pt; same z_dim), "
                                              "not a random init")
    fresh: bool = cfgmod.option(False, "delete this run folder's checkpoint and metrics and start over")


# Keys that may differ when resuming: they change how or how long we train, not what is trained.
CONTINUATION_SAFE = ("epochs", "shuffle_buffer", "workers", "device", "bf16", "channels_last", "fresh", "env",
                     "tensorboard")
PICTURE_FRAMES = 8
TRAVERSAL_VALUES = np.linspace(-3.0, 3.0, 7)


class FrameStream(torch.utils.data.IterableDataset):
    """uint8 batches (B, 64, 64, 3) from the ``obs`` of some frame ranges of a rollouts file.

    Reads whole HDF5 chunks (the unit h5py decompresses anyway) in an order shuffled per epoch, and mixes
    them in a shuffle buffer of ``buffer_frames`` frames, so memory is bounded by the buffer, not the file.
    Each DataLoader worker opens the file itself and takes every n-th chunk of the shuffled order.
    ``path`` may list several files (``a.h5,b.h5``): ranges are then global frame indices over them, file
    after file (:class:`worldmodels.data.EpisodeFiles`), and no read crosses from one file into the next.
    """

    def __init__(self, path: str, ranges: list[tuple[int, int]], batch_size: int, buffer_frames: int,
                 shuffle: bool, seed: int = 0, block_frames: int = OBS_CHUNK_FRAMES, epoch_frames: int = 0):
        super().__init__()
        self.path, self.batch_size, self.shuffle, self.seed = str(path), batch_size, shuffle, seed
        self.epoch_frames = epoch_frames
        self.buffer_frames = max(buffer_frames, batch_size)
        self.epoch = 0
        starts = [0]  # each file's first global frame; chunks are aligned within their file
        for extra in split_paths(self.path)[:-1]:
            with open_rollouts(extra) as src:
                starts.append(starts[-1] + src.n_frames)
        ends = starts[1:] + [math.inf]
        # block: (lo, hi, pieces) = one chunk-aligned read and the [start, stop) ranges kept from it
        by_chunk: dict[int, list[tuple[int, int]]] = {}
        for start, stop in _merge(ranges):
            for base, end in zip(starts, ends):
                a, b = max(start, base), min(stop, end)  # the part of [start, stop) in this file
                for lo in range(a - (a - base) % block_frames, b, block_frames) if a < b else ():
                    by_chunk.setdefault(lo, []).append((max(a, lo), min(b, lo + block_frames)))
        self.blocks = [(p[0][0], p[-1][1], p) for _, p in sorted(by_chunk.items())]
        self.block_sizes = np.array([sum(b - a for a, b in p) for _, _, p in self.blocks], dtype=np.int64)
        self.n_frames = int(self.block_sizes.sum())
        self.max_block = max((hi - lo for lo, hi, _ in self.blocks), default=0)

    def __len__(self) -> int:  # batches this epoch with one reader (each worker may end on a short batch)
        return math.ceil(self.frames_per_epoch / self.batch_size)

    @property
    def frames_per_epoch(self) -> int:
        """Frames the current epoch reads: all, or (capped) its shuffled chunks up to the one reaching the cap."""
        return int(self.block_sizes[self._order()].sum())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        """The blocks this epoch reads, in reading order."""
        order = np.arange(len(self.blocks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        if self.epoch_frames > 0:  # the shuffled order's first chunks, up to the cap
            order = order[:int(np.searchsorted(np.cumsum(self.block_sizes[order]), self.epoch_frames)) + 1]
        return order

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        order = self._order()
        rng = np.random.default_rng([self.seed, self.epoch, worker, 1])
        mine = [self.blocks[i] for i in order[worker::n_workers]]
        with EpisodeFiles(split_paths(self.path), ROLLOUTS) as src:
            blocks = (_read_block(src, lo, hi, pieces) for lo, hi, pieces in mine)
            yield from (self._shuffled(blocks, rng) if self.shuffle else self._in_order(blocks))

    def _in_order(self, blocks: Iterator[np.ndarray]) -> Iterator[torch.Tensor]:
        carry = np.empty((0, 64, 64, 3), np.uint8)
        for frames in blocks:
            frames = np.concatenate([carry, frames]) if len(carry) else frames
            n_full = len(frames) // self.batch_size * self.batch_size
            for i in range(0, n_full, self.batch_size):
                yield torch.from_numpy(frames[i:i + self.batch_size])
            carry = frames[n_full:]
        if len(carry):
            yield torch.from_numpy(carry)

    def _shuffled(self, blocks: Iterator[np.ndarray], rng: np.random.Generator) -> Iterator[torch.Tensor]:
        buf = np.empty((self.buffer_frames + self.max_block, 64, 64, 3), np.uint8)
        n, bs = 0, self.batch_size
        for frames in blocks:
            buf[n:n + len(frames)] = frames
            n += len(frames)
            while n >= self.buffer_frames:
                # take bs random frames, then move the untaken frames of the tail into the holes
                idx = rng.choice(n, bs, replace=False)
                batch = buf[idx]
                tail = np.arange(n - bs, n)
                buf[idx[idx < n - bs]] = buf[tail[~np.isin(tail, idx)]]
                n -= bs
                yield torch.from_numpy(batch)
        perm = rng.permutation(n)
        for i in range(0, n, bs):
            yield torch.from_numpy(buf[perm[i:i + bs]])


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, stop in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(a, b) for a, b in merged]


def _read_block(src: Any, lo: int, hi: int, pieces: list[tuple[int, int]]) -> np.ndarray:
    frames = src.read("obs", lo, hi)                                        # (hi - lo, 64, 64, 3)
    if len(pieces) == 1 and pieces[0] == (lo, hi):
        return frames
    return np.concatenate([frames[a - lo:b - lo] for a, b in pieces])


def split_episodes(n_episodes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode indices (train, val): whole episodes on one side only, at least one of each when possible."""
    if not 0.0 <= val_fraction < 1.0:
        raise WorldModelsError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = min(max(round(val_fraction * n_episodes), 1), n_episodes - 1) if val_fraction > 0 else 0
    perm = np.random.default_rng([seed, 7]).permutation(n_episodes)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split_files(counts: list[int], first_episodes: np.ndarray, val_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Global episode indices (train, val) over several files: the first ``counts[i]`` episodes of file i
    split on their own, so each file's split is the one it gets alone, whatever files come beside it."""
    parts = [split_episodes(n, val_fraction, seed) for n in counts]
    return (np.concatenate([first + tr for first, (tr, _) in zip(first_episodes, parts)]),
            np.concatenate([first + va for first, (_, va) in zip(first_episodes, parts)]))


def load_init(model: ConvVAE, path: str) -> str:
    """Copy another V's weights into ``model`` (fine-tuning); returns that V's id. Sizes must match."""
    state = load_checkpoint(path, kind="vae")
    weights = state.get("model") or {}
    if {k: tuple(v.shape) for k, v in weights.items()} != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        raise WorldModelsError(f"--init {path}: its V (z_dim {state.get('z_dim')}) does not match this one "
                               f"(z_dim {model.z_dim}); sizes must match for a warm start")
    model.load_state_dict(weights)
    return str(state["id"])


def _picture_frames(ranges: list[tuple[int, int]], episodes: np.ndarray) -> list[int]:
    """PICTURE_FRAMES frame indices spread evenly over the frames of ``episodes``."""
    lengths = np.array([ranges[e][1] - ranges[e][0] for e in episodes])
    ends = np.cumsum(lengths)
    picks = np.linspace(0, ends[-1] - 1, PICTURE_FRAMES).round().astype(int)
    where = np.searchsorted(ends, picks, side="right")
    return [ranges[episodes[w]][0] + int(p - (ends[w] - lengths[w])) for w, p in zip(where, picks)]


def _loader(stream: FrameStream, workers: int, device: torch.device) -> Any:
    if workers <= 0:
        return stream
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                       pin_memory=device.type == "cuda", prefetch_factor=4)


def _cpu_has_amx() -> bool:
    """AMX tiles: the CPU feature that made bf16 training faster (1.4x on a Xeon); AVX-512 BF16 alone did not."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


class _Step:
    """One forward pass + loss on a uint8 batch, with the device's memory layout and autocast."""

    def __init__(self, model: ConvVAE, cfg: Config, device: torch.device):
        self.model, self.device, self.kl_tolerance = model, device, cfg.kl_tolerance
        self.cuda = device.type == "cuda"
        self.layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.bf16 = (self.cuda or _cpu_has_amx()) if cfg.bf16 is None else bool(cfg.bf16)

    def __call__(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        x = frames_to_tensor(frames, self.device).contiguous(memory_format=self.layout)  # (B, 3, 64, 64)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            recon, mu, logvar = self.model(x)
        return vae_loss(x, recon, mu, logvar, self.kl_tolerance)


def train_epoch(step: _Step, opt: torch.optim.Optimizer, loader: Any, n_batches: int, desc: str,
                out: Path, done_epochs: int) -> dict[str, float]:
    """One pass over the training stream; returns mean loss, recon, kl and images/s."""
    step.model.train()
    sums = torch.zeros(3, device=step.device)
    n_seen, t0 = 0, time.perf_counter()
    bar = tqdm(loader, total=n_batches, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    for i, frames in enumerate(bar):
        losses = step(frames)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        sums += torch.stack([losses[k].detach() for k in ("loss", "recon", "kl")]) * len(frames)
        n_seen += len(frames)
        if i % 20 == 0:  # a host sync: check for NaN and update the bar only now and then
            loss = losses["loss"].item()
            finite_or_stop({"vae/loss": loss}, f"at {desc}, batch {i + 1}", out, "epoch", done_epochs)
            bar.set_postfix(loss=f"{loss:.1f}", img_s=f"{n_seen / (time.perf_counter() - t0):.0f}")
    bar.close()
    means = (sums / max(n_seen, 1)).tolist()
    stats = {"vae/loss": means[0], "vae/recon": means[1], "vae/kl": means[2]}
    finite_or_stop(stats, f"in {desc}", out, "epoch", done_epochs)
    stats["vae/images_per_s"] = n_seen / (time.perf_counter() - t0)
    return stats


@torch.no_grad()
def evaluate(step: _Step, loader: Any) -> dict[str, float]:
    """Mean val/vae/{loss,recon,kl} with z = mu (eval mode); empty if there is no validation data."""
    step.model.eval()
    sums, n = torch.zeros(3, device=step.device), 0
    for frames in loader:
        losses = step(frames)
        sums += torch.stack([losses[k] for k in ("loss", "recon", "kl")]) * len(frames)
        n += len(frames)
    step.model.train()
    if n == 0:
        return {}
    means = (sums / n).tolist()
    return {"val/vae/loss": means[0], "val/vae/recon": means[1], "val/vae/kl": means[2]}


@torch.no_grad()
def draw_pictures(model: ConvVAE, frames: np.ndarray, out: Path, epoch: int, traversal: bool) -> None:
    """reconstructions.png (real above V(real)); with ``traversal``, traversal.png around the first frame's mu."""
    model.eval()
    device = next(model.parameters()).device
    x = frames_to_tensor(frames, device)
    recon, mu, _ = model(x)
    plots.reconstruction_grid(frames, tensor_to_frames(recon), out / "reconstructions.png",
                              f"epoch {epoch}: real frames (top) and their reconstructions")
    if traversal:
        z = mu[0].repeat(model.z_dim, len(TRAVERSAL_VALUES), 1)               # (Z, S, Z)
        for d in range(model.z_dim):
            z[d, :, d] = torch.as_tensor(TRAVERSAL_VALUES, dtype=z.dtype, device=z.device)
        images = tensor_to_frames(model.decode(z.flatten(0, 1)))             # (Z*S, 64, 64, 3)
        plots.latent_traversal(images.reshape(model.z_dim, len(TRAVERSAL_VALUES), 64, 64, 3), TRAVERSAL_VALUES,
                               out / "traversal.png", f"epoch {epoch}: one latent dimension set to -3..+3 per row")
    model.train()


def run(cfg: Config) -> dict[str, Any]:
    """Train (or resume training) V; returns a summary with the checkpoint path and last epoch's metrics."""
    if not cfg.data or not cfg.out:
        raise WorldModelsError("--data (a rollouts.h5) and --out (a run folder such as runs/<name>/vae) are required")
    for key in ("epochs", "batch_size", "z_dim"):
        if getattr(cfg, key) < 1:
            raise WorldModelsError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.epoch_frames < 0:
        raise WorldModelsError(f"epoch_frames must be 0 (every frame) or positive, got {cfg.epoch_frames}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / CHECKPOINT_NAME, "train-vae"):
        return _train(cfg, out)


def _train(cfg: Config, out: Path) -> dict[str, Any]:
    with EpisodeFiles(split_paths(cfg.data), ROLLOUTS) as src:
        episodes, data_env, first_episodes = src.episodes.copy(), src.attrs["env"], src.first_episodes
        sizes = [(str(Path(f.path).resolve()), f.n_episodes) for f in src.files]
    paths = [p for p, _ in sizes]
    data_path = ",".join(paths)
    if cfg.env and cfg.env != data_env:
        raise WorldModelsError(f"--env {cfg.env} but {cfg.data} holds {data_env} frames")
    ckpt_path = out / CHECKPOINT_NAME
    if cfg.fresh:
        for name in (CHECKPOINT_NAME, "metrics.jsonl", "reconstructions.png", "traversal.png"):
            (out / name).unlink(missing_ok=True)
    state = load_checkpoint(ckpt_path, kind="vae") if ckpt_path.exists() else None
    # a resumed run keeps the episodes (and so the split) it started with, even if collection went on
    counts = [n for _, n in sizes]
    if state is not None:
        data = state.get("data", {})
        files = data.get("files") or [{"path": data.get("path"), "n_episodes": data.get("n_episodes")}]
        saved, new = dict(state.get("config") or {}), cfgmod.to_dict(cfg)
        saved["data"], new["data"] = ",".join(str(f["path"]) for f in files), data_path
        check_same_run(saved, new, CONTINUATION_SAFE, out)
        counts = [int(f["n_episodes"]) for f in files]
    for (path, have), n in zip(sizes, counts):
        if have < n:
            raise WorldModelsError(f"{path if len(sizes) > 1 else cfg.data} has {have} episodes but this run was "
                                   f"trained on {n}; use --fresh to start over on this file")
        if n < 1:
            raise WorldModelsError(f"{path if len(sizes) > 1 else cfg.data} holds no complete episode yet; "
                                   "collect some first")
    n_episodes = sum(counts)
    train_eps, val_eps = split_files(counts, first_episodes, cfg.val_fraction, cfg.seed)
    ranges = [(int(e["start"]), int(e["start"] + e["length"])) for e in episodes]
    train = FrameStream(data_path, [ranges[i] for i in train_eps], cfg.batch_size, cfg.shuffle_buffer, True, cfg.seed,
                        epoch_frames=cfg.epoch_frames)
    val = FrameStream(data_path, [ranges[i] for i in val_eps], cfg.batch_size, 0, False)
    with EpisodeFiles(paths, ROLLOUTS) as src:  # the same frames in every epoch's picture
        frames = np.stack([src.read("obs", i, i + 1)[0]
                           for i in _picture_frames(ranges, val_eps if len(val_eps) else train_eps)])
    cfgmod.save(cfg, out / "config.yaml")

    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model = ConvVAE(cfg.z_dim).to(device)
    step = _Step(model, cfg, device)
    model.to(memory_format=step.layout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=True)  # foreach: several times faster on CPU
    start, run_id = 0, new_id()
    init = state.get("init") if state is not None else None  # the V this one was fine-tuned from
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, run_id = int(state["epoch"]), state["id"]
        set_rng_states(state["rng"])
    elif cfg.init:
        init = {"path": str(checkpoint_file(cfg.init).resolve()), "id": load_init(model, cfg.init)}
    n_train, per_epoch = train.n_frames, train.frames_per_epoch
    tqdm.write(f"train-vae: {n_train} training frames ({len(train_eps)} episodes), {val.n_frames} validation "
               f"frames ({len(val_eps)} episodes), device {device}, epochs {start + 1}..{cfg.epochs}"
               + (f" of ~{per_epoch} frames" if per_epoch < n_train else ""))
    stats: dict[str, float] = dict(state.get("metrics", {})) if state else {}
    with MetricsLogger(out / "metrics.jsonl", step_key="epoch", resume_from=start + 1 if start else None,
                       tensorboard=cfg.tensorboard) as log:
        for epoch in range(start, cfg.epochs):
            train.set_epoch(epoch)
            t0 = time.perf_counter()
            stats = train_epoch(step, opt, _loader(train, cfg.workers, device), len(train),
                                f"epoch {epoch + 1}/{cfg.epochs}", out, epoch)
            stats.update(evaluate(step, _loader(val, cfg.workers, device)))
            finite_or_stop(stats, f"in validation after epoch {epoch + 1}", out, "epoch", epoch)
            stats["time_s"] = time.perf_counter() - t0
            log.log(epoch + 1, **stats)
            draw_pictures(model, frames, out, epoch + 1, traversal=epoch + 1 == cfg.epochs)
            log.image("vae/reconstructions", out / "reconstructions.png", epoch + 1)
            if epoch + 1 == cfg.epochs:
                log.image("vae/traversal", out / "traversal.png", epoch + 1)
            save_checkpoint(ckpt_path, "vae", {
                "id": run_id, "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                "config": cfgmod.to_dict(cfg), "z_dim": cfg.z_dim, "rng": rng_states(), "metrics": stats, "init": init,
                "data": {"path": paths[0], "n_episodes": n_episodes, "val_episodes": val_eps.tolist(),
                         "files": [{"path": p, "n_episodes": n} for p, n in zip(paths, counts)]}})
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in stats.items() if k.startswith(("vae/", "val/"))))
    if not (out / "traversal.png").exists() and start >= cfg.epochs:
        draw_pictures(model, frames, out, start, traversal=True)
    return {"checkpoint": str(ckpt_path), "id": run_id, "epoch": max(start, cfg.epochs), "metrics": stats,
            "val_episodes": val_eps.tolist(), "train_episodes": train_eps.tolist()}
