"""Write <run>/report.md: the run's config, each stage's final metrics, the evaluation table next to the
paper's number, and the figures (VAE reconstructions, latent traversal, M's dream beside reality, the CMA-ES
learning curve, C playing the real game).

Reads only what the stages left in the run folder (the layout of ``worldmodels.pipeline``: rollouts.h5,
vae/, latents.h5, mdrnn/, controller/, eval-<levels>/); a stage that has not run is listed as missing.
Figures are linked with paths relative to the report, so it renders on GitHub. A missing learning curve
is redrawn from controller/metrics.jsonl.

  worldmodels report --run runs/carracing-default
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from worldmodels import config as cfgmod
from worldmodels import plots
from worldmodels.checkpoint import load_checkpoint
from worldmodels.config import option
from worldmodels.errors import WorldModelsError
from worldmodels.metrics import read_metrics
from worldmodels.utils import atomic_write_text


@dataclasses.dataclass
class Config:
    run: str = option("", "run folder written by the pipeline or the stages (required)")
    out: Optional[str] = option(None, "report to write (default: <run>/report.md)")


# (stage, what proves it ran, folder holding its config.yaml / metrics.jsonl or None)
STAGES = [
    ("collect", "rollouts.h5", None),
    ("train-vae", "vae/checkpoint.pt", "vae"),
    ("encode", "latents.h5", None),
    ("train-mdrnn", "mdrnn/checkpoint.pt", "mdrnn"),
    ("train-controller", "controller/checkpoint.pt", "controller"),
    ("evaluate", "eval-*/summary.json", None),
]

# (file, caption); the stage that draws each one says what it shows.
FIGURES = [
    ("vae/reconstructions.png", "V: real frames (top) and their reconstructions"),
    ("vae/traversal.png", "V: each row sweeps one latent dimension from -3 to +3"),
    ("mdrnn/dream_vs_real.png", "M: a real episode (top) and M's open-loop dream of it from the same first "
                                "frame and actions"),
    ("mdrnn/dream_vs_real.gif", "M: the same, animated (real left, dream right)"),
    ("controller/learning_curve.png", "C: CMA-ES fitness per generation"),
]

# Ha & Schmidhuber (2018), real-env scores; Doom's depends on the dream temperature C was trained at, and the
# paper also scored each Doom controller in its own dream.
PAPER_CARRACING = "906 ± 21 (full model, z and h; 100 random tracks)"
PAPER_CARRACING_V_ONLY = "632 ± 251 (V only, C on z; 100 random tracks)"
PAPER_DOOM = {0.10: "193 ± 58", 0.50: "196 ± 50", 1.00: "868 ± 511", 1.15: "1092 ± 556", 1.30: "753 ± 139"}
PAPER_DOOM_DREAM = {0.10: "2086 ± 140", 0.50: "2060 ± 277", 1.00: "1145 ± 690", 1.15: "918 ± 546", 1.30: "732 ± 269"}
NO_PAPER_PROCGEN = "none: the World Models paper has no ProcGen result"


def _family(env: str) -> str:
    """"carracing", "doom", "procgen", ... of an env name such as "doom-takecover" or "procgen:coinrun"."""
    return env.split(":", 1)[0].split("-", 1)[0]


def paper_score(env: str, temperature: float | None, obs_mode: str | None = None) -> str:
    """The paper's real-env score to compare a run of ``env`` with (C trained at dream ``temperature``, on
    ``obs_mode`` inputs: its CarRacing table has a V-only row)."""
    family = _family(env)
    if family == "carracing":
        return PAPER_CARRACING_V_ONLY if obs_mode == "z" else PAPER_CARRACING
    if family == "doom":
        if temperature is not None and round(float(temperature), 2) in PAPER_DOOM:
            tau = round(float(temperature), 2)
            return f"{PAPER_DOOM[tau]} (C trained in the dream at τ {tau:g})"
        return f"{PAPER_DOOM[1.15]} (C trained in the dream at τ 1.15)"
    if family == "procgen":
        return NO_PAPER_PROCGEN
    return "none known"


def paper_dream_score(env: str, trained: float | None, dreamed: float | None) -> str:
    """The paper's score of a controller in a dream: it has one only for Doom, a C dreamed at the τ it was
    trained at."""
    if _family(env) == "doom" and trained is not None and dreamed is not None:
        tau = round(float(trained), 2)
        if tau == round(float(dreamed), 2) and tau in PAPER_DOOM_DREAM:
            return f"{PAPER_DOOM_DREAM[tau]} in the dream (C trained and dreamed at τ {tau:g})"
    return "none: the paper has no dream score for this"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _stage_config(run_dir: Path, stage: str, folder: str | None) -> dict[str, Any] | None:
    """The config a stage saved beside its outputs, else the one the pipeline recorded when it finished."""
    for path in ([run_dir / folder / "config.yaml"] if folder else []) + [run_dir / "pipeline" / f"{stage}.done.yaml"]:
        if path.is_file():
            values = cfgmod.read_yaml(path)
            values.pop("fresh", None)  # an instruction to that one invocation, not a setting of the run
            return values
    return None


def _data_summary(path: Path, rollouts: bool) -> dict[str, Any]:
    """Episodes, frames and (for rollouts) the collecting policy's mean return, from an HDF5 episode file."""
    from worldmodels.data import open_latents, open_rollouts

    with (open_rollouts if rollouts else open_latents)(path) as src:
        eps = src.episodes
        out: dict[str, Any] = {"env": src.attrs.get("env"), "episodes": int(src.n_episodes),
                               "frames": int(src.n_frames)}
        if src.n_episodes and rollouts:
            out["mean_length"] = float(np.mean(eps["length"]))
            rewards = src.read("reward", 0, src.n_frames)                        # (F,)
            returns = np.add.reduceat(rewards.astype(np.float64), eps["start"].astype(np.int64))  # (N,)
            out["collect/return_mean"], out["collect/return_std"] = float(returns.mean()), float(returns.std())
            out["policy"] = src.attrs.get("policy")
        if not rollouts:
            out["z_dim"] = int(src.read("mu", 0, 1).shape[1]) if src.n_frames else None
    return out


def _last_metrics(folder: Path) -> dict[str, Any] | None:
    records = read_metrics(folder / "metrics.jsonl")
    return records[-1] if records else None


def _evaluations(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(run_dir.glob("eval-*/summary.json")):
        try:
            found.append((path.parent.name, json.loads(path.read_text())))
        except json.JSONDecodeError:
            raise WorldModelsError(f"{path} is not valid JSON; rerun `worldmodels evaluate --run {run_dir}`") from None
    return found


def _sizes(configs: dict[str, dict[str, Any] | None], generations: int | None = None) -> str:
    """One sentence with the sizes that matter for the score, as far as the configs tell them; ``generations``:
    how many C's evaluated checkpoint had run (a search stopped short of its config's)."""
    col, vae, m, c = (configs.get(s) or {} for s in ("collect", "train-vae", "train-mdrnn", "train-controller"))
    ran = (f"{generations} of {c.get('generations')} generations" if generations is not None
           and generations != c.get("generations") else f"{c.get('generations')} generations")
    parts = [f"{col['episodes']} rollouts" if "episodes" in col else "",
             f"z {vae['z_dim']}" if "z_dim" in vae else "", f"h {m['hidden']}" if "hidden" in m else "",
             (f"{ran} of {c['popsize']} × {c['rollouts']} rollouts " + (
                 f"(dream, τ {c.get('temperature', '?')})" if c.get("where") == "dream" else f"({c.get('where', '?')})"))
             if "generations" in c else "", _warm_start(c.get("init"))]
    parts = [p for p in parts if p]
    return f"This run: {', '.join(parts)}." if parts else ""


def _controller_field(path: str | Path | None, key: str) -> Any:
    """One field of the controller checkpoint at ``path`` (its ``id``, how many ``generation``\ s its search had
    run), or None where there is no readable one: a report still shows what it can."""
    try:
        return load_checkpoint(path, kind="controller")[key] if path else None
    except (WorldModelsError, OSError, KeyError, ValueError):
        return None


def _of_search(controller: str, before: int | None) -> str:
    """An evaluation's "mean solution of generation N" of a warm-started run, with N counted over the whole search
    too (a search continued across machines numbers each segment from 1)."""
    if not before:
        return controller
    def count(m: re.Match) -> str:
        return f"generation {int(m[1]) + before} of the search ({m[1]} of this run" + ("; " if m[2] else ")")
    return re.sub(r"generation (\d+)( \()?", count, controller, count=1)


def _warm_start(init: str | None) -> str:
    """C's warm start (train-controller --init), with how far the search it started from had run, if readable."""
    if not init:
        return ""
    before = _controller_field(init, "generation")
    note = f" (a search of {int(before)} generations)" if before is not None else ""
    return f"warm-started from `{init}`{note}"


def expected_spread(run_dir: Path) -> dict[str, Any] | None:
    """The measured spread of a pipeline run's preset and env over seeds (``presets/expected.json``), if any."""
    from worldmodels.config import PRESET_DIR, read_yaml

    record, table = run_dir / "pipeline" / "run.yaml", PRESET_DIR / "expected.json"
    if not record.is_file() or not table.is_file():
        return None
    run = read_yaml(record) or {}
    return (json.loads(table.read_text()).get(run.get("preset")) or {}).get(run.get("env"))


def health_line(mean: float, spread: dict[str, Any]) -> str:
    """Where an evaluation mean falls against the preset's spread over seeds: healthy within mean ± 2 std."""
    mu, sd = float(spread["mean"]), float(spread["std"])
    low, high = mu - 2 * sd, mu + 2 * sd
    where = "within" if low <= mean <= high else ("below" if mean < low else "above")
    return (f"This run's mean, {mean:.1f}, is **{where}** the range a healthy run of this preset reaches: "
            f"{len(spread['runs'])} seeds scored {mu:.1f} ± {sd:.1f} (mean ± std of their evaluation means: "
            f"{', '.join(f'{r:.1f}' for r in spread['runs'])}) on {spread['machine']}, so healthy is "
            f"{low:.1f} .. {high:.1f} (mean ± 2 std). Float kernels differ between CPUs and CMA-ES amplifies "
            "that, so one run alone says little; a run outside the range deserves a look at its curves.")


def _rounds_section(run_dir: Path) -> list[str]:
    """The "Rounds" table of `worldmodels iterate` (from iterate/rounds.csv), or nothing if it never ran."""
    path = run_dir / "iterate" / "rounds.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))

    def number(row: dict[str, str], key: str, fmt: str = ".2f") -> str:
        value = row.get(key) or ""
        return format(float(value), fmt) if value not in ("", "None") else "?"

    noisy = any(r.get("real_noisy_mean") for r in rows)  # iterate --eval-noise: C also scored as the noisy policy
    lines = ["", "## Rounds", "", "Iterative training (`worldmodels iterate`, `iterate/round-<r>/`): each round "
             "collects real episodes with the last C plus exploration noise, refits M (and V when its "
             "reconstruction error on the new frames grew) on all the data so far, evolves C in the refit M's dream "
             "and scores it. Real frames count the original collection and every round so far.", ""]
    lines += _table(["round", "real episodes", "real frames", "M val loss", "V error ratio", "V refit", "C generations",
                     "action noise", "parameter noise", "dream τ", "dream penalty", "dream dropout",
                     "dream return cap", "common dreams", "dream starts", "dream score", "real score, mean ± std (n)"]
                    + (["real score with action noise (σ)"] if noisy else []),
                    [[r["round"], r["real_episodes"], r["real_frames"], number(r, "mdrnn_val_loss", ".4g"),
                      number(r, "vae_recon_ratio", ".3f"), {"True": "yes", "False": "no"}.get(r.get("vae_refit", ""), "?"),
                      r.get("generations") or "?", number(r, "noise", "g"),
                      number(r, "param_noise", "g") if r.get("param_noise") else "0",
                      number(r, "temperature", "g"),
                      number(r, "dream_penalty", "g") if r.get("dream_penalty") else "0",
                      number(r, "dream_dropout", "g"),
                      number(r, "dream_return_cap", "g") if r.get("dream_return_cap") else "none",
                      "yes" if r.get("dream_common") == "True" else "no", r.get("dream_starts") or "first",
                      number(r, "dream_score"),
                      f"{number(r, 'real_mean')} ± {number(r, 'real_std')} ({r.get('real_n', '?')})"]
                     + ([f"{number(r, 'real_noisy_mean')} ± {number(r, 'real_noisy_std')} ({number(r, 'eval_noise', 'g')})"
                         if r.get("real_noisy_mean") else "—"] if noisy else []) for r in rows])
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def build_report(run_dir: Path, out: Path) -> tuple[str, dict[str, Any]]:
    """The report's markdown and a summary (present/missing stages, evaluations, figures)."""
    link_base = out.parent

    def link(path: Path) -> str:  # resolved: a shipped run folder's vae/ and mdrnn/ are links to models/
        return Path(os.path.relpath(path.resolve(), link_base.resolve())).as_posix()

    present = {stage: any(run_dir.glob(proof)) for stage, proof, _ in STAGES}
    missing = [s for s, ok in present.items() if not ok]
    evals = _evaluations(run_dir)
    configs = {stage: _stage_config(run_dir, stage, folder) for stage, _, folder in STAGES}
    env = next((s.get("env") for _, s in evals if s.get("env")), None) or next(
        (c.get("env") for c in configs.values() if c and c.get("env")), None) or "unknown env"
    c_cfg = configs.get("train-controller") or {}

    lines = [f"# World Models run: {env}", "", f"Run folder `{run_dir}`. Written by `worldmodels report`; every "
             "number below is read from the files the stages wrote.", ""]
    lines += ["## Stages", ""]
    lines += _table(["stage", "status", "output"], [
        [stage, "done" if present[stage] else "**missing**", f"`{proof}`"] for stage, proof, _ in STAGES])
    if missing:
        lines += ["", "Missing (not run yet, or removed): " + ", ".join(missing) + "."]

    # --- results
    lines += ["", "## Evaluation", ""]
    if evals:
        ran = next((s["generation"] for _, s in evals if isinstance(s.get("generation"), int)), None)
        # the evaluations of this run's C (a kept copy of an earlier one too, if it came from the same run)
        this_run = _controller_field(run_dir / "controller", "id")
        before = _controller_field(c_cfg.get("init"), "generation")
        rows = []
        for name, s in evals:
            controller = str(s.get("controller", ""))
            if this_run is not None and s.get("controller_id") == str(this_run):
                controller = _of_search(controller, int(before) if before is not None else None)
            if s.get("noise"):
                controller += f", with action noise {s['noise']:g}"
            rows.append([f"`{name}`", str(s.get("env", env)), str(s.get("env_backend", "reference")),
                         str(s.get("episodes", "?")),
                         f"{s['mean']:.2f} ± {s['std']:.2f}", f"{s.get('min', float('nan')):.2f} .. "
                         f"{s.get('max', float('nan')):.2f}", controller,
                         paper_dream_score(str(s.get("env", env)), s.get("trained_temperature"), s.get("temperature"))
                         if s.get("where") == "dream" else
                         paper_score(str(s.get("env", env)), s.get("temperature", c_cfg.get("temperature")),
                                     s.get("obs_mode", c_cfg.get("obs_mode")))])
        lines += _table(["evaluation", "env", "env backend", "episodes", "return, mean ± std", "min .. max", "controller",
                         "paper (Ha & Schmidhuber 2018)"], rows)
        lines += ["", "Mean ± standard deviation over the evaluated episodes (seeds never used in collection or "
                  "training). Numbers beside the paper's are those of the reference env backend (gymnasium / "
                  "vizdoom / procgen); `fast` is envpool's CarRacing, alike in distribution, not per track. " + _sizes(configs, ran)
                  + " The paper used 10,000 rollouts and population 64 × 16 "
                  "rollouts for up to 1,800 generations: compare sizes before comparing scores."]
        spread = expected_spread(run_dir)
        first = next((s for name, s in evals if name == "eval-test"), None)
        if spread and first is not None:
            lines += ["", health_line(float(first["mean"]), spread)]
    else:
        lines += ["Missing: no `eval-<levels>/summary.json` (run `worldmodels evaluate --run DIR`).",
                  "", f"Paper's number for this env: {paper_score(env, c_cfg.get('temperature'), c_cfg.get('obs_mode'))}."]

    lines += _rounds_section(run_dir)

    # --- final metrics
    lines += ["", "## Final metrics of each stage", ""]
    for stage, proof, folder in STAGES:
        if stage == "evaluate":
            continue
        values: dict[str, Any] | None = None
        if stage in ("collect", "encode") and present[stage]:
            values = _data_summary(run_dir / proof, rollouts=stage == "collect")
        elif folder is not None:
            values = _last_metrics(run_dir / folder)
        if not values:
            lines += [f"- **{stage}**: missing" + ("" if not present[stage] else " (no metrics.jsonl records)")]
            continue
        lines += [f"- **{stage}**: " + ", ".join(f"`{k}` {_fmt(v)}" for k, v in values.items() if v is not None)]

    # --- figures
    lines += ["", "## Figures", ""]
    figures: list[str] = []
    curve = run_dir / "controller" / "learning_curve.png"
    if not curve.exists() and read_metrics(run_dir / "controller" / "metrics.jsonl"):
        plots.learning_curve(read_metrics(run_dir / "controller" / "metrics.jsonl"), curve, f"{env}: CMA-ES")
    rounds = run_dir / "iterate" / "rounds.csv"
    if rounds.is_file() and not (run_dir / "iterate" / "rounds.png").exists():
        with open(rounds, newline="") as fh:
            plots.iterate_rounds(list(csv.DictReader(fh)), run_dir / "iterate" / "rounds.png",
                                 f"{env}: worldmodels iterate")
    more = [(Path("iterate/rounds.png"), "iterate: C's dream and real scores per round")] if rounds.is_file() else []
    more += [(Path(name) / "episode.gif", f"C playing {'in the dream' if s.get('where') == 'dream' else 'the real game'}"
             f" ({name}, episode 0)") for name, s in evals]
    for rel, caption in [(Path(p), c) for p, c in FIGURES] + more:
        path = run_dir / rel
        if path.is_file():
            figures.append(rel.as_posix())
            lines += [f"**{caption}**", "", f"![{caption}]({link(path)})", ""]
        else:
            lines += [f"- missing: `{rel.as_posix()}` ({caption})", ""]

    # --- config
    lines += ["## Config", "", "Each stage's merged settings, one line per stage (the block is a valid "
              "`--config` file).", "", "```yaml"]
    for stage, _, _ in STAGES:
        values, section = configs[stage], stage.replace("-", "_")
        lines += [f"# {section}: no config recorded" if values is None else
                  f"{section}: " + yaml.safe_dump(values, default_flow_style=True, width=10_000, sort_keys=False).strip()]
    lines += ["```", ""]
    summary = {"env": env, "missing": missing, "evaluations": {n: s for n, s in evals}, "figures": figures}
    return "\n".join(lines), summary


def run(cfg: Config) -> dict[str, Any]:
    """Write the report; returns its path and what it found (missing stages, evaluations, figures)."""
    if not cfg.run:
        raise WorldModelsError("--run (a run folder written by the pipeline or the stages) is required")
    run_dir = Path(cfg.run)
    if not run_dir.is_dir():
        raise WorldModelsError(f"run folder {run_dir} does not exist; run ./run_pipeline.sh or the stages first")
    if not any(any(run_dir.glob(proof)) for _, proof, _ in STAGES):
        raise WorldModelsError(f"{run_dir} holds no stage output (no rollouts.h5, vae/, mdrnn/, controller/ or "
                               "eval-*/); is this the right run folder?")
    out = Path(cfg.out) if cfg.out else run_dir / "report.md"
    text, summary = build_report(run_dir, out)
    atomic_write_text(out, text)
    print(f"report: {out}" + (f" (missing: {', '.join(summary['missing'])})" if summary["missing"] else ""))
    return {"path": str(out), **summary}
