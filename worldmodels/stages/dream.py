"""Record a dream of M, decoded by V, as a GIF.

The dream starts from a real first frame of the latents file M was trained on (recorded in M's
checkpoint, or --latents) and is driven by that episode's recorded actions (--actions replay; a random
action once they run out) or by uniform random actions (--actions random). --members > 1 dreams that
many episodes in one batched DreamEnv and tiles them side by side. Needs <run>/vae and <run>/mdrnn.

--augment random_swing,deepdream,... (options in --augment-options) also dreams an augmented copy from
the same start, with the same seed (so the same random streams) and the same actions: the GIF shows
plain | augmented side by side, and a PNG beside it (<gif stem>.png) has a plain and an augmented row
of evenly spaced frames per member. With every augmentation at strength 0 the two are identical.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from tqdm import tqdm

from worldmodels import config as cfgmod
from worldmodels import plots
from worldmodels.augment import build_augmentations, describe
from worldmodels.checkpoint import load_checkpoint
from worldmodels.data import open_latents
from worldmodels.dream import DreamEnv
from worldmodels.errors import WorldModelsError
from worldmodels.models.mdrnn import load_mdrnn
from worldmodels.models.vae import load_vae
from worldmodels.utils import pick_device


@dataclasses.dataclass
class Config:
    run: str = cfgmod.option("", "run folder holding vae/ and mdrnn/ (required)")
    temperature: float = cfgmod.option(1.15, "dream temperature tau (mixture logits / tau, sigma * sqrt(tau))")
    out: Optional[str] = cfgmod.option(None, "GIF to write (default: <run>/dream_tau<temperature>.gif)")
    steps: int = cfgmod.option(300, "dream length (it stops earlier when every member is done)")
    members: int = cfgmod.option(1, "dreams recorded side by side")
    actions: Literal["replay", "random"] = cfgmod.option("replay", "replay the start episode's actions, or random ones")
    episode: Optional[int] = cfgmod.option(None, "episode whose first frame starts the dream (default: drawn by seed)")
    latents: Optional[str] = cfgmod.option(None, "latents.h5 (default: the one M was trained on)")
    reward: str = cfgmod.option("auto", "auto (survival for Doom, else predicted), predicted or survival",
                                choices=["auto", "predicted", "survival"])
    seed: int = cfgmod.option(0, "seed of the dream's random streams and of the start episode")
    fps: int = cfgmod.option(15, "GIF frames per second")
    device: str = cfgmod.option("auto", "auto (cuda if available), cpu, cuda")
    augment: list[str] = cfgmod.option(factory=list, help="also dream with these augmentations, in order "
                                                          "(random_swing, deepdream, value_diversification)")
    augment_options: dict = cfgmod.option(factory=dict, help="per-augmentation options, e.g. "
                                                             "{random_swing: {probability: 1, strength: 0.5}}")


def _random_actions(desc: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    if desc["type"] == "discrete":
        return rng.integers(0, int(desc["n"]), n)
    low, high = np.asarray(desc["low"], np.float32), np.asarray(desc["high"], np.float32)
    return rng.uniform(low, high, (n, *low.shape)).astype(np.float32)


@torch.no_grad()
def run(cfg: Config) -> dict[str, Any]:
    """Dream, decode and write the GIF; returns its path, the members' returns and lengths."""
    if not cfg.run:
        raise WorldModelsError("--run (a run folder with vae/ and mdrnn/) is required")
    if cfg.steps < 1 or cfg.members < 1:
        raise WorldModelsError(f"steps and members must be at least 1, got {cfg.steps}, {cfg.members}")
    run_dir = Path(cfg.run)
    device = pick_device(cfg.device)
    vae = load_vae(run_dir / "vae", device)
    mdrnn = load_mdrnn(run_dir / "mdrnn", device)
    m_cfg = load_checkpoint(run_dir / "mdrnn", kind="mdrnn").get("config") or {}
    latents = cfg.latents or m_cfg.get("latents")
    if not latents:
        raise WorldModelsError(f"{run_dir / 'mdrnn'} does not record its latents file; pass --latents")
    if vae.z_dim != mdrnn.z_dim:
        raise WorldModelsError(f"V has z_dim {vae.z_dim} but M expects {mdrnn.z_dim}; retrain M on V's latents")
    rng = np.random.default_rng(cfg.seed)
    with open_latents(latents) as src:
        if src.n_episodes < 1:
            raise WorldModelsError(f"{latents} holds no episode")
        episode = int(rng.integers(src.n_episodes)) if cfg.episode is None else cfg.episode
        if not 0 <= episode < src.n_episodes:
            raise WorldModelsError(f"--episode {episode} out of range: {latents} has {src.n_episodes} episodes")
        start = int(src.episodes[episode]["start"])
        initial = (torch.from_numpy(src.read("mu", start, start + 1)), torch.from_numpy(src.read("logvar", start, start + 1)))
        desc, env = dict(src.attrs["action_space"]), str(src.attrs["env"])
        recorded = src.episode(episode, ["action"])["action"]
    actions = _random_actions(desc, cfg.steps, rng)
    if cfg.actions == "replay":
        actions[:min(len(recorded), cfg.steps)] = recorded[:cfg.steps]
    reward = cfg.reward if cfg.reward != "auto" else ("survival" if env.startswith("doom") else "predicted")
    augs = _augmentations(cfg, latents, device)

    def make(augmentations: list[Any]) -> DreamEnv:
        return DreamEnv(vae, mdrnn, initial, cfg.temperature, cfg.members, device, cfg.steps, reward=reward,
                        obs_mode="z", seed=cfg.seed, augmentations=augmentations)

    # Same seed, so the same random streams: the augmented dream differs only where an augmentation acts.
    dreams = [make([])] + ([make(augs)] if cfg.augment else [])
    for dream in dreams:
        dream.reset()
    frames = [[d.frames()] for d in dreams]  # per dream: (members, 64, 64, 3) per step
    for t in tqdm(range(cfg.steps), desc="dream", unit="step", dynamic_ncols=True):
        a = torch.as_tensor(np.repeat(actions[t:t + 1], cfg.members, axis=0), device=device)
        for dream, seen in zip(dreams, frames):
            dream.step(a)
            seen.append(dream.frames())
        if all(d.all_done() for d in dreams):
            break
    videos = [np.stack(seen).transpose(1, 0, 2, 3, 4) for seen in frames]  # (members, T, 64, 64, 3) each
    video = np.concatenate([m for v in videos for m in v], axis=2)  # (T, 64, dreams*members*64, 3)
    out = Path(cfg.out) if cfg.out else run_dir / f"dream_tau{cfg.temperature:g}.gif"
    plots.episode_gif(video, out, fps=cfg.fps)
    returns, lengths = dreams[0].returns.cpu().tolist(), dreams[0].lengths.cpu().tolist()
    result = {"gif": str(out), "frames": len(video), "episode": episode, "returns": returns, "lengths": lengths}
    if cfg.augment:
        png = out.with_suffix(".png")
        label = "+".join(cfg.augment)
        rows = [(f"{kind} {m}" if cfg.members > 1 else kind, v[m])
                for m in range(cfg.members) for kind, v in (("plain", videos[0]), (label, videos[1]))]
        plots.frame_rows(rows, png, title=f"dream at tau {cfg.temperature:g}: plain vs {label}")
        result.update(png=str(png), augment=describe(augs), augmented_returns=dreams[1].returns.cpu().tolist(),
                      augmented_lengths=dreams[1].lengths.cpu().tolist())
    tqdm.write(f"dream: {len(video)} frames at tau {cfg.temperature:g} from episode {episode} -> {out}; "
               f"returns {[round(r, 2) for r in returns]}, lengths {lengths}"
               + (f"; augmented returns {[round(r, 2) for r in result['augmented_returns']]} -> {result['png']}"
                  if cfg.augment else ""))
    return result


def _augmentations(cfg: Config, latents: str, device: torch.device) -> list[Any]:
    """The requested augmentations; random swing with ``source: real`` draws from every frame's mu."""
    swing = cfg.augment_options.get("random_swing") or {}
    bank = None
    if "random_swing" in cfg.augment and isinstance(swing, dict) and swing.get("source") == "real":
        with open_latents(latents) as src:
            bank = torch.from_numpy(src.read("mu", 0, src.n_frames)).to(device)
    return build_augmentations(cfg.augment, cfg.augment_options, latents=bank)
