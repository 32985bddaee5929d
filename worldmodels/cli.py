"""Command line: ``worldmodels <stage> [options]`` (also ``python -m worldmodels <stage>``).

Each stage lives in ``worldmodels/stages/<name>.py`` and exposes a ``Config`` dataclass and
``run(cfg)``. Flags are generated from the dataclass fields; ``--preset`` and ``--config`` load YAML
values under the flags. Any :class:`WorldModelsError` is printed as one line and exits with 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from typing import Any, Sequence

from worldmodels import __version__
from worldmodels import config as cfgmod
from worldmodels.errors import WorldModelsError

# stage name -> (module, one-line description). Order is the pipeline's order.
STAGES: dict[str, tuple[str, str]] = {
    "collect": ("worldmodels.stages.collect", "roll out a random policy in a real env and write rollouts.h5"),
    "train-vae": ("worldmodels.stages.train_vae", "train the convolutional VAE (V) on collected frames"),
    "encode": ("worldmodels.stages.encode", "encode every frame with V into latents.h5 (mu, logvar)"),
    "train-mdrnn": ("worldmodels.stages.train_mdrnn", "train the MDN-RNN (M) on encoded sequences"),
    "dream": ("worldmodels.stages.dream", "record a dream of M decoded by V (GIF/PNG)"),
    "train-controller": ("worldmodels.stages.train_controller", "evolve the controller (C) with CMA-ES"),
    "evaluate": ("worldmodels.stages.evaluate", "run C with V and M in the real env and score it"),
    "fidelity": ("worldmodels.stages.fidelity", "how well M's dream ranks controllers: dream vs real returns "
                                                "(rank correlation), M's reward and done heads on real episodes"),
    "iterate": ("worldmodels.stages.iterate", "iterative training: collect with C, refit M (and V), evolve C "
                                              "in the dream, score; repeat"),
    "study": ("worldmodels.stages.study", "the ProcGen dream-like imagination study"),
    "report": ("worldmodels.stages.report", "write a run's report.md with tables and figures"),
}


def section_name(stage: str) -> str:
    return stage.replace("-", "_")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not usage + traceback
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(stage: str, config_cls: type, description: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=f"worldmodels {stage}", description=description,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=argparse.SUPPRESS)
    parser.add_argument("--preset", help="preset name (" + ", ".join(cfgmod.available_presets())
                        + ") or YAML file; its section for this stage sets defaults")
    parser.add_argument("--config", help="YAML file with stage sections, applied after the preset")
    fields = cfgmod.fields_of(config_cls)
    if "env" not in fields:
        parser.add_argument("--env", dest="preset_env", metavar="ENV",
                            help="apply the preset's block for this env (e.g. doom-takecover: z 64, h 512)")
    for name, (f, tp) in fields.items():
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default not in (None, "") else "")
        help_text = help_text.replace("%", "%%")
        choices = f.metadata.get("choices")
        if tp is bool or tp == typing.Optional[bool]:  # --x / --no-x; an Optional one stays None (auto) if absent
            parser.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(_flag(name), dest=name, metavar=(name.upper() if not choices else None),
                                choices=choices and [str(c) for c in choices], help=help_text)
    return parser


def one_line(err: WorldModelsError) -> str:
    """The error's own message: a DataLoader worker re-raises ours with its whole traceback in the message."""
    text = str(err).strip()
    if "DataLoader worker" in text.splitlines()[0]:
        last = text.splitlines()[-1]
        return last.split("WorldModelsError: ", 1)[-1]
    return text


def load_stage(stage: str):
    module_name, _ = STAGES[stage]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise WorldModelsError(f"stage {stage!r} is not available in this version yet") from None
        raise


def parse_stage_args(stage: str, argv: Sequence[str]) -> Any:
    """Turn ``argv`` (after the stage name) into the stage's merged Config instance."""
    module = load_stage(stage)
    description = (module.__doc__ or STAGES[stage][1]).strip()
    parser = build_parser(stage, module.Config, description)
    ns = vars(parser.parse_args(list(argv)))
    preset = ns.pop("preset", None)
    config_file = ns.pop("config", None)
    env = ns.pop("preset_env", None)
    return module, cfgmod.load(module.Config, section_name(stage), preset=preset, config_file=config_file,
                               overrides=ns, env=env, valid_sections=[section_name(s) for s in STAGES])


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: worldmodels <stage> [options]   (worldmodels <stage> --help for its options)", "",
             "stages, in pipeline order:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in STAGES.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"worldmodels {__version__}")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"worldmodels: error: unknown stage {stage!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        module, cfg = parse_stage_args(stage, rest)
        module.run(cfg)
    except WorldModelsError as err:
        print(f"worldmodels {stage}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"worldmodels {stage}: interrupted; completed work was saved, rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
