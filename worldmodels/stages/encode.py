"""Encode every frame of a rollouts.h5 with a trained V into latents.h5 (mu and logvar per frame).

Episode by episode, with the episode table, actions, rewards and done flags carried over and V's
checkpoint identity (path, run id, epoch, z_dim) recorded in the file's attributes. Each episode is
committed whole, so a killed run leaves a readable file and rerunning the same command continues it;
a latents file made from another rollouts file or another V is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldmodels import config as cfgmod
from worldmodels.data import LATENTS, EpisodeWriter, open_latents, open_rollouts
from worldmodels.errors import WorldModelsError
from worldmodels.models.vae import ConvVAE, frames_to_tensor, load_vae
from worldmodels.utils import pick_device


@dataclasses.dataclass
class Config:
    data: str = cfgmod.option("", "rollouts.h5 to encode (required)")
    vae: str = cfgmod.option("", "V's run folder (runs/<name>/vae) or its checkpoint.pt (required)")
    out: str = cfgmod.option("", "latents.h5 to write or continue, e.g. data/<env>/latents.h5 (required)")
    batch_size: int = cfgmod.option(1000, "frames per forward pass")
    device: str = cfgmod.option("auto", "auto (cuda if available), cpu, cuda, ...")


@torch.inference_mode()
def encode_frames(model: ConvVAE, frames: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames (F, 64, 64, 3) -> mu, logvar as float32 numpy (F, Z), in batches on the model's device."""
    device = next(model.parameters()).device
    mus, logvars = [], []
    for i in range(0, len(frames), batch_size):
        mu, logvar = model.encode(frames_to_tensor(frames[i:i + batch_size], device))  # (B, Z) each
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus).numpy(), torch.cat(logvars).numpy()


def latents_attrs(src_attrs: dict[str, Any], src_path: Path, model: ConvVAE, vae_epoch: int) -> dict[str, Any]:
    """The identity of a latents file: its source rollouts and the exact V that encoded them."""
    return {"env": src_attrs["env"], "env_kwargs": src_attrs.get("env_kwargs", {}),
            "action_space": src_attrs["action_space"], "max_steps": src_attrs.get("max_steps", -1),
            "z_dim": model.z_dim, "vae_checkpoint": model.checkpoint_path, "vae_id": model.checkpoint_id,
            "vae_epoch": vae_epoch, "rollouts": str(src_path.resolve())}


def _check_episodes_match(out: str, source_episodes: np.ndarray, source: str) -> None:
    """An existing latents file must mirror the first episodes of its source, row for row."""
    if not Path(out).is_file():
        return
    try:
        with open_latents(out) as old:
            table = old.episodes
    except WorldModelsError:
        return  # not a latents file at all: the writer refuses it with its own message
    if len(table) > len(source_episodes) or not np.array_equal(table, source_episodes[:len(table)]):
        raise WorldModelsError(f"{out}: its {len(table)} episodes do not match the episodes of {source}; "
                               "write to another path or delete the file")


def run(cfg: Config) -> str:
    """Encode (or continue encoding) ``cfg.data`` into ``cfg.out``; returns the latents path."""
    if not (cfg.data and cfg.vae and cfg.out):
        raise WorldModelsError("--data (rollouts.h5), --vae (runs/<name>/vae) and --out (latents.h5) are required")
    if cfg.batch_size < 1:
        raise WorldModelsError(f"batch_size must be at least 1, got {cfg.batch_size}")
    device = pick_device(cfg.device)
    model = load_vae(cfg.vae, device)
    vae_epoch = model.checkpoint_epoch
    with open_rollouts(cfg.data) as src:
        attrs = latents_attrs(src.attrs, src.path, model, vae_epoch)
        _check_episodes_match(cfg.out, src.episodes, cfg.data)
        with EpisodeWriter(cfg.out, LATENTS, attrs) as writer:
            done = writer.n_episodes
            bar = tqdm(total=src.n_frames, initial=writer.n_frames, unit="frame", desc="encode", dynamic_ncols=True)
            for i in range(done, src.n_episodes):
                episode = src.episode(i)
                mu, logvar = encode_frames(model, episode.pop("obs"), cfg.batch_size)
                # Files collected before the writer enforced it may flag a real end at the time limit as both
                # terminated and truncated: it is a termination (docs/data.md).
                episode["truncated"] = episode["truncated"] & ~episode["terminated"]
                row = src.episodes[i]
                writer.append({"mu": mu, "logvar": logvar, **episode}, seed=int(row["seed"]), level=int(row["level"]))
                bar.update(len(mu))
            bar.close()
    tqdm.write(f"encode: {src.n_episodes} episodes ({src.n_frames} frames) of {cfg.data} in {cfg.out} "
               f"(V {model.checkpoint_id[:8]}, epoch {vae_epoch}, z_dim {model.z_dim}; {src.n_episodes - done} new)")
    return str(cfg.out)

