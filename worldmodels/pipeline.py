"""The whole method in order: collect -> train-vae -> encode -> train-mdrnn -> train-controller -> evaluate -> report.

``python -m worldmodels.pipeline [--env carracing] [--preset default] [--run-dir DIR] [--from STAGE] [--force]``
(``run_pipeline.sh`` sets up the virtual environment and calls this).

Every stage's merged config is recorded in ``DIR/pipeline/<stage>.yaml`` when the stage finishes. On a rerun
a finished stage whose config is unchanged is skipped; a stage whose config changed runs again from scratch
(``fresh``) and so does every stage after it; a stage that was interrupted resumes from its own checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from worldmodels import cli
from worldmodels import config as cfgmod
from worldmodels.errors import WorldModelsError
from worldmodels.utils import atomic_write_text

STAGES = ["collect", "train-vae", "encode", "train-mdrnn", "train-controller", "evaluate", "report"]
DEFAULT_PRESET = "default"


def stage_paths(stage: str, run_dir: Path, env: str) -> dict[str, Any]:
    """The file wiring between stages: every path lives inside the run directory."""
    data, latents = str(run_dir / "rollouts.h5"), str(run_dir / "latents.h5")
    paths = {
        "collect": {"out": data},
        "train-vae": {"data": data, "out": str(run_dir / "vae")},
        "encode": {"data": data, "vae": str(run_dir / "vae"), "out": latents},
        "train-mdrnn": {"latents": latents, "out": str(run_dir / "mdrnn"), "vae": str(run_dir / "vae")},
        "train-controller": {"run": str(run_dir), "latents": latents},
        "evaluate": {"run": str(run_dir)},
        "report": {"run": str(run_dir)},
    }[stage]
    return {"env": env, **paths}  # stages that declare an env field check it against their inputs


def stage_config(stage: str, preset: str, run_dir: Path, env: str, seed: int | None = None) -> tuple[Any, Any]:
    """(module, Config) for one stage: preset values for this env, then the pipeline's paths (and ``seed``
    for every training stage; evaluate keeps its own, so runs of several seeds play the same tracks)."""
    module = cli.load_stage(stage)
    names = {f.name for f in dataclasses.fields(module.Config)}
    overrides = {k: v for k, v in stage_paths(stage, run_dir, env).items() if k in names}
    if seed is not None and "seed" in names and stage != "evaluate":
        overrides["seed"] = seed
    cfg = cfgmod.load(module.Config, cli.section_name(stage), preset=preset, overrides=overrides, env=env,
                      valid_sections=[cli.section_name(s) for s in cli.STAGES])
    return module, cfg


def _record(run_dir: Path, stage: str, kind: str) -> Path:
    return run_dir / "pipeline" / f"{stage}.{kind}.yaml"


def _read(path: Path) -> dict[str, Any] | None:
    return cfgmod.read_yaml(path) if path.is_file() else None


def _matches(recorded: dict[str, Any] | None, current: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """A recorded stage config equals the current one. Options the record lacks (added to the package since
    the stage ran) match when the current value is their default, and options since removed are ignored, so
    upgrading the package does not redo finished stages whose settings did not change."""
    missing = object()
    return recorded is not None and all(recorded.get(k, defaults.get(k, missing)) == v for k, v in current.items())


def run_pipeline(env: str = "carracing", preset: str = DEFAULT_PRESET, run_dir: str | None = None,
                 from_stage: str | None = None, force: bool = False, log=print, seed: int | None = None) -> dict[str, str]:
    """Run (or skip, resume, redo) every stage; returns ``{stage: "ran" | "resumed" | "skipped"}``."""
    if from_stage is not None and from_stage not in STAGES:
        raise WorldModelsError(f"--from: unknown stage {from_stage!r}; stages: {', '.join(STAGES)}")
    default_dir = f"runs/{env.replace(':', '-')}-{Path(preset).stem}" + (f"-seed{seed}" if seed is not None else "")
    run_path = Path(run_dir or default_dir)
    configs = [(stage, *stage_config(stage, preset, run_path, env, seed)) for stage in STAGES]  # validate all first
    # What the report compares this run with: the measured spread of this preset over seeds (presets/expected.json).
    atomic_write_text(run_path / "pipeline" / "run.yaml",
                      _yaml({"preset": Path(preset).stem, "env": env, "seed": seed}))
    outcome: dict[str, str] = {}
    redo = force
    for stage, module, cfg in configs:
        redo = redo or stage == from_stage
        current, defaults = cfgmod.to_dict(cfg), cfgmod.to_dict(module.Config())
        finished, started = _read(_record(run_path, stage, "done")), _read(_record(run_path, stage, "started"))
        if not redo and _matches(finished, current, defaults):
            outcome[stage] = "skipped"
            log(f"[pipeline] {stage}: up to date, skipped")
            continue
        # Redo from scratch when forced, when the config changed since the stage last finished, or when an
        # interrupted attempt used another config; resume only an interrupted attempt with this very config.
        resuming = not redo and _matches(started, current, defaults)
        if not resuming and "fresh" in current:
            cfg = dataclasses.replace(cfg, fresh=True)
        log(f"[pipeline] {stage}: " + ("resuming" if resuming else "running"))
        atomic_write_text(_record(run_path, stage, "started"), _yaml(current))
        t0 = time.time()
        module.run(cfg)
        atomic_write_text(_record(run_path, stage, "done"), _yaml(current))
        log(f"[pipeline] {stage}: done in {time.time() - t0:.0f}s")
        outcome[stage] = "resumed" if resuming else "ran"
        redo = True  # new outputs: every later stage must be redone from them
    log(f"[pipeline] finished: {run_path}/report.md")
    return outcome


def _yaml(values: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = cli._Parser(prog="run_pipeline.sh", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="carracing", help="carracing, doom-takecover or procgen:<game>")
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help="smoke, default, cpu, paper, or a YAML file (default: %(default)s)")
    parser.add_argument("--run-dir", default=None, help="output folder (default: runs/<env>-<preset>)")
    parser.add_argument("--from", dest="from_stage", default=None, choices=STAGES, help="redo from this stage on")
    parser.add_argument("--force", action="store_true", help="redo every stage from scratch")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of every training stage (evaluation keeps its tracks); default: the preset's, "
                             "and the run folder gets a -seed<N> suffix when given")
    args = parser.parse_args(argv)
    try:
        run_pipeline(args.env, args.preset, args.run_dir, args.from_stage, args.force, seed=args.seed)
    except WorldModelsError as err:
        print(f"run_pipeline: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("run_pipeline: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
