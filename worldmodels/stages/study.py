"""The ProcGen study: does training C on dream-like (augmented) imagination generalise better to unseen levels?

For each game and seed: collect -> train-vae -> encode -> train-mdrnn once, on training levels only
(env_kwargs, by default num_levels=200, start_level=0, distribution_mode=easy), then one controller
per condition: random (no controller: the uniformly random policy, the baseline a world model must beat on
training levels before the study can show anything), offline (return-weighted regression on the collected
episodes), dream (CMA-ES in M's dream), dream+<augmentation> for each augmentation alone, dream+all (the three,
in order); on request dream-dropout (fitness dreams as a dream ensemble: each member's episode draws a dropout
mask over M's head input at --dream-dropout). Every controller (and the random policy, on the same episodes) is
evaluated for real on training levels and on unseen test levels.

Layout under --out: <game>/seed<k>/ holds rollouts.h5, vae/, latents.h5, mdrnn/ and world.json (the
world is finished); <game>/seed<k>/<condition>/ holds the controller and its eval-train/, eval-test/;
cells/<game>__seed<k>__<condition>.json records a finished cell (written atomically, never recomputed; the
random cell writes nothing else). results.csv, results.md, results_summary.csv/.json and results.png are rebuilt
from the cell records at the end of every run: per game and condition the mean over seeds with a 95 % bootstrap
interval, the paired difference against the plain dream (same world, same seed) with its interval, and a reading
that states only what those intervals support.

world.json and every cell record hold the config that produced them (:func:`world_config`,
:func:`cell_config`); a rerun whose config differs for a finished world or cell is refused with the first
differing key (--fresh-cells recomputes exactly those instead), so results never mix configs.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from worldmodels import config as cfgmod
from worldmodels.config import option
from worldmodels.errors import WorldModelsError
from worldmodels.utils import atomic_write_text

FITNESS_GENERATIONS = 5  # dream_fitness averages the population's mean fitness over this many last generations
LEVELS = ("train", "test")
SPARSE = {"coinrun", "maze", "heist", "jumper", "leaper", "caveflyer", "climber", "ninja"}


def default_conditions() -> list[str]:
    from worldmodels.augment import AUGMENTATIONS

    return ["random", "offline", "dream"] + [f"dream+{name}" for name in AUGMENTATIONS] + ["dream+all"]


@dataclasses.dataclass
class Config:
    out: str = option("runs/study-procgen", "study folder: worlds, controllers, cell records and the results")
    games: list[str] = option(factory=lambda: ["coinrun", "maze", "bigfish", "chaser"], help="ProcGen games")
    seeds: list[int] = option(factory=lambda: [0, 1, 2], help="seeds; each trains its own V, M and controllers")
    conditions: list[str] = option(factory=default_conditions,
                                   help="random, offline, dream, dream+<augmentation>[+<augmentation>...], "
                                        "dream+all, dream-dropout")
    env_kwargs: dict = option(factory=lambda: {"num_levels": 200, "start_level": 0, "distribution_mode": "easy"},
                              help="ProcGen options of the training levels (collection and eval-train)")
    collect: dict = option(factory=lambda: {"episodes": 200}, help="collect options (env, out, seed are set)")
    train_vae: dict = option(factory=dict, help="train-vae options (data, out, seed, device are set)")
    encode: dict = option(factory=dict, help="encode options (data, vae, out, device are set)")
    train_mdrnn: dict = option(factory=dict, help="train-mdrnn options (latents, out, seed, device are set)")
    train_controller: dict = option(factory=dict, help="train-controller options for the dream conditions")
    augment: dict = option(factory=dict, help="per-augmentation options, e.g. {deepdream: {strength: 0.5}}")
    dream_dropout: float = option(0.1, "dropout rate of the dream-dropout condition's fitness dreams (each member's "
                                       "episode draws its own mask over M's head input)")
    offline: dict = option(factory=dict, help="offline fit options: weighting, beta, ridge")
    evaluate: dict = option(factory=lambda: {"episodes": 100},
                            help="evaluate options for both level sets (run, levels, seed, gif are set)")
    device: str = option("auto", "device of every stage: auto, cpu, cuda")
    env_backend: str = option("auto", "env backend of collection (ProcGen has no fast one: auto means reference); "
                              "evaluation plays the reference env unless study.evaluate says otherwise",
                              choices=("auto", "reference", "fast"))
    fresh_cells: bool = option(False, "recompute the finished worlds and cells whose recorded config differs from "
                                      "this one (their folders and records are replaced); default: refuse")


DREAMS = ("dream", "dream-dropout")  # the plain dream; a dream ensemble by dropout masks (cfg.dream_dropout)


def _augment_names(condition: str) -> list[str]:
    """``dream+a+b`` -> [a, b]; ``dream+all`` -> every augmentation; ``dream`` -> [] (also after dream-dropout)."""
    from worldmodels.augment import AUGMENTATIONS

    head, *names = condition.split("+")
    known = all(n in AUGMENTATIONS or n == "all" for n in names)
    if head not in DREAMS or ("all" in names and len(names) > 1) or not known:
        raise WorldModelsError(f"unknown study condition {condition!r}; use random, offline, dream, dream-dropout, "
                               f"dream+all or dream+<augmentation>[+...] with augmentations {', '.join(AUGMENTATIONS)}")
    return list(AUGMENTATIONS) if names == ["all"] else names


def _dream_dropout(condition: str) -> bool:
    return condition.split("+")[0] == "dream-dropout"


def _stage_cfg(module: Any, section: str, values: dict[str, Any], fixed: dict[str, Any]) -> Any:
    return cfgmod.from_dict(module.Config, {**values, **fixed}, where=f"study.{section}")


# ------------------------------------------------------------------------------------------------ recorded configs
WORLD_SECTIONS = ("collect", "train_vae", "encode", "train_mdrnn", "env_kwargs", "env_backend")


def _plain(value: Any) -> Any:
    """JSON-normalised (tuples as lists), so a value compares equal to its record read back."""
    return json.loads(json.dumps(value, default=str))


def world_config(cfg: Config) -> dict[str, Any]:
    """The study settings a world (V, M and their data) depends on, recorded in world.json."""
    return _plain({key: getattr(cfg, key) for key in WORLD_SECTIONS})


def cell_config(cfg: Config, condition: str) -> dict[str, Any]:
    """The study settings one cell depends on, recorded in its cell record: its world's, the train_controller
    and evaluate sections, and the offline options (offline) or the options of its own augmentations (dream+...).
    The random cell trains nothing: its world's and the evaluate section only."""
    if condition == "random":
        return _plain({"world": world_config(cfg), "evaluate": cfg.evaluate})
    cell: dict[str, Any] = {"world": world_config(cfg), "train_controller": cfg.train_controller}
    if condition == "offline":
        cell["offline"] = cfg.offline
    else:
        cell["augment"] = {name: cfg.augment.get(name) or {} for name in _augment_names(condition)}
        if _dream_dropout(condition):
            cell["dream_dropout"] = cfg.dream_dropout
    cell["evaluate"] = cfg.evaluate
    return _plain(cell)


_UNSET = "<unset>"


def first_difference(old: Any, new: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key (recorded order, then new keys) whose value differs, with both values; None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            diff = first_difference(old.get(key, _UNSET), new.get(key, _UNSET), f"{prefix}{key}.")
            if diff is not None:
                return diff
        return None
    return None if old == new else (prefix.rstrip("."), old, new)


def _changed(path: Path, current: dict[str, Any]) -> str | None:
    """Why the record at ``path`` was made with another config than ``current`` (one line), or None."""
    recorded = json.loads(path.read_text()).get("config")
    if recorded is None:
        return f"{path} records no config (written before studies recorded theirs)"
    diff = first_difference(recorded, current)
    if diff is None:
        return None
    key, old, new = diff
    return f"{path} was made with {key}={old!r}, not {new!r}"


def check_recorded_configs(cfg: Config, out: Path, cells: Sequence[tuple[str, int, str]]) -> list[str]:
    """Refuse (one-line WorldModelsError) a finished world or cell whose recorded config differs from ``cfg``;
    with ``cfg.fresh_cells``, delete those worlds and cells instead (their folders and records), so they are
    recomputed. Returns what was deleted."""
    def stale(why: str) -> None:
        if not cfg.fresh_cells:
            raise WorldModelsError(f"{why}; use a new --out, or --fresh-cells to recompute what changed")

    removed = []
    for game, seed in dict.fromkeys((g, s) for g, s, _ in cells):
        base = out / game / f"seed{seed}"
        why = _changed(base / "world.json", world_config(cfg)) if (base / "world.json").exists() else None
        if why is not None:
            stale(why)
            shutil.rmtree(base)
            for record in (out / "cells").glob(f"{game}__seed{seed}__*.json"):
                record.unlink()
            removed.append(str(base))
    for game, seed, condition in cells:
        record = out / "cells" / f"{game}__seed{seed}__{condition}.json"
        why = _changed(record, cell_config(cfg, condition)) if record.exists() else None
        if why is not None:
            stale(why)
            record.unlink()
            shutil.rmtree(out / game / f"seed{seed}" / condition, ignore_errors=True)
            removed.append(str(record))
    return removed


# ------------------------------------------------------------------------------------------------ world
def build_world(cfg: Config, game: str, seed: int) -> Path:
    """collect -> train-vae -> encode -> train-mdrnn for one game and seed (skipped once world.json exists)."""
    from worldmodels.stages import collect, encode, train_mdrnn, train_vae

    base = Path(cfg.out) / game / f"seed{seed}"
    if (base / "world.json").exists():
        return base
    base.mkdir(parents=True, exist_ok=True)
    rollouts, latents = base / "rollouts.h5", base / "latents.h5"
    stages = [
        (collect, "collect", {"env": f"procgen:{game}", "out": str(rollouts), "seed": seed,
                              "env_kwargs": dict(cfg.env_kwargs), "env_backend": cfg.env_backend}),
        (train_vae, "train_vae", {"data": str(rollouts), "out": str(base / "vae"), "seed": seed, "device": cfg.device}),
        (encode, "encode", {"data": str(rollouts), "vae": str(base / "vae"), "out": str(latents), "device": cfg.device}),
        (train_mdrnn, "train_mdrnn", {"latents": str(latents), "out": str(base / "mdrnn"), "seed": seed,
                                      "device": cfg.device}),
    ]
    for module, section, fixed in stages:
        module.run(_stage_cfg(module, section, getattr(cfg, section), fixed))
    atomic_write_text(base / "world.json", json.dumps({"game": game, "seed": seed, "finished": time.time(),
                                                       "config": world_config(cfg)}) + "\n")
    return base


# ------------------------------------------------------------------------------------------------ controllers
def controller_cfg(cfg: Config, run_dir: Path, seed: int, condition: str) -> Any:
    """train-controller's Config for one condition: the study's train_controller section, with
    ``where: offline`` and the offline options, or ``where: dream`` and the condition's augmentations."""
    from worldmodels.stages import train_controller as tc

    fixed: dict[str, Any] = {"run": str(run_dir), "seed": seed, "device": cfg.device}
    if condition == "offline":
        bad = sorted(set(cfg.offline) - {"weighting", "beta", "ridge"})
        if bad:
            raise WorldModelsError(f"study.offline: unknown key(s) {', '.join(bad)}; valid keys: beta, ridge, weighting")
        fixed.update(where="offline", **{f"offline_{k}": v for k, v in cfg.offline.items()})
    else:
        fixed.update(where="dream", augment=_augment_names(condition), augment_options=dict(cfg.augment))
        if _dream_dropout(condition):
            fixed["dream_dropout"] = cfg.dream_dropout
    return _stage_cfg(tc, "train_controller", cfg.train_controller, fixed)


def run_cell(cfg: Config, world_dir: Path, game: str, seed: int, condition: str) -> dict[str, Any]:
    """Train one condition's controller on a finished world and evaluate it on both level sets."""
    from worldmodels.stages import evaluate as ev
    from worldmodels.stages import train_controller as tc

    t0 = time.time()
    run_dir = world_dir / condition
    run_dir.mkdir(exist_ok=True)
    for part in ("vae", "mdrnn"):  # the condition's run folder shares the world's V and M
        link = run_dir / part
        if not link.exists():
            link.symlink_to(Path("..") / part, target_is_directory=True)
    # An interrupted cell resumes: CMA-ES from its checkpoint; an offline fit is kept (a refit would get a new
    # id and restart its evaluations).
    tc.run(controller_cfg(cfg, run_dir, seed, condition))
    record = {"game": game, "seed": seed, "condition": condition}
    for levels in LEVELS:
        summary = ev.run(_stage_cfg(ev, "evaluate", cfg.evaluate,
                                    {"run": str(run_dir), "levels": levels, "seed": seed, "gif": False}))
        record[levels] = {k: summary[k] for k in ("mean", "std", "episodes", "mean_length", "controller_id")}
    if condition.startswith("dream"):
        record["dream_fitness"] = dream_fitness(run_dir / "controller")
    record["seconds"] = time.time() - t0
    record["config"] = cell_config(cfg, condition)
    return record


def dream_fitness(folder: Path, last: int = FITNESS_GENERATIONS) -> float | None:
    """The population's mean dream fitness over C's ``last`` generations (``cmaes/mean`` in its metrics): how much
    signal the dream gave the search. Near 0 in a sparse game, every candidate's dreams paid nothing, and C is
    whatever CMA-ES drifted to."""
    from worldmodels.metrics import read_metrics

    means = [r["cmaes/mean"] for r in read_metrics(folder / "metrics.jsonl") if "cmaes/mean" in r]
    return float(np.mean(means[-last:])) if means else None


def slim_controller(folder: Path) -> None:
    """Drop a finished cell's CMA-ES state from its controller checkpoint (2 N^2 doubles: 390 MB for a ProcGen
    C; 140 cells would fill a disk); C's parameters, id and records stay, so its evaluations remain valid.
    Called once the cell's record is written: a finished cell is never trained again."""
    from worldmodels.checkpoint import load_checkpoint, save_checkpoint, without_resume_state

    if not (folder / "checkpoint.pt").is_file():
        return
    state = load_checkpoint(folder, kind="controller")
    if "es" in state:
        save_checkpoint(folder / "checkpoint.pt", "controller", without_resume_state(state))


def _random_batch(space: dict[str, Any], max_steps: int | None, seeds: list[int]) -> list[tuple[int, float, int]]:
    """(level, return, length) of one random-policy episode per seed, on this worker's envs; the frames stay here."""
    from worldmodels.stages.collect import _collect_batch

    return [(e["level"], float(e["arrays"]["reward"].sum(dtype=np.float64)), len(e["arrays"]["reward"]))
            for e in _collect_batch("random", space, max_steps, seeds)]


def random_episodes(cfg: Config, game: str, seed: int, levels: str) -> list[tuple[int, int, float, int]]:
    """(seed, level, return, length) of the uniformly random policy on the episodes a controller of this study
    seed plays in ``evaluate`` on ``levels``: the same env options, levels, eval seeds, episode count and
    max_steps, so the random baseline is paired with every controller episode for episode."""
    from worldmodels.envs import describe_action_space, episode_seed, make, procgen_levels, resolve_backend
    from worldmodels.parallel import WorkerPool
    from worldmodels.stages import collect
    from worldmodels.stages import evaluate as ev
    from worldmodels.stages.train_controller import n_workers

    ev_cfg = _stage_cfg(ev, "evaluate", cfg.evaluate, {"levels": levels, "seed": seed, "gif": False})
    if ev_cfg.episodes < 1 or ev_cfg.env_batch < 1:
        raise WorldModelsError(f"study.evaluate: episodes and env_batch must be at least 1, got {ev_cfg.episodes}, "
                               f"{ev_cfg.env_batch}")
    env, kwargs = f"procgen:{game}", dict(cfg.env_kwargs)
    start, num = procgen_levels(levels, int(kwargs.get("num_levels", 200)))  # as World.env_options does for evaluate
    kwargs.update(start_level=start, num_levels=num)
    backend = resolve_backend(env, ev_cfg.env_backend)
    probe = make(env, backend, **kwargs)
    space = describe_action_space(probe.action_space)
    probe.close()
    seeds = [episode_seed(seed, i, "eval") for i in range(ev_cfg.episodes)]
    batches = [seeds[i:i + ev_cfg.env_batch] for i in range(0, len(seeds), ev_cfg.env_batch)]
    episodes: list[tuple[int, int, float, int]] = []
    try:
        with WorkerPool(n_workers(ev_cfg.workers), collect._init_envs, (env, backend, kwargs), what="random baseline",
                        backend=ev_cfg.backend, ray_address=ev_cfg.ray_address) as pool:
            for j, results in pool.imap(functools.partial(_random_batch, space, ev_cfg.max_steps), batches):
                episodes += [(s, *r) for s, r in zip(batches[j], results)]
    finally:
        collect._close_inline_envs()
    return episodes


def random_cell(cfg: Config, game: str, seed: int) -> dict[str, Any]:
    """The random condition's cell record: the random policy's real return on both level sets (no controller,
    no world, nothing written but the record)."""
    t0 = time.time()
    record: dict[str, Any] = {"game": game, "seed": seed, "condition": "random"}
    for levels in LEVELS:
        episodes = random_episodes(cfg, game, seed, levels)
        returns = np.array([e[2] for e in episodes])
        record[levels] = {"mean": float(returns.mean()), "std": float(returns.std()), "episodes": len(returns),
                          "mean_length": float(np.mean([e[3] for e in episodes])), "controller_id": None}
    record["seconds"] = time.time() - t0
    record["config"] = cell_config(cfg, "random")
    return record


# ------------------------------------------------------------------------------------------------ results
def read_cells(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def bootstrap_ci(values: Sequence[float], n_boot: int = 10000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (one per seed): the seeds are resampled with
    replacement, so the interval is the seed-to-seed spread a claim has to beat. One value gives (v, v)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if v.size == 1:
        return float(v[0]), float(v[0])
    means = v[np.random.default_rng(seed).integers(v.size, size=(n_boot, v.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _per_seed(cells: Sequence[dict[str, Any]], game: str, condition: str, key: str) -> dict[int, float]:
    """seed -> a cell's mean return on ``key`` levels (train or test), or its gap (train - test)."""
    return {c["seed"]: c["train"]["mean"] - c["test"]["mean"] if key == "gap" else c[key]["mean"]
            for c in cells if c["game"] == game and c["condition"] == condition}


def paired_difference(cells: Sequence[dict[str, Any]], game: str, condition: str, levels: str,
                      baseline: str = "dream") -> dict[str, Any] | None:
    """``condition - baseline`` per seed, over the seeds both have: the same world model and evaluation
    episodes, so what they share cancels. Their count, mean and bootstrap interval; None without a shared seed."""
    mine, base = _per_seed(cells, game, condition, levels), _per_seed(cells, game, baseline, levels)
    diffs = [mine[s] - base[s] for s in sorted(mine) if s in base]
    if not diffs:
        return None
    low, high = bootstrap_ci(diffs)
    return {"seeds": len(diffs), "mean": float(np.mean(diffs)), "low": low, "high": high}


def summarise(cells: list[dict[str, Any]], games: Sequence[str], conditions: Sequence[str]) -> list[dict[str, Any]]:
    """Per game and condition (random first): over seeds, the mean, std and 95 % bootstrap interval of the
    per-seed mean return, per level set and gap, and the paired difference vs dream per level set
    (``<levels>_vs_dream_{seeds,mean,low,high}``, None for dream itself or without a shared seed)."""
    rows = []
    for game in games:
        for cond in sorted(conditions, key=lambda c: c != "random"):
            mine = [c for c in cells if c["game"] == game and c["condition"] == cond]
            if not mine:
                continue
            row: dict[str, Any] = {"game": game, "condition": cond, "seeds": len(mine)}
            for key in ("train", "test", "gap"):
                values = list(_per_seed(mine, game, cond, key).values())
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
                row[f"{key}_low"], row[f"{key}_high"] = bootstrap_ci(values)
            for levels in LEVELS:
                diff = paired_difference(cells, game, cond, levels) if cond != "dream" else None
                for stat in ("seeds", "mean", "low", "high"):
                    row[f"{levels}_vs_dream_{stat}"] = diff[stat] if diff else None
            fitness = [c["dream_fitness"] for c in mine if c.get("dream_fitness") is not None]
            row["dream_fitness"] = float(np.mean(fitness)) if fitness else None
            row["dream_fitness_seeds"] = len(fitness)
            rows.append(row)
    return rows


def _verdict(n: int, low: float, high: float) -> str:
    """higher, lower, within noise (the interval contains 0), or few (one paired seed: no interval at all)."""
    if n < 2:
        return "few"
    return "higher" if low > 0 else "lower" if high < 0 else "within noise"


def reading(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What one game's summary rows support, one line per claim: does dream beat the random policy on training
    levels (without that, this world model cannot show generalisation), then each condition's test-level paired
    difference vs dream. A direction is named only when its 95 % interval over >= 2 paired seeds excludes 0."""
    by = {r["condition"]: r for r in rows}
    if "dream" not in by:
        return ["no dream condition: nothing is paired with it, so nothing can be read"]
    lines = []
    rnd = by.get("random")
    if rnd is None or rnd["train_vs_dream_seeds"] is None:
        lines.append("no random baseline paired with dream: whether dream beats the random policy on training levels "
                     "is unknown, so the study cannot show generalisation")
    else:  # dream - random is the random row's (random - dream) negated; its interval too
        n, d = rnd["train_vs_dream_seeds"], -rnd["train_vs_dream_mean"]
        low, high = -rnd["train_vs_dream_high"], -rnd["train_vs_dream_low"]
        fmt = f"dream - random = {d:+.2f} [{low:+.2f}, {high:+.2f}] over {n} seeds"
        lines.append({
            "higher": f"dream beats random on training levels: {fmt}; the world model is good enough to test "
                      "generalisation",
            "lower": f"dream is worse than random on training levels: {fmt}; this world model cannot show "
                     "generalisation",
            "within noise": f"dream vs random on training levels: within noise, {fmt}; until dream beats random, "
                            "the study cannot show generalisation",
            "few": f"dream vs random on training levels: dream - random = {d:+.2f} on 1 paired seed, too few for an "
                   "interval; no claim"}[_verdict(n, low, high)])
    if by["dream"].get("dream_fitness") is not None:  # a fact beside the verdict: was there anything to learn from?
        lines.append(f"dream's fitness signal: the population's mean dream return over C's last {FITNESS_GENERATIONS} "
                     f"generations was {by['dream']['dream_fitness']:.3g} (mean over "
                     f"{by['dream']['dream_fitness_seeds']} seeds)")
    for r in rows:
        cond = r["condition"]
        if cond == "dream":
            continue
        n = r["test_vs_dream_seeds"]
        if n is None:
            lines.append(f"{cond}: no seed shared with dream; no claim")
            continue
        d, low, high = r["test_vs_dream_mean"], r["test_vs_dream_low"], r["test_vs_dream_high"]
        fmt = f"{cond} - dream = {d:+.2f} [{low:+.2f}, {high:+.2f}] over {n} seeds"
        lines.append({
            "higher": f"{cond} beats dream on test levels: {fmt}",
            "lower": f"{cond} is worse than dream on test levels: {fmt}",
            "within noise": f"{cond} vs dream on test levels: within noise, {fmt}",
            "few": f"{cond} vs dream on test levels: {cond} - dream = {d:+.2f} on 1 paired seed, too few for an "
                   "interval; no claim"}[_verdict(n, low, high)])
    return lines


def _cell_text(row: dict[str, Any], key: str) -> str:
    """``mean [low, high]`` of a level set or gap; a paired difference signed, with its seed count if fewer."""
    if key.endswith("_vs_dream"):
        if row[f"{key}_seeds"] is None:
            return ""
        text = f"{row[f'{key}_mean']:+.2f} [{row[f'{key}_low']:+.2f}, {row[f'{key}_high']:+.2f}]"
        return text + (f" ({row[f'{key}_seeds']} seeds)" if row[f"{key}_seeds"] != row["seeds"] else "")
    return f"{row[f'{key}_mean']:.2f} [{row[f'{key}_low']:.2f}, {row[f'{key}_high']:.2f}]"


MD_HEADER = ("| condition | seeds | train levels | test levels | gap (train - test) | train: vs dream (paired) "
             "| test: vs dream (paired) |")
MD_NOTE = ("Each cell: the mean over seeds of each seed's mean real-env return, [95 % percentile-bootstrap interval "
           "over seeds, 10,000 resamples]. *vs dream*: the paired difference (condition - dream) per seed, same world "
           "model and same evaluation episodes, over the seeds both have (their number if fewer). A reading names a "
           "direction only where that interval excludes 0 over at least 2 seeds. With few seeds the bootstrap "
           "interval is too narrow: with 3 it is the range of the values, so it excludes 0 exactly when all three "
           "seeds agree in sign, which a null effect does one time in four. A direction on 3 seeds is a lead, "
           "not a finding.")


def write_results(out: Path, cells: list[dict[str, Any]], games: Sequence[str], conditions: Sequence[str]) -> dict[str, Path]:
    """results.csv (one row per cell and level set), results.md (per game: table and reading),
    results_summary.csv/.json (every number of the tables, and the reading) and results.png (bars)."""
    lines = ["game,seed,condition,levels,mean,std,episodes"]
    for c in sorted(cells, key=lambda c: (c["game"], c["seed"], c["condition"])):
        for levels in LEVELS:
            r = c[levels]
            lines.append(f"{c['game']},{c['seed']},{c['condition']},{levels},{r['mean']:.6g},{r['std']:.6g},{r['episodes']}")
    atomic_write_text(out / "results.csv", "\n".join(lines) + "\n")
    rows = summarise(cells, games, conditions)
    md, readings = ["# Study results", "", MD_NOTE], {}
    for game in games:
        mine = [r for r in rows if r["game"] == game]
        if not mine:
            continue
        readings[game] = reading(mine)
        md += ["", f"## {game} ({'sparse' if game in SPARSE else 'dense'} reward)", "", MD_HEADER,
               "|---|---:|---:|---:|---:|---:|---:|"]
        md += [f"| {r['condition']} | {r['seeds']} | " + " | ".join(
            _cell_text(r, k) for k in ("train", "test", "gap", "train_vs_dream", "test_vs_dream")) + " |" for r in mine]
        md += ["", "Reading:", *(f"- {line}" for line in readings[game])]
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["game", "condition", "seeds"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results_summary.csv", buf.getvalue())
    atomic_write_text(out / "results_summary.json", json.dumps(
        {"interval": "95 % percentile bootstrap over seeds, 10000 resamples, seed 0", "paired_baseline": "dream",
         "rows": rows, "reading": readings}, indent=1) + "\n")
    _plot(out / "results.png", rows, games, conditions)
    return {"csv": out / "results.csv", "md": out / "results.md", "summary_csv": out / "results_summary.csv",
            "summary_json": out / "results_summary.json", "png": out / "results.png"}


def _plot(path: Path, rows: list[dict[str, Any]], games: Sequence[str], conditions: Sequence[str]) -> None:
    """Bars of the train and test means per condition with their bootstrap intervals; the random policy as
    dashed lines (the floor a controller must clear)."""
    from matplotlib.figure import Figure

    from worldmodels.plots import save_figure

    shown = [g for g in games if any(r["game"] == g for r in rows)]
    bars = [c for c in conditions if c != "random"]
    fig = Figure(figsize=(max(6, 1.4 * len(bars)), 3.2 * max(1, len(shown))), layout="constrained")
    for i, game in enumerate(shown):
        ax = fig.add_subplot(len(shown), 1, i + 1)
        mine = {r["condition"]: r for r in rows if r["game"] == game}
        x = np.arange(len(bars))
        for j, (levels, color) in enumerate((("train", "tab:blue"), ("test", "tab:orange"))):
            means = np.array([mine[c][f"{levels}_mean"] if c in mine else np.nan for c in bars])
            err = np.array([[mine[c][f"{levels}_mean"] - mine[c][f"{levels}_low"],
                             mine[c][f"{levels}_high"] - mine[c][f"{levels}_mean"]] if c in mine else [0.0, 0.0]
                            for c in bars]).reshape(-1, 2).T
            ax.bar(x + (j - 0.5) * 0.38, means, 0.38, yerr=err, capsize=3, color=color, label=f"{levels} levels")
            if "random" in mine:
                ax.axhline(mine["random"][f"{levels}_mean"], color=color, linestyle="--", linewidth=1,
                           label=f"random policy, {levels} levels")
        ax.set_xticks(x, bars, rotation=20, fontsize=8)
        ax.set_ylabel("real return (95 % CI over seeds)")
        ax.set_title(f"{game} ({'sparse' if game in SPARSE else 'dense'} reward)")
        ax.legend(fontsize=7)
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ the stage
def run(cfg: Config) -> dict[str, Any]:
    """Run every missing cell, then rebuild the tables, reading and figure; returns their paths and the summary
    rows."""
    if not cfg.games or not cfg.seeds or not cfg.conditions:
        raise WorldModelsError("study needs at least one game, one seed and one condition")
    for cond in cfg.conditions:
        if cond not in ("offline", "random"):
            _augment_names(cond)
    if not 0 <= cfg.dream_dropout < 1:
        raise WorldModelsError(f"study.dream_dropout must be in [0, 1), got {cfg.dream_dropout}")
    from worldmodels.augment import build_augmentations

    # Bad keys fail now, not hours into the study.
    build_augmentations([], cfg.augment)
    from worldmodels.stages import collect, encode, evaluate, train_controller, train_mdrnn, train_vae

    for module, section in ((collect, "collect"), (train_vae, "train_vae"), (encode, "encode"),
                            (train_mdrnn, "train_mdrnn"), (train_controller, "train_controller"), (evaluate, "evaluate")):
        _stage_cfg(module, section, getattr(cfg, section), {})
    for cond in cfg.conditions:
        if cond != "random":
            controller_cfg(cfg, Path(cfg.out), 0, cond)
    out = Path(cfg.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    cells = [(g, s, c) for g in cfg.games for s in cfg.seeds for c in cfg.conditions]
    for path in check_recorded_configs(cfg, out, cells):
        print(f"study: {path} was made with another config; recomputing it (--fresh-cells)")
    cfgmod.save(cfg, out / "config.yaml")
    todo = [cell for cell in cells if not (out / "cells" / f"{cell[0]}__seed{cell[1]}__{cell[2]}.json").exists()]
    computed = 0
    with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="study", unit="cell") as bar:
        for game, seed, condition in todo:
            bar.set_postfix_str(f"{game} seed {seed} {condition}")
            record = (random_cell(cfg, game, seed) if condition == "random"
                      else run_cell(cfg, build_world(cfg, game, seed), game, seed, condition))
            atomic_write_text(out / "cells" / f"{game}__seed{seed}__{condition}.json", json.dumps(record, indent=1) + "\n")
            if condition != "random":
                slim_controller(out / game / f"seed{seed}" / condition / "controller")
            computed += 1
            bar.update()
    records = [c for c in read_cells(out) if (c["game"], c["seed"], c["condition"]) in set(cells)]
    paths = write_results(out, records, cfg.games, cfg.conditions)
    print(f"study: {len(cells)} cells ({computed} computed now) -> {paths['md']}")
    return {"cells": len(cells), "computed": computed, **{k: str(v) for k, v in paths.items()},
            "rows": summarise(records, cfg.games, cfg.conditions)}
