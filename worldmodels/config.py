"""Typed stage configs: dataclass defaults < preset YAML < --config YAML < command-line flags.

Every stage declares a ``Config`` dataclass whose fields carry their help text (``option(...)``).
That dataclass is the single source of truth: the CLI flags, the YAML presets and the config saved
next to a stage's outputs are all derived from it. Unknown keys are errors that list the valid ones.

Preset files (``worldmodels/presets/<name>.yaml``) hold one section per stage, named like the stage
with underscores (``train_vae``), plus an optional ``envs`` block whose sections apply on top for one
env (``doom-takecover``) or a family (``procgen`` matches every ``procgen:<game>``)::

    collect: {episodes: 4, max_steps: 60}
    envs:
      doom-takecover:
        train_vae: {z_dim: 64}
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from worldmodels.errors import WorldModelsError

PRESET_DIR = Path(__file__).with_name("presets")
C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: typing.Sequence[Any] | None = None,
           factory: typing.Callable[[], Any] | None = None) -> Any:
    """A dataclass field with help text (shown by ``--help``) and optional allowed values."""
    meta = {"help": help, "choices": tuple(choices) if choices else None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields_of(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Field name -> (field, resolved type) for a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or explain why not."""
    origin = typing.get_origin(tp) or (tp if tp in (list, tuple, dict) else None)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        last_err: WorldModelsError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except WorldModelsError as err:
                last_err = err
        raise last_err or WorldModelsError(f"{key}: cannot use {value!r}")
    if origin is Literal:
        if value not in args:
            raise WorldModelsError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise WorldModelsError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise WorldModelsError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value) if tp is float else int(str(value), 0) if isinstance(value, str) else value
        except (TypeError, ValueError):
            raise WorldModelsError(f"{key}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and (not isinstance(number, int) or isinstance(number, bool)):
            if isinstance(number, float) and number.is_integer():
                return int(number)
            raise WorldModelsError(f"{key}: expected an integer, got {value!r}")
        return tp(number)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise WorldModelsError(f"{key}: expected text, got {value!r}")
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise WorldModelsError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else str
        out = [_coerce(v, item, key) for v in value]
        return out if origin is list else tuple(out)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) or {}
            except yaml.YAMLError as err:
                raise WorldModelsError(f"{key}: not valid YAML/JSON: {err}") from None
        if not isinstance(value, dict):
            raise WorldModelsError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """Build ``cls`` from a dict, rejecting unknown keys and values of the wrong type or choice."""
    known = fields_of(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise WorldModelsError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        f, tp = known[name]
        v = _coerce(value, tp, f"{where}.{name}")
        choices = f.metadata.get("choices")
        if choices and v not in choices:
            raise WorldModelsError(f"{where}.{name}: {v!r} is not one of {', '.join(map(str, choices))}")
        kwargs[name] = v
    missing = [n for n, (f, _) in known.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise WorldModelsError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (tuples as lists), ready for YAML or JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WorldModelsError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise WorldModelsError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise WorldModelsError(f"{path}: expected a mapping of stage sections at the top level")
    return data


def preset_path(name: str) -> Path:
    """A preset by name (``smoke``, ``cpu``, ``paper``) or a path to a YAML file of the same layout."""
    if name.endswith((".yaml", ".yml")):
        return Path(name)
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise WorldModelsError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    return path


def section_values(doc: dict[str, Any], section: str, env: str | None, source: str,
                   valid_sections: typing.Iterable[str] | None = None) -> dict[str, Any]:
    """The values for one stage from a preset/config document, with the env-specific block applied."""
    if valid_sections is not None:
        valid = set(valid_sections) | {"envs"}
        bad = sorted(set(doc) - valid)
        if bad:
            raise WorldModelsError(f"{source}: unknown section {', '.join(bad)}; valid sections: "
                                   f"{', '.join(sorted(valid))}")
    values = dict(doc.get(section) or {})
    envs = doc.get("envs") or {}
    if env:
        family = env.split(":", 1)[0]
        for key in (family, env) if family != env else (env,):
            block = envs.get(key) or {}
            values.update(block.get(section) or {})
    return values


def load(cls: type[C], section: str, *, preset: str | None = None, config_file: str | None = None,
         overrides: dict[str, Any] | None = None, env: str | None = None,
         valid_sections: typing.Iterable[str] | None = None) -> C:
    """Merge defaults, preset, config file and overrides (in that order) into a ``cls`` instance.

    ``env`` selects the env-specific preset block; when None it is taken from the overrides or
    the merged values if the config has an ``env`` field.
    """
    overrides = dict(overrides or {})
    docs = []
    if preset:
        docs.append((read_yaml(preset_path(preset)), f"preset {preset}"))
    if config_file:
        docs.append((read_yaml(config_file), str(config_file)))
    merged: dict[str, Any] = {}
    for doc, source in docs:
        merged.update(section_values(doc, section, None, source, valid_sections))
    env = env or overrides.get("env") or merged.get("env")
    if env is None:
        for f in dataclasses.fields(cls):
            if f.name == "env" and isinstance(f.default, str):
                env = f.default
    if env:
        for doc, source in docs:
            merged.update(section_values(doc, section, env, source))
    merged.update(overrides)
    return from_dict(cls, merged, where=section)


def save(cfg: Any, path: str | os.PathLike) -> None:
    """Write a config as YAML, atomically."""
    from worldmodels.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_saved(cls: type[C], path: str | os.PathLike) -> C:
    """Read back a config written by :func:`save` (unknown keys are errors, as everywhere)."""
    return from_dict(cls, read_yaml(path), where=str(path))
