"""Iterative training (World Models, section 5): collect real episodes with the current C, refit M on all the
data so far (and V when the new frames no longer look like its training frames), evolve C in the refit M's
dream, score it; repeat.

--run R already holds vae/, mdrnn/ and controller/ from the pipeline; M's checkpoint records the latents it
learned from (the original data). Round r = 1..--rounds writes R/iterate/round-<r>/, a run folder:

  rollouts.h5   --episodes real episodes of the last C (round 1: R's, or --collector's) with exploration --noise (Gaussian of
                that std on continuous actions, clipped to the action space; discrete: that probability of a
                uniformly random action), on collect-purpose seeds no round and no original collection uses;
                attrs record the round, the policy (controller+noise), the controller's id and the noise
  vae           the current V: a link to the last one; or, when V's reconstruction error on this round's
                frames exceeds --vae-refit-ratio times its error on the original frames, V fine-tuned from
                the last one on the base V's own training frames and every round's (--vae-frames a epoch,
                drawn afresh, bounds its cost on large data); every rollouts file so far is then re-encoded
                into latents/
  latents.h5    this round's episodes encoded with that V (the collection writes it: C's V encodes every frame
                to play it; encoded again only where this round refit V)
  mdrnn/        M trained on every latents file so far (train-mdrnn --init: warm-started from the last M)
  controller/   C evolved in that M's dream with the run's controller settings (train-controller --init:
                CMA-ES starts from the last C's mean)
  eval-test/, eval-dream-<tau>/   C's real score (reference env) and its dream score
  round.json    what each finished stage found, and its wall-clock seconds

and one row per round in R/iterate/rounds.csv (and rounds.json): real episodes and frames used so far, M's
validation loss, V's error ratio and whether V was refit, dream and real scores, seconds per stage; rounds.png
draws the dream and real scores per round. The original rollouts and latents are never modified. Rerunning
the same command skips finished rounds and stages (an interrupted stage resumes), a higher --rounds continues,
and other settings than those recorded in R/iterate/config.yaml are refused. Rounds moved to another machine without their data files (records and
checkpoints only: results/ship.py iterate) continue too: the files a round needs are rebuilt first (restore).

  worldmodels iterate --run runs/carracing-default --rounds 3 --episodes 100 --generations 20
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from worldmodels import config as cfgmod
from worldmodels.config import option
from worldmodels.envs import ENV_BACKENDS
from worldmodels.errors import WorldModelsError
from worldmodels.utils import atomic_write_text, exclusive_lock

# Round r collects episodes r * ROUND_STRIDE + i of the original collection's seed: never an index that
# collection (fewer than 2**24 episodes) or another round uses.
ROUND_STRIDE = 2**24
# Settings a rerun may change: how many rounds, where the work runs, and for the rounds not yet at that stage how
# long C searches (C still climbing at a round's end is worth more generations) and when V is refit (a refit moves
# V's latents under C and M: a user may stop refitting), how C's episodes are explored and how pessimistic C's
# dreams are; each round records its own.
CONTINUATION_SAFE = ("run", "rounds", "workers", "device", "generations", "vae_refit_ratio", "noise", "param_noise",
                     "temperature", "dream_penalty", "dream_dropout", "dream_return_cap", "dream_common",
                     "dream_starts", "eval_noise", "mdrnn_recent_share", "mdrnn_recent_rounds",
                     "mdrnn_low_return_share", "mdrnn_low_return")
# The run's controller settings each round's C is evolved with (unless overridden here).
CONTROLLER_KEYS = ("temperature", "popsize", "rollouts", "sigma0", "generations", "max_steps", "eval_every",
                   "eval_episodes", "seed", "obs_mode", "augment", "augment_options", "dream_dropout", "dream_penalty",
                   "dream_starts", "dream_reward", "dream_return_cap", "dream_common")
COLUMNS = ("round", "real_episodes", "real_frames", "mdrnn_val_loss", "mdrnn_recent_share", "mdrnn_low_return_share",
           "vae_recon_ratio", "vae_refit", "generations", "noise", "param_noise", "temperature", "dream_penalty", "dream_dropout", "dream_return_cap",
           "dream_common", "dream_starts", "dream_score",
           "real_mean", "real_std", "real_n", "eval_noise", "real_noisy_mean", "real_noisy_std", "seconds_collect",
           "seconds_vae", "seconds_encode", "seconds_mdrnn", "seconds_controller", "seconds_evaluate", "mdrnn_id",
           "controller_id")


@dataclasses.dataclass
class Config:
    run: str = option("", "run folder with vae/, mdrnn/ and controller/ from the pipeline (required)")
    rounds: int = option(1, "rounds in all; rerun with more to continue")
    episodes: int = option(100, "real episodes collected per round")
    collector: Optional[str] = option(None, "a run folder whose C plays round 1's episodes instead of the run's C, "
                                            "e.g. a driver evolved in the real env: its real-env fitness then only "
                                            "shapes M's data, and C here still evolves only in the dream; later "
                                            "rounds collect with the last round's C")
    noise: float = option(0.1, "exploration: std of Gaussian noise added to continuous actions (then clipped to "
                               "the action space); discrete actions: probability of a uniformly random action; "
                               "may change between rounds, each round records its own")
    param_noise: float = option(0.0, "exploration in C's parameters: each collected episode is played by the last "
                                     "C plus this std of Gaussian noise (drawn per episode from its seed), as "
                                     "CMA-ES's candidates around C are, so M learns where the search goes")
    max_steps: Optional[int] = option(None, "cap on frames per collected episode (default: the original collection's)")
    generations: Optional[int] = option(None, "CMA-ES generations per round (default: the run's controller's)")
    popsize: Optional[int] = option(None, "CMA-ES population (default: the run's controller's)")
    rollouts: Optional[int] = option(None, "dream rollouts per candidate (default: the run's controller's)")
    temperature: Optional[float] = option(None, "dream temperature of the rounds' Cs (default: the run's "
                                                "controller's); may change between rounds, each round's C records "
                                                "its own")
    dream_penalty: Optional[float] = option(None, "pessimistic fitness dreams for the rounds' Cs (train-controller "
                                                  "--dream-penalty; default: the run's controller's); may change "
                                                  "between rounds, each round's C records its own")
    dream_dropout: Optional[float] = option(None, "dream ensemble by dropout masks in the rounds' Cs' fitness dreams "
                                                  "(train-controller --dream-dropout; default: the run's "
                                                  "controller's); may change between rounds, each round's C "
                                                  "records its own")
    dream_return_cap: Optional[float] = option(None, "the rounds' Cs' dreams end when their return reaches this "
                                                     "(train-controller --dream-return-cap; 0: no cap; default: "
                                                     "the run's controller's); may change between rounds, each "
                                                     "round's C records its own")
    dream_common: Optional[bool] = option(None, "the rounds' Cs' candidates all dream the same episodes "
                                                "(train-controller --dream-common; default: the run's "
                                                "controller's); may change between rounds, each round's C "
                                                "records its own")
    dream_starts: Optional[str] = option(None, "where the rounds' Cs' dreams start: first (a lap's first frame, "
                                               "h = 0) or any (any of 20,000 frames of the round's own "
                                               "collection, with M's state from the frames before it: the last "
                                               "C's real driving, its excursions off the road included; "
                                               "train-controller --dream-starts any --latents); default: the "
                                               "run's C's; may change between rounds",
                                         choices=("first", "any"))
    mdrnn_steps: Optional[int] = option(None, "M's gradient steps per round, from the last M (default: the run's M's)")
    mdrnn_recent_share: float = option(0.0, "share of each batch of M's refit drawn from the last "
                                            "--mdrnn-recent-rounds rounds' episodes (train-mdrnn --recent-share): "
                                            "the latest policy's driving, otherwise a sliver of the data once rounds "
                                            "pile up (0: every episode alike); may change between rounds")
    mdrnn_recent_rounds: int = option(1, "how many of the latest rounds --mdrnn-recent-share draws from")
    mdrnn_low_return_share: float = option(0.0, "share of the draws from the last rounds' episodes (all of them "
                                                "without --mdrnn-recent-share) given to those whose return is under "
                                                "--mdrnn-low-return (train-mdrnn --low-return-share): the laps C "
                                                "loses off the road, which its dreams must reach for C to learn to "
                                                "avoid them (0: none); may change between rounds")
    mdrnn_low_return: Optional[float] = option(None, "the return under which an episode counts for "
                                                     "--mdrnn-low-return-share")
    vae_refit_ratio: float = option(1.25, "fine-tune V when its reconstruction error on a round's frames exceeds "
                                          "this many times its error on the original frames")
    vae_epochs: Optional[int] = option(None, "epochs of a V refit (default: the run's V's)")
    vae_frames: int = option(0, "frames per epoch of a V refit, drawn afresh each epoch (0: all of them: V's own "
                                "training frames and every round's)")
    vae_check_frames: int = option(1000, "frames drawn from each side to measure V's reconstruction error")
    eval_episodes: int = option(20, "episodes scoring each round's C, in the reference env and in the dream")
    eval_max_steps: Optional[int] = option(None, "step limit of the real scoring episodes (default: the env's own)")
    eval_noise: float = option(0.0, "also score each round's C played with this action noise, on the same reference "
                                    "episodes (evaluate --noise: the stochastic policy around C; 0: C alone); may "
                                    "change between rounds")
    env_backend: str = option("auto", "collection env: fast (envpool, CarRacing), reference, or auto (fast where "
                                      "available); scores always use the reference env", choices=ENV_BACKENDS)
    workers: int = option(-1, "worker processes playing real episodes (-1: one per CPU core, 0: inline)")
    env_batch: int = option(8, "real episodes each worker plays at once (sets the grouping, so --workers changes "
                               "no result)")
    device: str = option("auto", "device of V, M and the dream: auto, cpu, cuda")


def _check(cfg: Config) -> None:
    if not cfg.run:
        raise WorldModelsError("--run (a run folder with vae/, mdrnn/ and controller/) is required")
    for name in ("rounds", "episodes", "eval_episodes", "env_batch", "vae_check_frames", "mdrnn_recent_rounds"):
        if getattr(cfg, name) < 1:
            raise WorldModelsError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("max_steps", "generations", "popsize", "rollouts", "mdrnn_steps", "vae_epochs", "eval_max_steps"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise WorldModelsError(f"{name} must be at least 1 (or none), got {getattr(cfg, name)}")
    if cfg.rounds >= 2**32 // ROUND_STRIDE or cfg.episodes > ROUND_STRIDE:
        raise WorldModelsError(f"at most {2**32 // ROUND_STRIDE - 1} rounds of at most {ROUND_STRIDE} episodes each "
                               "(each round has a block of collection seeds of its own)")
    if not 0 <= cfg.mdrnn_recent_share <= 1:
        raise WorldModelsError(f"mdrnn_recent_share must be in [0, 1], got {cfg.mdrnn_recent_share}")
    if not 0 <= cfg.mdrnn_low_return_share <= 1 or (cfg.mdrnn_low_return_share > 0 and cfg.mdrnn_low_return is None):
        raise WorldModelsError(f"mdrnn_low_return_share must be in [0, 1], and above 0 it needs --mdrnn-low-return, "
                               f"got {cfg.mdrnn_low_return_share}, {cfg.mdrnn_low_return}")
    if cfg.vae_frames < 0:
        raise WorldModelsError(f"vae_frames must be 0 (every frame) or positive, got {cfg.vae_frames}")
    if cfg.dream_penalty is not None and not cfg.dream_penalty >= 0:
        raise WorldModelsError(f"dream_penalty must be >= 0, got {cfg.dream_penalty}")
    if cfg.dream_dropout is not None and not 0 <= cfg.dream_dropout < 1:
        raise WorldModelsError(f"dream_dropout must be in [0, 1), got {cfg.dream_dropout}")
    if cfg.dream_return_cap is not None and not (math.isfinite(cfg.dream_return_cap) and cfg.dream_return_cap >= 0):
        raise WorldModelsError(f"dream_return_cap must be a positive cap or 0 (none), got {cfg.dream_return_cap}")
    if not (math.isfinite(cfg.eval_noise) and cfg.eval_noise >= 0):
        raise WorldModelsError(f"eval_noise must be >= 0, got {cfg.eval_noise}")
    if cfg.noise < 0 or cfg.param_noise < 0 or cfg.vae_refit_ratio <= 0:
        raise WorldModelsError(f"noise and param_noise must be >= 0 and vae_refit_ratio > 0, got {cfg.noise}, "
                               f"{cfg.param_noise}, {cfg.vae_refit_ratio}")


def _say(r: int, rounds: int, stage: str, what: str) -> None:
    tqdm.write(f"[iterate] round {r}/{rounds} {stage}: {what}")


def _saved_config(path: Path, kind: str) -> dict[str, Any]:
    from worldmodels.checkpoint import load_checkpoint

    return dict(load_checkpoint(path, kind=kind).get("config") or {})


def _stage_config(module: Any, saved: dict[str, Any], **overrides: Any) -> Any:
    """A stage's Config from the run's saved settings (keys the stage does not know dropped) and ``overrides``."""
    names = {f.name for f in dataclasses.fields(module.Config)}
    values = {k: v for k, v in saved.items() if k in names}
    values.update(overrides)
    return cfgmod.from_dict(module.Config, values, where=module.__name__.rsplit(".", 1)[-1])


def original_data(run: Path) -> list[dict[str, Any]]:
    """The data the run's M learned from: one entry (name, rollouts, latents) per latents file."""
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.data import open_latents

    state = load_checkpoint(run / "mdrnn", kind="mdrnn")
    data = state.get("data") or {}
    files = [f["path"] for f in data.get("files") or []] or [data.get("path") or state["config"].get("latents")]
    entries = []
    for i, path in enumerate(files):
        if not path or not Path(path).is_file():
            raise WorldModelsError(f"{run / 'mdrnn'} learned from {path}, which is not here; iterate refits M on it")
        with open_latents(path) as f:
            rollouts = f.attrs.get("rollouts")
        entries.append({"name": "original" if len(files) == 1 else f"original-{i}", "rollouts": rollouts,
                        "latents": str(Path(path).resolve())})
    return entries


def _collection_settings(data: list[dict[str, Any]]) -> tuple[int, int | None]:
    """(seed, max_steps) of the original collection, as its rollouts file records them (0, None if it is gone)."""
    from worldmodels.data import open_rollouts

    path = data[0]["rollouts"]
    if not path or not Path(path).is_file():
        return 0, None
    with open_rollouts(path) as f:
        max_steps = f.attrs.get("max_steps")
        return int(f.attrs.get("seed") or 0), int(max_steps) if max_steps and int(max_steps) > 0 else None


# ------------------------------------------------------------------------------------------------ stages
def collect(cfg: Config, r: int, prev: Path, out: Path, seed: int, max_steps: int | None,
            env_backend: Optional[str] = None, param_noise: Optional[float] = None,
            noise: Optional[float] = None, latents: Optional[Path] = None) -> dict[str, Any]:
    """Round ``r``'s episodes, played by the C of run folder ``prev`` with exploration noise (``noise`` and
    ``param_noise``: those the round recorded, else --noise and --param-noise), into ``out`` (resumes a killed
    collection: episode i always plays the same seed), and with ``latents``, their frames encoded by ``prev``'s
    V, which encoded them to play, into that file."""
    from worldmodels.envs import episode_seed
    from worldmodels.stages.collect import controller_episodes

    param_noise = cfg.param_noise if param_noise is None else param_noise
    noise = cfg.noise if noise is None else noise
    seeds = [episode_seed(seed, ROUND_STRIDE * r + i, "collect") for i in range(cfg.episodes)]
    summary = controller_episodes(prev, out, seeds, noise, max_steps, env_backend or cfg.env_backend,
                                  cfg.env_batch, cfg.workers, {"seed": seed, "round": r}, desc=f"collect round {r}",
                                  param_noise=param_noise, latents=latents)
    return {**summary, "seed": seed, "max_steps": max_steps, "noise": noise, "param_noise": param_noise}


def player(cfg: Config, run: Path, root: Path, r: int) -> Path:
    """The run folder whose C collects round ``r``: --collector's or the run's for round 1, else round r - 1's."""
    if r == 1:
        return Path(cfg.collector) if cfg.collector else run
    return root / f"round-{r - 1}"


def relocated(entries: list[dict[str, Any]], root: Path, original: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recorded data entries with their files found on this machine: a file inside an iterate folder is looked up
    under ``root`` (the rounds may have been copied from another machine or path), an original file where the
    run's M names it now."""
    def inside(path: str) -> Optional[re.Match]:
        return re.search(r"/iterate/(round-\d+/[^/]+(/[^/]+)?)$", path)

    def here(path: str) -> str:
        found = inside(path)
        return str(root / found.group(1)) if found else path

    now = {e["name"]: e for e in original}
    out = []
    for e in entries:
        if e["name"] in now and not inside(e["latents"]):
            out.append(dict(now[e["name"]]))
        else:
            rollouts = now[e["name"]]["rollouts"] if e["name"] in now else here(e["rollouts"])
            out.append({**e, "rollouts": rollouts, "latents": here(e["latents"])})
    return out


def restore(cfg: Config, run: Path, root: Path, entries: list[dict[str, Any]], seed: int,
            max_steps: int | None, current: Optional[Round] = None) -> list[dict[str, Any]]:
    """Rebuild the rounds' data files in ``entries`` that this machine lacks (rounds shipped as their records and
    checkpoints, without data): a round's rollouts are played again by the C that collected them, on the same
    seeds with the same noise (identical on the same CPU and env backend; elsewhere the same policy's episodes,
    which round.json notes by their frame count); latents are encoded again by the V of the round that wrote
    them (as they are played, where that is the player's V). Returns what was rebuilt."""
    from worldmodels.data import open_latents, open_rollouts
    from worldmodels.stages import encode

    def count(path: Optional[Path], opener: Callable) -> int:
        """Episodes in the file (-1: no file); a killed restore leaves a part."""
        if path is None or not path.is_file():
            return -1
        with opener(path) as f:
            return f.n_episodes

    def encoded(rollouts: Path, latents: Path) -> None:
        if count(latents, open_latents) < count(rollouts, open_rollouts):  # encode resumes a part
            # by the V of the round whose folder holds the file (a refit V's latents/)
            folder = latents.parent.parent if latents.parent.name == "latents" else latents.parent
            encode.run(encode.Config(data=str(rollouts), vae=str(folder / "vae"), out=str(latents),
                                     device=cfg.device))

    done = []
    for e in entries:
        rollouts, latents = Path(e["rollouts"]) if e["rollouts"] else None, Path(e["latents"])
        n_rollouts, n_latents = count(rollouts, open_rollouts), count(latents, open_latents)
        if not e["name"].startswith("round-"):
            # the original rollouts may be gone (V's error ratio then goes unmeasured) while its latents are here
            if n_latents < max(n_rollouts, 0):  # none, or a part
                if n_rollouts < 0:
                    raise WorldModelsError(f"{rollouts}, the run's original data, is not here to encode {latents} "
                                           "again; collect it again as it was collected first")
                encoded(rollouts, latents)
            continue
        r = int(e["name"].split("-", 1)[1])
        rnd = current if current is not None and current.r == r else Round(root, r)
        wanted = rnd.record["stages"].get("collect") or {}
        episodes = wanted.get("episodes", cfg.episodes)
        if n_rollouts == episodes and n_latents == n_rollouts:
            continue
        t0 = time.perf_counter()
        if n_rollouts < episodes:  # gone, or a killed restore's part: resumed
            by = player(cfg, run, root, r)
            if _saved_id(by / "controller", "controller") != wanted.get("controller_id"):
                raise WorldModelsError(f"{rollouts} must be played again and {by}'s C is not the one that collected it "
                                       f"({str(wanted.get('controller_id'))[:8]}); it cannot be played again")
            here = "is not here" if n_rollouts < 0 else f"holds {n_rollouts} of its episodes"
            _say(r, cfg.rounds, "restore", f"{rollouts} {here}: round {r}'s episodes are played again by "
                                           f"C {wanted['controller_id'][:8]} on the same seeds with the same noise")
            # The player's V encodes the frames as it plays them; that is the latents file's V unless this round
            # refit V (or the file lies in a refit V's latents/ folder).
            kept = (root / f"round-{r - 1}") if r > 1 else run  # the round's V unless it refit V
            own = (not (n_rollouts < 0 and n_latents >= 0) and latents.resolve() == (rnd.dir / "latents.h5").resolve()
                   and same_vae(rnd.dir / "vae" if (rnd.dir / "vae").exists() else kept / "vae", by / "vae"))
            # the settings the round recorded (rounds collected before it recorded them: the run's)
            collect(cfg, r, by, rollouts, wanted.get("seed", seed), wanted.get("max_steps", cfg.max_steps or max_steps),
                    wanted.get("env_backend"), wanted.get("param_noise", 0.0), wanted.get("noise"),
                    latents if own else None)
        with open_rollouts(rollouts) as f:
            frames = f.n_frames
        encoded(rollouts, latents)
        note = {"file": e["name"], "latents": str(latents), "frames": frames, "frames_recorded": wanted.get("frames"),
                "seconds": time.perf_counter() - t0}
        if frames != wanted.get("frames"):
            _say(r, cfg.rounds, "restore", f"round {r}'s episodes played again have {frames} frames, the first "
                                           f"collection had {wanted.get('frames')} (another CPU or env backend)")
        rnd.record.setdefault("restored", []).append(note)
        rnd.save()
        done.append(note)
    return done


@torch.no_grad()
def recon_error(vae: Any, src: Any, frames: int, seed: int) -> float:
    """V's mean reconstruction error (summed squared error per frame, z = mu: ``val/vae/recon``) on up to
    ``frames`` frames of ``src`` drawn without replacement."""
    from worldmodels.models.vae import frames_to_tensor

    device = next(vae.parameters()).device
    idx = np.sort(np.random.default_rng(seed).choice(src.n_frames, min(frames, src.n_frames), replace=False))
    total = 0.0
    for part in np.array_split(idx, math.ceil(len(idx) / 256)):
        x = frames_to_tensor(src.take("obs", part), device)
        total += float((vae.decode(vae.encode(x)[0]) - x).pow(2).flatten(1).sum(1).sum())
    return total / len(idx)


def vae_ratio(cfg: Config, vae_dir: Path, rollouts: Path, original: list[dict[str, Any]]) -> dict[str, Any]:
    """V's reconstruction error on a round's frames over its error on the original frames (None when the
    original rollouts are gone)."""
    from worldmodels.data import ROLLOUTS, EpisodeFiles, open_rollouts
    from worldmodels.models.vae import load_vae
    from worldmodels.utils import pick_device

    paths = [e["rollouts"] for e in original]
    if not all(p and Path(p).is_file() for p in paths):
        return {"ratio": None, "new_error": None, "original_error": None}
    vae = load_vae(vae_dir, pick_device(cfg.device))
    with open_rollouts(rollouts) as new, EpisodeFiles(paths, ROLLOUTS) as old:
        new_error = recon_error(vae, new, cfg.vae_check_frames, seed=1)
        old_error = recon_error(vae, old, cfg.vae_check_frames, seed=0)
    return {"ratio": new_error / old_error, "new_error": new_error, "original_error": old_error}


def link(target: Path, at: Path) -> None:
    """``at`` -> ``target`` as a relative symlink (replacing an older link), so the run folder can move."""
    if at.is_symlink():
        at.unlink()
    at.symlink_to(os.path.relpath(target.resolve(), at.parent.resolve()), target_is_directory=True)


# ------------------------------------------------------------------------------------------------ the loop
class Round:
    """One round's folder and its record (round.json): what each finished stage found."""

    def __init__(self, root: Path, r: int):
        self.r, self.dir = r, root / f"round-{r}"
        self.path = self.dir / "round.json"
        self.record: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {"round": r}
        self.record.setdefault("stages", {})

    @property
    def finished(self) -> bool:
        return "row" in self.record

    def stage(self, name: str, rounds: int, fn: Callable[[], dict[str, Any]],
              say: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
        """Run ``fn`` unless this stage finished before; record its result and seconds; one line either way."""
        done = self.record["stages"].get(name)
        if done is not None:
            _say(self.r, rounds, name, "finished before, kept")
            return done
        t0 = time.perf_counter()
        result = fn()
        result["seconds"] = time.perf_counter() - t0
        self.record["stages"][name] = result
        self.save()
        _say(self.r, rounds, name, f"{say(result)} ({result['seconds']:.1f}s)")
        return result

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.record, indent=2) + "\n")


def _check_config(cfg: Config, path: Path) -> None:
    """Refuse other settings than those the iteration was started with (except CONTINUATION_SAFE)."""
    new = cfgmod.to_dict(cfg)
    if path.is_file():
        saved = cfgmod.read_yaml(path)
        defaults = cfgmod.to_dict(Config())  # a setting added since the rounds began: they ran at its default
        changed = [k for k in new if k not in CONTINUATION_SAFE and saved.get(k, defaults[k]) != new[k]]
        _record_noise(path.parent, saved.get("noise", defaults["noise"]))
        if changed:
            raise WorldModelsError(f"{path.parent} was made with " + "; ".join(
                f"{k}={saved.get(k)!r}, not {new[k]!r}" for k in changed)
                + "; rerun with the same settings (only " + ", ".join(
                    "--" + k.replace("_", "-") for k in CONTINUATION_SAFE if k != "run") + " may change)")
    cfgmod.save(cfg, path)


def _record_noise(root: Path, noise: float) -> None:
    """Rounds collected before their records held the action noise ran at the iteration's one (it could not change
    then): write it into them before --noise may change, so a replay plays each round at its own."""
    for path in root.glob("round-*/round.json"):
        rnd = Round(root, int(path.parent.name.split("-", 1)[1]))
        collected = rnd.record["stages"].get("collect")
        if collected is not None and "noise" not in collected:
            collected["noise"] = noise
            rnd.save()


def _check_base(run_dir: Path, root: Path) -> None:
    """Refuse to continue rounds built on another V, M or C than the run holds now: round 1 was collected by the
    run's C and refits its M, so a retrained or further-trained one would mix two iterations."""
    from worldmodels.checkpoint import load_checkpoint

    now = {}
    for part in ("vae", "mdrnn", "controller"):
        state = load_checkpoint(run_dir / part, kind=part)
        now[part] = [state["id"]] + [state[k] for k in ("epoch", "step", "generation") if k in state]
    path = root / "base.json"
    if not path.is_file():
        atomic_write_text(path, json.dumps(now) + "\n")
        return
    changed = [part for part, mark in json.loads(path.read_text()).items() if now.get(part) != mark]
    if changed:
        raise WorldModelsError(f"{run_dir}'s {' and '.join(changed)} changed since its rounds began ({path} records "
                               f"the ones they started from); move {root} away to iterate from the new ones")


def _frames(entries: list[dict[str, Any]]) -> tuple[int, int]:
    """Real episodes and frames in these data entries (counted in their latents files)."""
    from worldmodels.data import open_latents

    episodes = frames = 0
    for e in entries:
        with open_latents(e["latents"]) as f:
            episodes, frames = episodes + f.n_episodes, frames + f.n_frames
    return episodes, frames


def run_round(cfg: Config, run: Path, rnd: Round, prev: Path, data: list[dict[str, Any]],
              original: list[dict[str, Any]]) -> dict[str, Any]:
    """All stages of one round (each skipped if it finished before); returns the round's row."""
    from worldmodels.stages import encode, evaluate, train_controller, train_mdrnn, train_vae

    r, rounds, out = rnd.r, cfg.rounds, rnd.dir
    out.mkdir(parents=True, exist_ok=True)
    seed, max_steps = _collection_settings(original)
    rollouts, latents = out / "rollouts.h5", out / "latents.h5"
    # The data so far and this round's files from its finished steps, where this machine lacks them (restore).
    # Once encoded, the round's record lists them all.
    needed = rnd.record["stages"].get("encode", {}).get("data") or data + (
        [{"name": f"round-{r}", "rollouts": str(rollouts), "latents": str(latents)}]
        if "collect" in rnd.record["stages"] else [])
    restore(cfg, run, out.parent, relocated(needed, out.parent, original), seed, max_steps, rnd)
    by = player(cfg, run, out.parent, r)
    # the player's V encodes the frames as it plays them: the round's V unless it refits V (or --collector plays)
    rnd.stage("collect", rounds, lambda: collect(cfg, r, by, rollouts, seed, cfg.max_steps or max_steps,
                                                 latents=latents if same_vae(prev / "vae", by / "vae") else None),
              lambda s: f"{s['new_episodes']} episodes played, {s['episodes']} episodes ({s['frames']} frames) "
                        f"by controller {s['controller_id'][:8]} with noise {s.get('noise', cfg.noise)}"
                        + (f", parameter noise {s['param_noise']}" if s.get("param_noise") else ""))

    def vae_stage() -> dict[str, Any]:
        check = vae_ratio(cfg, prev / "vae", rollouts, original)
        refit = check["ratio"] is not None and check["ratio"] > cfg.vae_refit_ratio
        check["refit_ratio"] = cfg.vae_refit_ratio
        if not refit:
            if (out / "vae").exists() and not (out / "vae").is_symlink():
                raise WorldModelsError(f"{out / 'vae'} holds a V refit begun with a lower --vae-refit-ratio; move "
                                       "it away to keep the last V in this round, or rerun with the lower ratio")
            link(prev / "vae", out / "vae")
            return {**check, "refit": False}
        if (out / "vae").is_symlink():
            (out / "vae").unlink()
        from worldmodels.checkpoint import load_checkpoint

        base = load_checkpoint(run / "vae", kind="vae")
        saved = dict(base.get("config") or {})
        # V keeps what it learned from its own training frames (the run's data where those are gone) and learns
        # every round's.
        own = [str(f["path"]) for f in (base.get("data") or {}).get("files") or []]
        if not own or not all(Path(p).is_file() for p in own):
            own = [e["rollouts"] for e in original]
        paths = own + [e["rollouts"] for e in data if e["name"].startswith("round-")] + [str(rollouts.resolve())]
        summary = train_vae.run(_stage_config(
            train_vae, saved, data=",".join(paths), out=str(out / "vae"), init=str((prev / "vae").resolve()),
            epochs=cfg.vae_epochs or saved.get("epochs", 10), epoch_frames=cfg.vae_frames, device=cfg.device,
            fresh=False))
        return {**check, "refit": True, "vae_id": summary["id"]}

    vae = rnd.stage("vae", rounds, vae_stage,
                    lambda s: ("V's error ratio unknown (the original rollouts are gone); V kept" if s["ratio"] is None
                               else f"V's error on the new frames is {s['ratio']:.3f}x its error on the original "
                                    f"frames (refit above {s['refit_ratio']:g}x); V "
                                    + ("refit on its own frames and the rounds'" if s["refit"] else "kept")))

    def encode_stage() -> dict[str, Any]:
        todo = [(rollouts, latents)]
        if vae["refit"]:  # a new V: every earlier file's latents are encoded again with it
            todo = [(Path(e["rollouts"]), out / "latents" / f"{e['name']}.h5") for e in data] + todo
            (out / "latents").mkdir(exist_ok=True)
        if latents.is_file():
            from worldmodels.checkpoint import checkpoint_file
            from worldmodels.data import open_latents

            with open_latents(latents) as f:
                replaced = f.attrs.get("vae_checkpoint") != str(checkpoint_file(out / "vae").resolve())
            if replaced:  # the collection's, by the V this round refit
                latents.unlink()
        for src, dst in todo:
            encode.run(encode.Config(data=str(src), vae=str(out / "vae"), out=str(dst), device=cfg.device))
        entries = [{**e, "latents": str((out / "latents" / f"{e['name']}.h5").resolve())} if vae["refit"] else e
                   for e in data]
        return {"data": entries + [{"name": f"round-{r}", "rollouts": str(rollouts.resolve()),
                                    "latents": str(latents.resolve())}], "files": len(todo)}

    enc = rnd.stage("encode", rounds, encode_stage, lambda s: f"{s['files']} file(s) encoded with the round's V")
    enc = {**enc, "data": relocated(enc["data"], out.parent, original)}

    def mdrnn_stage() -> dict[str, Any]:
        saved = _saved_config(run / "mdrnn", "mdrnn")
        recent_rounds = min(cfg.mdrnn_recent_rounds, r)  # round r has r round files
        summary = train_mdrnn.run(_stage_config(
            train_mdrnn, saved, latents=",".join(e["latents"] for e in enc["data"]), out=str(out / "mdrnn"),
            vae=str(out / "vae"), init=str((prev / "mdrnn").resolve()), steps=cfg.mdrnn_steps or saved.get("steps"),
            recent_share=cfg.mdrnn_recent_share, recent_files=recent_rounds,
            low_return_share=cfg.mdrnn_low_return_share, low_return=cfg.mdrnn_low_return, device=cfg.device,
            fresh=False))
        return {"id": summary["id"], "val_loss": summary["metrics"].get("val/mdrnn/loss"),
                "loss": summary["metrics"].get("mdrnn/loss"), "recent_share": cfg.mdrnn_recent_share,
                "recent_rounds": recent_rounds, "low_return_share": cfg.mdrnn_low_return_share,
                "low_return": cfg.mdrnn_low_return}

    mdn = rnd.stage("mdrnn", rounds, mdrnn_stage,
                    lambda s: f"M {s['id'][:8]} refit on {len(enc['data'])} latents files, warm-started; "
                              + ("no validation episodes" if s["val_loss"] is None else
                                 f"validation loss {s['val_loss']:.4g}")
                              + (f"; {s['recent_share']:g} of each batch from the last {s['recent_rounds']} round(s)"
                                 if s.get("recent_share") else "")
                              + (f"; {s['low_return_share']:g} of those draws to episodes returning under "
                                 f"{s['low_return']:g}" if s.get("low_return_share") else ""))

    def controller_stage() -> dict[str, Any]:
        saved = _saved_config(run / "controller", "controller")
        own = {k: saved[k] for k in CONTROLLER_KEYS if k in saved}
        overrides = {k: getattr(cfg, k) for k in ("generations", "popsize", "rollouts", "temperature",
                                                  "dream_penalty", "dream_dropout", "dream_common",
                                                  "dream_starts") if getattr(cfg, k) is not None}
        if cfg.dream_starts == "any":  # the round's own episodes: where the last C drives, and fails
            overrides["latents"] = str(out / "latents.h5")
        if cfg.dream_return_cap is not None:
            overrides["dream_return_cap"] = cfg.dream_return_cap or None
        settings = _stage_config(train_controller, {**own, **overrides}, run=str(out), where="dream",
                                 device=cfg.device, workers=0, init=str((prev / "controller").resolve()), fresh=False)
        summary = train_controller.run(settings)
        return {"generation": summary["generation"], "best_fitness": summary["best_fitness"],
                "id": _saved_id(out / "controller", "controller"), "dream_penalty": settings.dream_penalty,
                "dream_dropout": settings.dream_dropout, "dream_return_cap": settings.dream_return_cap,
                "dream_common": settings.dream_common, "dream_starts": settings.dream_starts,
                "temperature": settings.temperature}

    ctl = rnd.stage("controller", rounds, controller_stage,
                    lambda s: f"C {s['id'][:8]} evolved in the dream for {s['generation']} generations from the "
                              f"last C's mean, best fitness {s['best_fitness']:.2f}"
                              + (f" (dream penalty {s['dream_penalty']:g})" if s.get("dream_penalty") else "")
                              + (f" (dream dropout {s['dream_dropout']:g})" if s.get("dream_dropout") else "")
                              + (f" (dream return cap {s['dream_return_cap']:g})" if s.get("dream_return_cap") else "")
                              + (" (common dreams)" if s.get("dream_common") else "")
                              + (" (dreams from any frame of the round's episodes)"
                                 if s.get("dream_starts") == "any" else ""))

    def evaluate_stage() -> dict[str, Any]:
        on_reference = dict(run=str(out), episodes=cfg.eval_episodes, workers=cfg.workers,
                            max_steps=cfg.eval_max_steps, env_backend="reference", env_batch=cfg.env_batch)
        real = evaluate.run(evaluate.Config(**on_reference))
        dream = evaluate.run(evaluate.Config(run=str(out), where="dream", episodes=cfg.eval_episodes))
        scores = {"real": {k: real[k] for k in ("mean", "std", "episodes")},
                  "dream": {k: dream[k] for k in ("mean", "std", "episodes", "temperature")}}
        if cfg.eval_noise:  # the same episodes, played by the noisy policy around C
            noisy = evaluate.run(evaluate.Config(**on_reference, noise=cfg.eval_noise, gif=False))
            scores["real_noisy"] = {**{k: noisy[k] for k in ("mean", "std", "episodes")}, "noise": cfg.eval_noise}
        return scores

    ev = rnd.stage("evaluate", rounds, evaluate_stage,
                   lambda s: f"real {s['real']['mean']:.2f} ± {s['real']['std']:.2f} ({s['real']['episodes']} "
                             f"reference episodes), dream {s['dream']['mean']:.2f}"
                             + (f", real with action noise {s['real_noisy']['noise']:g}: {s['real_noisy']['mean']:.2f}"
                                if s.get("real_noisy") else ""))
    episodes, frames = _frames(enc["data"])
    seconds = {name: rnd.record["stages"][name]["seconds"] for name in rnd.record["stages"]}
    return {"round": r, "real_episodes": episodes, "real_frames": frames, "mdrnn_val_loss": mdn["val_loss"],
            "vae_recon_ratio": vae["ratio"], "vae_refit": vae["refit"], "dream_score": ev["dream"]["mean"],
            "real_mean": ev["real"]["mean"], "real_std": ev["real"]["std"], "real_n": ev["real"]["episodes"],
            **({"eval_noise": ev["real_noisy"]["noise"], "real_noisy_mean": ev["real_noisy"]["mean"],
                "real_noisy_std": ev["real_noisy"]["std"]} if ev.get("real_noisy") else {}),
            **{f"seconds_{name}": s for name, s in seconds.items()}, "mdrnn_id": mdn["id"], "controller_id": ctl["id"]}


def _saved_id(path: Path, kind: str) -> str:
    from worldmodels.checkpoint import load_checkpoint

    return str(load_checkpoint(path, kind=kind)["id"])


def same_vae(a: Path, b: Path) -> bool:
    """Whether V folders ``a`` and ``b`` hold the same checkpoint file (a latents file names V's by its path)."""
    from worldmodels.checkpoint import checkpoint_file

    return checkpoint_file(a).resolve() == checkpoint_file(b).resolve()


def write_rows(root: Path, rows: list[dict[str, Any]]) -> None:
    """rounds.csv, rounds.json and rounds.png, rewritten whole (atomically) after every round."""
    from worldmodels import plots

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "rounds.csv", buf.getvalue())
    atomic_write_text(root / "rounds.json", json.dumps(rows, indent=2) + "\n")
    plots.iterate_rounds(rows, root / "rounds.png", "worldmodels iterate: C's dream and real scores per round")


def run(cfg: Config) -> dict[str, Any]:
    """Run (or continue) rounds 1..``cfg.rounds``; returns the rows of rounds.csv and its path."""
    _check(cfg)
    run_dir = Path(cfg.run).resolve()
    for folder in (run_dir, Path(cfg.collector)) if cfg.collector else (run_dir,):
        for part in ("vae", "mdrnn", "controller"):
            if not (folder / part / "checkpoint.pt").is_file():
                raise WorldModelsError(f"{folder} has no {part}/checkpoint.pt; run the pipeline (or its stages) first")
    if cfg.collector:
        from worldmodels.checkpoint import load_checkpoint

        envs = [load_checkpoint(folder / "controller", kind="controller")["identity"].get("env")
                for folder in (run_dir, Path(cfg.collector))]
        if envs[0] != envs[1]:
            raise WorldModelsError(f"--collector {cfg.collector} plays {envs[1]}, not the run's {envs[0]}")
    root = run_dir / "iterate"
    root.mkdir(exist_ok=True)
    with exclusive_lock(root / "config.yaml", "iterate"):
        _check_config(cfg, root / "config.yaml")
        _check_base(run_dir, root)
        original = original_data(run_dir)
        run_ctl = _saved_config(run_dir / "controller", "controller")
        run_dropout = float(run_ctl.get("dream_dropout") or 0.0)
        prev, data, rows = run_dir, original, []
        for r in range(1, cfg.rounds + 1):
            rnd = Round(root, r)
            vae = rnd.record["stages"].get("vae")
            if vae is not None and not vae["refit"] and not (rnd.dir / "vae").exists():
                link(prev / "vae", rnd.dir / "vae")  # rounds shipped without their links to the V they kept
            if rnd.finished:
                _say(r, cfg.rounds, "all stages", "finished before, kept")
            else:
                rnd.record["row"] = run_round(cfg, run_dir, rnd, prev, data, original)
                rnd.save()
            # C's generations, dream penalty and dropout and the collection's parameter noise come from their
            # stages' records (they may differ between rounds: --generations, --dream-penalty, --dream-dropout,
            # --dream-return-cap, --param-noise); rounds from before --dream-dropout and --dream-return-cap dreamt with
            # the run's C's
            ctl = rnd.record["stages"]["controller"]
            rows.append({**rnd.record["row"], "generations": ctl["generation"],
                         "dream_penalty": ctl.get("dream_penalty", 0.0),
                         "dream_dropout": ctl.get("dream_dropout", run_dropout),
                         "dream_return_cap": ctl.get("dream_return_cap", run_ctl.get("dream_return_cap")),
                         "dream_common": ctl.get("dream_common", bool(run_ctl.get("dream_common"))),
                         "dream_starts": ctl.get("dream_starts", run_ctl.get("dream_starts") or "first"),
                         # C's score dream plays at C's own temperature
                         "temperature": ctl.get("temperature",
                                                rnd.record["stages"]["evaluate"]["dream"]["temperature"]),
                         "noise": rnd.record["stages"]["collect"].get("noise", cfg.noise),
                         "param_noise": rnd.record["stages"]["collect"].get("param_noise", 0.0),
                         "mdrnn_recent_share": rnd.record["stages"]["mdrnn"].get("recent_share", 0.0),
                         "mdrnn_low_return_share": rnd.record["stages"]["mdrnn"].get("low_return_share", 0.0)})
            write_rows(root, rows)
            prev, data = rnd.dir, relocated(rnd.record["stages"]["encode"]["data"], root, original)
    return {"rows": rows, "path": str(root / "rounds.csv")}
