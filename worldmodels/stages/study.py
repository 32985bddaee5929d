"""The ProcGen study: does training C on dream-like (augmented) imagination generalise better to unseen levels?

For each game and seed: collect -> train-vae -> encode -> train-mdrnn once, on training levels only
(env_kwargs, by default num_levels=200, start_level=0, distribution_mode=easy), then one controller
per condition: offline (return-weighted regression on the collected episodes), dream (CMA-ES in M's
dream), dream+<augmentation> for each augmentation alone, dream+all (the three, in order); on request
dream-dropout (fitness dreams as a dream ensemble: each member's episode draws a dropout mask over M's
head input at --dream-dropout). Every controller is evaluated for real on training levels and on unseen
test levels.

Layout under --out: <game>/seed<k>/ holds rollouts.h5, vae/, latents.h5, mdrnn/ and world.json (the
world is finished); <game>/seed<k>/<condition>/ holds the controller and its eval-train/, eval-test/;
cells/<game>__seed<k>__<condition>.json records a finished cell (written atomically, never recomputed).
results.csv, results.md and results.png are rebuilt from the cell records at the end of every run.

world.json and every cell record hold the config that produced them (:func:`world_config`,
:func:`cell_config`); a rerun whose config differs for a finished world or cell is refused with the first
differing key (--fresh-cells recomputes exactly those instead), so results never mix configs.
"""

from __future__ import annotations

import dataclasses
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

LEVELS = ("train", "test")
SPARSE = {"coinrun", "maze", "heist", "jumper", "leaper", "caveflyer", "climber", "ninja"}


def default_conditions() -> list[str]:
    from worldmodels.augment import AUGMENTATIONS

    return ["offline", "dream"] + [f"dream+{name}" for name in AUGMENTATIONS] + ["dream+all"]


@dataclasses.dataclass
class Config:
    out: str = option("runs/study-procgen", "study folder: worlds, controllers, cell records and the results")
    games: list[str] = option(factory=lambda: ["coinrun", "maze", "bigfish", "chaser"], help="ProcGen games")
    seeds: list[int] = option(factory=lambda: [0, 1, 2], help="seeds; each trains its own V, M and controllers")
    conditions: list[str] = option(factory=default_conditions,
                                   help="offline, dream, dream+<augmentation>[+<augmentation>...], dream+all")
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
        raise WorldModelsError(f"unknown study condition {condition!r}; use offline, dream, dream-dropout, dream+all "
                               f"or dream+<augmentation>[+...] with augmentations {', '.join(AUGMENTATIONS)}")
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
    and evaluate sections, and the offline options (offline) or the options of its own augmentations (dream+...)."""
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
    record["seconds"] = time.time() - t0
    record["config"] = cell_config(cfg, condition)
    return record


# ------------------------------------------------------------------------------------------------ results
def read_cells(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarise(cells: list[dict[str, Any]], games: Sequence[str], conditions: Sequence[str]) -> list[dict[str, Any]]:
    """Per game and condition: mean and std over seeds of the per-seed mean return, per level set and gap."""
    rows = []
    for game in games:
        for cond in conditions:
            mine = [c for c in cells if c["game"] == game and c["condition"] == cond]
            if not mine:
                continue
            row = {"game": game, "condition": cond, "seeds": len(mine)}
            for key, values in (("train", [c["train"]["mean"] for c in mine]), ("test", [c["test"]["mean"] for c in mine]),
                                ("gap", [c["train"]["mean"] - c["test"]["mean"] for c in mine])):
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
            rows.append(row)
    return rows


def write_results(out: Path, cells: list[dict[str, Any]], games: Sequence[str], conditions: Sequence[str]) -> dict[str, Path]:
    """results.csv (one row per cell, seed and level set), results.md (table) and results.png (bars)."""
    lines = ["game,seed,condition,levels,mean,std,episodes"]
    for c in sorted(cells, key=lambda c: (c["game"], c["seed"], c["condition"])):
        for levels in LEVELS:
            r = c[levels]
            lines.append(f"{c['game']},{c['seed']},{c['condition']},{levels},{r['mean']:.6g},{r['std']:.6g},{r['episodes']}")
    atomic_write_text(out / "results.csv", "\n".join(lines) + "\n")
    rows = summarise(cells, games, conditions)
    md = ["| game | condition | seeds | train levels | test levels | gap (train - test) |",
          "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        kind = "sparse" if r["game"] in SPARSE else "dense"
        md.append(f"| {r['game']} ({kind}) | {r['condition']} | {r['seeds']} | "
                  + " | ".join(f"{r[k + '_mean']:.2f} ± {r[k + '_std']:.2f}" for k in ("train", "test", "gap")) + " |")
    md.append("")
    md.append("Mean ± std over seeds of each seed's mean real-env return (std with ddof=1; 0 for one seed). "
              "Differences smaller than these stds are within noise, not evidence.")
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    _plot(out / "results.png", rows, games, conditions)
    return {"csv": out / "results.csv", "md": out / "results.md", "png": out / "results.png"}


def _plot(path: Path, rows: list[dict[str, Any]], games: Sequence[str], conditions: Sequence[str]) -> None:
    from matplotlib.figure import Figure

    from worldmodels.plots import save_figure

    shown = [g for g in games if any(r["game"] == g for r in rows)]
    fig = Figure(figsize=(max(6, 1.4 * len(conditions)), 3.2 * max(1, len(shown))))
    for i, game in enumerate(shown):
        ax = fig.add_subplot(len(shown), 1, i + 1)
        mine = {r["condition"]: r for r in rows if r["game"] == game}
        x = np.arange(len(conditions))
        for j, (levels, color) in enumerate((("train", "tab:blue"), ("test", "tab:orange"))):
            means = [mine[c][f"{levels}_mean"] if c in mine else np.nan for c in conditions]
            stds = [mine[c][f"{levels}_std"] if c in mine else 0.0 for c in conditions]
            ax.bar(x + (j - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, color=color, label=f"{levels} levels")
        ax.set_xticks(x, conditions, rotation=20, fontsize=8)
        ax.set_ylabel("real return")
        ax.set_title(f"{game} ({'sparse' if game in SPARSE else 'dense'} reward)")
        ax.legend(fontsize=8)
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ the stage
def run(cfg: Config) -> dict[str, Any]:
    """Run every missing cell, then rebuild the tables and figure; returns their paths and the summary rows."""
    if not cfg.games or not cfg.seeds or not cfg.conditions:
        raise WorldModelsError("study needs at least one game, one seed and one condition")
    for cond in cfg.conditions:
        if cond != "offline":
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
            world_dir = build_world(cfg, game, seed)
            record = run_cell(cfg, world_dir, game, seed, condition)
            atomic_write_text(out / "cells" / f"{game}__seed{seed}__{condition}.json", json.dumps(record, indent=1) + "\n")
            computed += 1
            bar.update()
    paths = write_results(out, [c for c in read_cells(out) if (c["game"], c["seed"], c["condition"]) in set(cells)],
                          cfg.games, cfg.conditions)
    print(f"study: {len(cells)} cells ({computed} computed now) -> {paths['md']}")
    return {"cells": len(cells), "computed": computed, **{k: str(v) for k, v in paths.items()},
            "rows": summarise(read_cells(out), cfg.games, cfg.conditions)}
