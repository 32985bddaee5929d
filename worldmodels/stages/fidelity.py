"""Dream fidelity: how well M's dream ranks controllers, measured against the real env.

A set of controllers of the run's shape: the run's C (its CMA-ES mean, "mean"), --perturbations around it
(mean + s * N(0, I), s cycling through --scales, "p00", "p01", ...) and any --controllers (controller or run
folders, named by their path). Each plays --dream-episodes in M's dream, one batched dream per setting (every
--temperatures tau x every --dream-dropout p x the plain M, and also the ensemble with --dream-models when
given; every --dream-penalty, the pessimistic dream's weight on M's reward spread, by default 0 and C's own; and
every --dream-starts x --dream-reward, by default the dream C was trained in; every --dream-return-cap, by
default none and C's own), and --real-episodes in
the real env with the run's V and M. A dream from a first frame is a whole episode and plays as long as a real one
(--max-steps); a dream from any frame is a piece of one, and plays --dream-max-steps (default: C's training
horizon), so its return is the fitness C was evolved on. Dreams start from the frames C's training dreams
started from, or from --latents (e.g. C's own real episodes, for dreams branching off on-policy states). Every
controller gets the same dream episodes' random draws and the same env seeds (common random numbers), so their
differences are theirs.
Per setting: the Spearman rank correlation and the Pearson correlation of dream vs real mean returns over the
controllers, and the mean dream-minus-real gap. The run's C's real episodes are also fed to M teacher-forced
from their first frame (z = V's mu), which measures the reward head on real on-policy data (per-step MSE,
predicted minus real return) and the done head (recall at real deaths, false alarms, where it would end the
episode): the dream's return is M's reward summed, or for Doom its survival until the done head fires.

Seeds: real episodes play "train"-purpose env seeds from episode index 2 * 10**7 on (train-controller's
fitness and score episodes start at 0 and 10**7), ProcGen the collection's training levels, never evaluate's
"eval" seeds; dreams use dream_seed(seed, 0, 3), a purpose no training or evaluation dream uses.
So tau and the dream variations are chosen here without touching the tracks they are reported on.

Writes <run>/fidelity/: fidelity.csv (a row per controller and setting), summary.json (per setting:
spearman, pearson, gap; the heads' errors; controllers, seeds and purposes), scatter.png (dream vs real per
setting) and real_episodes.jsonl (every real episode played). A rerun reuses the real episodes of
controllers whose parameters are unchanged (per controller and episode, same env settings) and plays only
the missing ones; dreams are recomputed every time.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from tqdm import tqdm

from worldmodels.agent import DREAM_REWARDS, DREAM_STARTS
from worldmodels.config import option
from worldmodels.errors import WorldModelsError
from worldmodels.utils import atomic_write_text

CSV_COLUMNS = ("controller", "scale", "tau", "dropout", "models", "starts", "reward", "penalty", "return_cap",
               "dream_mean",
               "dream_std", "dream_n", "real_mean", "real_std", "real_n", "uncertainty")
# Real episodes: train-purpose episode indices from here on; train-controller's fitness uses offset 0 and its
# mean-solution scores 10**7 (generations x episodes stays far below 10**7 for both).
REAL_OFFSET = 2 * 10**7
# Purpose of train_controller.dream_seed: fitness dreams use 0, mean-solution scores 1, evaluate --where dream 2.
DREAM_PURPOSE = 3
ENCODE_BATCH = 256


@dataclasses.dataclass
class Config:
    run: str = option("runs/default", "run folder with vae/, mdrnn/ and controller/")
    perturbations: int = option(12, "controllers mean + s * N(0, I) around the run's C (its CMA-ES mean)")
    scales: list[float] = option(factory=lambda: [0.05, 0.1, 0.2, 0.4],
                                 help="perturbation sizes s, cycled through: p00 gets the first, p01 the second, ...")
    controllers: list[str] = option(factory=list, help="more controllers to compare (controller or run folders, "
                                                       "or checkpoint.pt; the run's C's shape), their mean parameters")
    temperatures: list[float] = option(factory=list, help="dream temperatures tau (default: C's training one)")
    dream_dropout: list[float] = option(factory=lambda: [0.0], help="dream-ensemble dropout rates to try (0: plain M)")
    dream_models: list[str] = option(factory=list, help="more M folders: every setting is also scored with the "
                                                        "ensemble of M and these (as train-controller --dream-models)")
    dream_penalty: list[float] = option(factory=list, help="pessimistic dreams to try: the weight on M's reward "
                                                           "spread over dropout masks (default: 0 and C's own)")
    dream_return_cap: list[float] = option(factory=list, help="return caps to try: a dream ends when its return "
                                                              "reaches the cap (0: no cap; default: 0 and C's own)")
    dream_starts: list[str] = option(factory=list, help="where dreams start, first and/or any (default: where C's "
                                                        "training dreams started)")
    dream_reward: list[str] = option(factory=list, help="what dreams pay: auto, predicted, nearest, calibrated, "
                                                        "survival (default: what C's training dreams paid)")
    latents: Optional[str] = option(None, "latents file(s), comma-separated, whose frames start the dreams, e.g. "
                                          "C's own real episodes for dreams from any frame of them (default: "
                                          "those C's training dreams started from)")
    dream_episodes: int = option(64, "dream episodes per controller and setting")
    real_episodes: int = option(16, "real-env episodes per controller")
    max_steps: Optional[int] = option(None, "real episode step limit, and that of dreams from first frames (default: "
                                            "C's training one; the env's own for a C trained on dreams from any frame)")
    dream_max_steps: Optional[int] = option(None, "step limit of dreams from any frame (default: C's training one)")
    seed: int = option(0, "seed of the perturbations, the dream and the real env seeds")
    workers: int = option(-1, "worker processes for real episodes (-1: one per CPU core, 0: inline)")
    env_backend: Literal["reference", "fast", "auto"] = option(
        "reference", "real env: reference (what results are reported on), fast (envpool), or auto")
    env_batch: int = option(8, "real episodes each worker plays at once (batched V/M/C)")
    device: str = option("auto", "dream and M's teacher forcing device: auto, cpu, cuda")


@dataclasses.dataclass
class Candidate:
    """One controller of the set: its name, flat parameters, and where it came from."""

    name: str
    params: np.ndarray
    scale: float | None  # the perturbation size (0 for the run's C, None for a given controller)
    source: str

    @property
    def digest(self) -> str:
        return hashlib.sha1(np.asarray(self.params, dtype=np.float64).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ statistics
def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing the mean of the ranks they span (scipy's rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(x[order])) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    for lo, hi in zip(starts, ends):
        ranks[order[lo:hi]] = (lo + 1 + hi) / 2
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; nan where either side is constant (no ranking to agree with)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    norm = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / norm) if norm > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation with average ranks for ties (scipy.stats.spearmanr's value)."""
    return pearson(average_ranks(x), average_ranks(y))


# ------------------------------------------------------------------------------------------------ M on real data
@torch.no_grad()
def episode_head_stats(vae: torch.nn.Module, mdrnn: torch.nn.Module, action_desc: dict[str, Any],
                       episode: dict[str, Any]) -> dict[str, float]:
    """M teacher-forced on one recorded real episode from its first frame, with z = V's mu of each frame (as
    ``encode`` stores it and train-mdrnn's done-head report reads it), against what really happened.

    ``episode``: :meth:`worldmodels.play.BatchAgent.play`'s result of a recorded member (``frames`` (T + 1, ...),
    ``actions``, ``rewards``, ``terminated`` (T,)). Returns sums (so episodes pool) and the episode's
    ``predicted_end``: the steps the dream would have played before its done head fired (T if it never does).
    """
    from worldmodels.stages.encode import encode_frames
    from worldmodels.stages.train_mdrnn import actions_to_input, done_head_counts

    steps = len(episode["rewards"])
    mu, _ = encode_frames(vae, np.asarray(episode["frames"][:steps]), ENCODE_BATCH)  # the frames actions followed
    device = next(mdrnn.parameters()).device
    z = torch.as_tensor(mu, device=device)[None]
    a = torch.as_tensor(actions_to_input(np.asarray(episode["actions"]), action_desc), device=device)[None]
    out, _ = mdrnn(z, a)
    predicted = out.reward[0].double().cpu().numpy()
    real = np.asarray(episode["rewards"], dtype=np.float64)
    done = torch.as_tensor(np.asarray(episode["terminated"]), device=device)[None]
    hits, deaths, false, other = done_head_counts(out.done_logit, done.float(), torch.ones_like(done)).tolist()
    fired = np.flatnonzero(out.done_logit[0].cpu().numpy() > 0)
    return {"steps": steps, "reward_sq": float(((predicted - real) ** 2).sum()),
            "predicted_return": float(predicted.sum()), "return": float(real.sum()), "hits": hits,
            "deaths": deaths, "false_alarms": false, "other_steps": other,
            "predicted_end": int(fired[0]) + 1 if len(fired) else steps}


def head_summary(stats: list[dict[str, float]]) -> dict[str, Any]:
    """Pools :func:`episode_head_stats` of several episodes: per-step reward MSE, mean predicted minus real
    return, done-head recall at real deaths and false-alarm rate, real length vs the predicted end."""
    steps = sum(s["steps"] for s in stats)
    deaths, other = sum(s["deaths"] for s in stats), sum(s["other_steps"] for s in stats)
    return {"episodes": len(stats), "steps": int(steps),
            "reward_mse": sum(s["reward_sq"] for s in stats) / steps,
            "predicted_return": float(np.mean([s["predicted_return"] for s in stats])),
            "real_return": float(np.mean([s["return"] for s in stats])),
            "return_gap": float(np.mean([s["predicted_return"] - s["return"] for s in stats])),
            "deaths": int(deaths),
            "done_recall": sum(s["hits"] for s in stats) / deaths if deaths else None,
            "done_false_alarm": sum(s["false_alarms"] for s in stats) / other if other else None,
            "real_length": float(np.mean([s["steps"] for s in stats])),
            "predicted_end": float(np.mean([s["predicted_end"] for s in stats])),
            "end_gap": float(np.mean([s["predicted_end"] - s["steps"] for s in stats]))}


# ------------------------------------------------------------------------------------------------ controllers
def load_controller(path: str, world: Any) -> np.ndarray:
    """The mean parameters of the controller at ``path`` (a run folder, its controller folder or checkpoint.pt);
    a one-line error unless it has the run's C's shape."""
    from worldmodels.checkpoint import load_checkpoint

    where = Path(path) / "controller" if (Path(path) / "controller").is_dir() else Path(path)
    state = load_checkpoint(where, kind="controller")
    params = np.asarray(state.get("mean", []), dtype=np.float64)
    obs_mode = (state.get("identity") or {}).get("obs_mode", world.obs_mode)
    if params.shape != (world.n_params,) or obs_mode != world.obs_mode:
        raise WorldModelsError(f"--controllers {path}: its controller has {params.size} parameters on {obs_mode} "
                               f"inputs, the run's C {world.n_params} on {world.obs_mode}; only controllers of the "
                               "same shape (V and M sizes, obs_mode, env) can be compared")
    return params


def candidates(cfg: Config, mean: np.ndarray, world: Any) -> list[Candidate]:
    """The run's C, its perturbations (p_i from its own seed, so p_i stays p_i when more are asked) and
    the given controllers."""
    out = [Candidate("mean", mean, 0.0, "the run's C (CMA-ES mean)")]
    for i in range(cfg.perturbations):
        scale = float(cfg.scales[i % len(cfg.scales)])
        noise = np.random.default_rng([cfg.seed, i]).standard_normal(len(mean))
        out.append(Candidate(f"p{i:02d}", mean + scale * noise, scale, f"mean + {scale:g} * N(0, I)"))
    out += [Candidate(path, load_controller(path, world), None, path) for path in cfg.controllers]
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise WorldModelsError(f"--controllers names a controller twice: {', '.join(cfg.controllers)}")
    return out


# ------------------------------------------------------------------------------------------------ real episodes
def _read_real(path: Path, key: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Real episodes a run with the same env settings already played, by (controller, digest, episode)."""
    from worldmodels.stages.evaluate import progress_rows

    return {(row["controller"], row["digest"], row["episode"]): row for row in progress_rows(path, key)}


def play_real(cfg: Config, world: Any, cands: list[Candidate], seeds: list[int], max_steps: int | None, backend: str,
              path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Every controller on every seed in the real env (members controller-major, cut into env_batch batches
    from the full list, so a rerun groups as the first run did), skipping episodes ``path`` already holds.
    The run's C's episodes are recorded and fed to M (:func:`episode_head_stats`) as they arrive."""
    from worldmodels.parallel import WorkerPool
    from worldmodels.play import batch_tasks, init_worker, worker_batch
    from worldmodels.stages.train_controller import n_workers

    key = {"env": world.env, "vae_id": world.vae_id, "mdrnn_id": world.mdrnn_id, "obs_mode": world.obs_mode,
           "env_backend": backend, "env_batch": cfg.env_batch, "max_steps": max_steps, "seed": cfg.seed}
    done = _read_real(path, key)
    members = [(c, e) for c in cands for e in range(len(seeds))]
    todo = [(c.name, c.digest, e) not in done for c, e in members]
    tasks, task_members = [], []
    for start in range(0, len(members), cfg.env_batch):
        batch = [members[i] for i in range(start, min(start + cfg.env_batch, len(members))) if todo[i]]
        if batch:
            tasks += batch_tasks(np.stack([c.params for c, _ in batch]), [seeds[e] for _, e in batch], len(batch),
                                 [c.name == "mean" for c, _ in batch])
            task_members.append(batch)
    if not done:
        path.write_text(json.dumps({"key": key}) + "\n")
    if not tasks:
        return done
    spec = world.worker_spec(max_steps, levels="train", env_backend=backend)
    with WorkerPool(n_workers(cfg.workers), init_worker, (spec,), what="fidelity real episodes") as pool, \
            open(path, "a") as log, \
            tqdm(total=len(members), initial=len(members) - sum(todo), desc="real", unit="episode") as bar:
        for j, results in pool.imap(worker_batch, tasks):
            for (c, e), result in zip(task_members[j], results):
                head = (episode_head_stats(world.vae, world.mdrnn, world.action_desc, result)
                        if result["frames"] is not None else None)
                row = {"controller": c.name, "digest": c.digest, "episode": e, "seed": seeds[e],
                       "level": result["level"], "return": result["return"], "length": result["length"], "head": head}
                done[(c.name, c.digest, e)] = row
                log.write(json.dumps(row) + "\n")
            log.flush()
            bar.update(len(results))
    return done


# ------------------------------------------------------------------------------------------------ the stage
def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _setting_label(s: dict[str, Any]) -> str:
    return (f"tau {s['tau']:g}, dropout {s['dropout']:g}, {s['models']} M" + ("s" if s["models"] > 1 else "")
            + f", {s['starts']} starts, {s['reward']} reward" + (f", penalty {s['penalty']:g}" if s["penalty"] else "")
            + (f", return cap {s['return_cap']:g}" if s["return_cap"] else "")
            + f", {s['max_steps']} steps")


def _correlations(s: dict[str, Any]) -> str:
    return " ".join(f"{k} {s[k]:+.2f}" if s[k] is not None else f"{k} n/a" for k in ("spearman", "pearson"))


def _check(cfg: Config) -> None:
    for name in ("dream_episodes", "real_episodes", "env_batch"):
        if getattr(cfg, name) < 1:
            raise WorldModelsError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.perturbations < 0:
        raise WorldModelsError(f"perturbations must be >= 0, got {cfg.perturbations}")
    if cfg.perturbations and (not cfg.scales or any(s <= 0 for s in cfg.scales)):
        raise WorldModelsError(f"scales must be positive perturbation sizes, got {cfg.scales}")
    if 1 + cfg.perturbations + len(cfg.controllers) < 2:
        raise WorldModelsError("a rank correlation needs at least 2 controllers: ask for --perturbations or "
                               "--controllers")
    if any(t <= 0 for t in cfg.temperatures):
        raise WorldModelsError(f"temperatures must be positive, got {cfg.temperatures}")
    if any(not p >= 0 for p in cfg.dream_penalty):
        raise WorldModelsError(f"dream_penalty weights must be >= 0, got {cfg.dream_penalty}")
    if any(not (np.isfinite(c) and c >= 0) for c in cfg.dream_return_cap):
        raise WorldModelsError(f"dream_return_cap values must be positive caps or 0 (none), got {cfg.dream_return_cap}")
    if not cfg.dream_dropout or any(not 0 <= p < 1 for p in cfg.dream_dropout):
        raise WorldModelsError(f"dream_dropout rates must be in [0, 1), got {cfg.dream_dropout}")
    for name in ("max_steps", "dream_max_steps"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise WorldModelsError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name, allowed in (("dream_starts", DREAM_STARTS), ("dream_reward", DREAM_REWARDS)):
        bad = [v for v in getattr(cfg, name) if v not in allowed]
        if bad:
            raise WorldModelsError(f"{name} must be among {', '.join(allowed)}, got {', '.join(bad)}")


def horizons(cfg: Config, trained_starts: str, trained_steps: int,
             env_steps: int) -> tuple[int | None, dict[str, int]]:
    """The real episodes' step limit (None: the env's own) and the dreams' per start kind. A real episode and a
    dream from a first frame are whole episodes, so they share --max-steps (default: C's training limit), except
    for a C trained on dreams from any frame: those were pieces of episodes, so the real ones play whole. A dream
    from any frame plays --dream-max-steps (default: C's training horizon, so its return is C's fitness)."""
    real = cfg.max_steps or (trained_steps if trained_starts == "first" else None)
    return real, {"first": int(real or env_steps), "any": int(cfg.dream_max_steps or trained_steps)}


def run(cfg: Config) -> dict[str, Any]:
    """Measure how well ``cfg.run``'s dream ranks controllers; returns the summary written to summary.json."""
    from worldmodels import plots
    from worldmodels.agent import load_world
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.envs import resolve_backend
    from worldmodels.stages.evaluate import controller_params
    from worldmodels.stages.train_controller import (DEFAULT_MAX_STEPS, dream_seed, load_dream_models,
                                                     population_seeds)
    from worldmodels.utils import exclusive_lock, pick_device

    _check(cfg)
    run_dir = Path(cfg.run)
    state = load_checkpoint(run_dir / "controller", kind="controller")
    identity, train_cfg = state["identity"], state["config"]
    world = load_world(run_dir, identity["obs_mode"], pick_device(cfg.device),
                       latents=cfg.latents or train_cfg.get("latents"))
    for key, now in (("vae_id", world.vae_id), ("mdrnn_id", world.mdrnn_id), ("input_dim", world.input_dim)):
        if identity.get(key) != now:
            raise WorldModelsError(f"{run_dir}: the controller was evolved with a different {key.split('_')[0]} "
                                   f"than the one in the run now; retrain the controller (--fresh)")
    temperatures = list(cfg.temperatures)
    if not temperatures and train_cfg.get("where") == "dream":
        temperatures = [float(train_cfg["temperature"])]
    if not temperatures:
        raise WorldModelsError(f"--temperatures is needed: C was trained {train_cfg.get('where')}, not in a dream")
    mean, _ = controller_params(state, "mean")
    cands = candidates(cfg, mean, world)
    extra = load_dream_models(cfg.dream_models, world)
    # the dream C was trained in (checkpoints from before these options: the defaults)
    env_steps = DEFAULT_MAX_STEPS.get(world.family, 1000)
    trained_starts = train_cfg.get("dream_starts") or "first"
    trained_reward = world.dream_reward(train_cfg.get("dream_reward") or "auto")
    trained_steps = int(train_cfg.get("max_steps") or env_steps)
    max_steps, dream_steps = horizons(cfg, trained_starts, trained_steps, env_steps)
    starts = cfg.dream_starts or [trained_starts]
    rewards = [world.dream_reward(r) for r in cfg.dream_reward] or [trained_reward]
    penalties = list(cfg.dream_penalty) or sorted({0.0, float(train_cfg.get("dream_penalty") or 0.0)})
    caps = list(cfg.dream_return_cap) or sorted({0.0, float(train_cfg.get("dream_return_cap") or 0.0)})
    backend = resolve_backend(world.env, cfg.env_backend)
    out_dir = run_dir / "fidelity"
    out_dir.mkdir(parents=True, exist_ok=True)

    # Dreams: one batched dream per setting, every controller on the same E streams (common random numbers).
    E, params = cfg.dream_episodes, np.stack([c.params for c in cands])
    seed = dream_seed(cfg.seed, 0, DREAM_PURPOSE)
    settings, dreamed, spread = [], [], []
    for start, reward, tau, p, penalty, cap, ensemble in itertools.product(
            starts, rewards, temperatures, cfg.dream_dropout, penalties, caps, [False, True] if extra else [False]):
        models = extra if ensemble else []
        factory = world.dream_factory(tau, dream_steps[start], seed, dropout=p, models=models, streams=E,
                                      starts=start, reward=reward, penalty=penalty, return_cap=cap or None)
        settings.append({"tau": float(tau), "dropout": float(p), "models": 1 + len(models), "starts": start,
                         "reward": reward, "penalty": float(penalty), "return_cap": float(cap),
                         "max_steps": dream_steps[start]})
        dream = factory(len(cands) * E)
        dreamed.append(world.dream_returns(dream, params, E, seed))  # (C, E)
        # per controller: the reward spread over the penalty's masks, summed over a dream (mean over dreams)
        spread.append(dream.uncertainty.double().cpu().numpy().reshape(len(cands), E).mean(1) if penalty else
                      np.full(len(cands), np.nan))

    real_seeds = population_seeds(cfg.seed, 0, cfg.real_episodes, offset=REAL_OFFSET)
    with exclusive_lock(out_dir / "real_episodes.jsonl", "fidelity"):
        played = play_real(cfg, world, cands, real_seeds, max_steps, backend, out_dir / "real_episodes.jsonl")
    real = np.array([[played[(c.name, c.digest, e)]["return"] for e in range(cfg.real_episodes)] for c in cands])
    head = head_summary([played[(cands[0].name, cands[0].digest, e)]["head"] for e in range(cfg.real_episodes)])

    rows, per_setting, panels = [], [], []
    real_mean = real.mean(axis=1)
    for s, returns, u in zip(settings, dreamed, spread):
        dream_mean = returns.mean(axis=1)
        for c, d, r, uc in zip(cands, returns, real, u):
            rows.append((c.name, "" if c.scale is None else c.scale, s["tau"], s["dropout"], s["models"],
                         s["starts"], s["reward"], s["penalty"], s["return_cap"], float(d.mean()), float(d.std()), E,
                         float(r.mean()),
                         float(r.std()), cfg.real_episodes, "" if np.isnan(uc) else float(uc)))
        per_setting.append({**s, "spearman": _finite(spearman(dream_mean, real_mean)),
                            "pearson": _finite(pearson(dream_mean, real_mean)),
                            # does being sure (a small reward spread) rank the controllers by themselves?
                            "spread_spearman": None if np.isnan(u).any() else _finite(spearman(-u, real_mean)),
                            "gap": float((dream_mean - real_mean).mean()), "controllers": len(cands)})
        panels.append((f"{_setting_label(s)}: {_correlations(per_setting[-1])}", dream_mean, real_mean,
                       [c.name for c in cands]))
    summary = {"env": world.env, "env_backend": backend, "levels": "train", "max_steps": max_steps,
               "controller_id": state["id"], "generation": state["generation"], "vae_id": world.vae_id,
               "mdrnn_id": world.mdrnn_id, "dream_models": [m.checkpoint_id for m in extra],
               "trained_dream": {"starts": trained_starts, "reward": trained_reward, "max_steps": trained_steps,
                                 "return_cap": train_cfg.get("dream_return_cap")},
               "dream_starts_from": str(world.latents_path) if world.latents_path else None,
               "dream_episodes": E, "real_episodes": cfg.real_episodes, "settings": per_setting,
               "reward_head": head,
               "controllers": [{"name": c.name, "scale": c.scale, "source": c.source, "digest": c.digest}
                               for c in cands],
               "seeds": {"seed": cfg.seed, "dream_seed": seed, "dream_purpose": DREAM_PURPOSE,
                         "real_purpose": "train", "real_offset": REAL_OFFSET, "real_seeds": real_seeds}}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(out_dir / "fidelity.csv", buf.getvalue())
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    plots.fidelity_scatter(panels, out_dir / "scatter.png")
    for s in per_setting:
        print(f"fidelity: {_setting_label(s)}: {_correlations(s)}, dream - real {s['gap']:+.2f} "
              f"({s['controllers']} controllers)")
    done = (f"done recall {head['done_recall']:.2f} at {head['deaths']} deaths" if head["deaths"]
            else "no real deaths")
    alarms = f"{head['done_false_alarm']:.3f}" if head["done_false_alarm"] is not None else "n/a"
    print(f"fidelity: M on C's {head['episodes']} real episodes: reward MSE {head['reward_mse']:.4g}/step, "
          f"predicted - real return {head['return_gap']:+.2f}, {done}, false alarms {alarms}, "
          f"predicted end - length {head['end_gap']:+.1f}  -> {out_dir}")
    return summary
