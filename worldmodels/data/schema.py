"""The two HDF5 episode schemas (rollouts, latents): fields, chunking, required attributes.

A schema says which per-frame datasets a file holds and which file attributes it must carry. The
dtype and shape of some fields depend on the file's own attributes (the action space, the latent
size), so a schema builds its field list from those attributes with :meth:`Schema.fields`.
The full description, field by field, is in ``docs/data.md``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping

import numpy as np

from worldmodels.errors import WorldModelsError

# The commit record: one row per whole episode, frames [start, start + length) of every field.
EPISODE_DTYPE = np.dtype([("start", "<i8"), ("length", "<i8"), ("seed", "<i8"), ("level", "<i8")])
EPISODES = "episodes"
OBS_SHAPE = (64, 64, 3)
# 64 frames of 64x64x3 uint8 = 768 KB per chunk before compression (~90 KB after): long sequential reads
# for a streaming reader, and a shuffled chunk order still mixes episodes. Smaller chunks waste less file:
# in SWMR mode HDF5 never reuses the space of the partial last chunk an episode rewrites (measured in
# docs/data.md: 2 % for 1000-frame episodes, 14 % for 200-frame ones; 4 % and 30 % with 128-frame chunks).
# gzip level 1: 1.4 KB/frame (lzf: 2.3 KB, none: 12.3 KB), ~40 us/frame to write or read, under 1 % of a
# CarRacing env step; and every HDF5 tool can read it.
OBS_CHUNK_FRAMES = 64
GZIP = ("gzip", 1)
SMALL_CHUNK_FRAMES = 4096
# File attributes written by the writer itself, never part of a caller's identity.
RESERVED_ATTRS = ("schema", "schema_version", "worldmodels_version", "json_attrs")


@dataclasses.dataclass(frozen=True)
class Field:
    """One per-frame dataset: stored as ``(F, *shape)`` with chunks of ``chunk_frames`` frames."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    chunk_frames: int = SMALL_CHUNK_FRAMES
    compression: tuple[str, int] | None = None  # (filter, level) for h5py, e.g. ("gzip", 1)

    @property
    def chunks(self) -> tuple[int, ...]:
        return (self.chunk_frames, *self.shape)


@dataclasses.dataclass(frozen=True)
class Schema:
    """A named, versioned file layout. ``layout(attrs)`` gives the fields for a file with those attrs."""

    name: str
    version: int
    required_attrs: tuple[str, ...]
    layout: Callable[[Mapping[str, Any]], list[Field]]
    description: str = ""

    def fields(self, attrs: Mapping[str, Any]) -> list[Field]:
        missing = [k for k in self.required_attrs if k not in attrs]
        if missing:
            raise WorldModelsError(f"{self.name} file attributes missing: {', '.join(missing)}")
        return self.layout(attrs)


def action_field(action_space: Mapping[str, Any]) -> Field:
    """``action`` is float32 (F, A) for a Box space and int64 (F,) for a Discrete one."""
    kind = action_space.get("type") if isinstance(action_space, Mapping) else None
    if kind == "discrete":
        return Field("action", np.dtype("int64"), (), compression=GZIP)
    if kind == "box":
        return Field("action", np.dtype("float32"), tuple(int(d) for d in action_space["shape"]))
    raise WorldModelsError(f"unsupported action space description {action_space!r} "
                           "(expected type 'box' or 'discrete')")


def _step_fields(attrs: Mapping[str, Any]) -> list[Field]:
    return [action_field(attrs["action_space"]),
            Field("reward", np.dtype("float32"), ()),
            Field("terminated", np.dtype("bool"), (), compression=GZIP),
            Field("truncated", np.dtype("bool"), (), compression=GZIP)]


def _rollouts_layout(attrs: Mapping[str, Any]) -> list[Field]:
    obs = Field("obs", np.dtype("uint8"), OBS_SHAPE, chunk_frames=OBS_CHUNK_FRAMES, compression=GZIP)
    return [obs, *_step_fields(attrs)]


def _latents_layout(attrs: Mapping[str, Any]) -> list[Field]:
    z = int(attrs["z_dim"])
    if z <= 0:
        raise WorldModelsError(f"latents z_dim must be positive, got {z}")
    return [Field("mu", np.dtype("float32"), (z,)), Field("logvar", np.dtype("float32"), (z,)),
            *_step_fields(attrs)]


ROLLOUTS = Schema(
    name="worldmodels.rollouts", version=1,
    required_attrs=("env", "env_kwargs", "action_space", "policy", "seed", "max_steps"),
    layout=_rollouts_layout,
    description="frames, actions, rewards of real-env episodes (written by `worldmodels collect`)")

LATENTS = Schema(
    name="worldmodels.latents", version=1,
    required_attrs=("env", "action_space", "z_dim", "vae_checkpoint", "vae_id", "rollouts"),
    layout=_latents_layout,
    description="VAE posteriors (mu, logvar) of every rollout frame (written by `worldmodels encode`)")

SCHEMAS = {s.name: s for s in (ROLLOUTS, LATENTS)}


# Attribute values: str, int, float and bool are stored natively (readable with any HDF5 tool);
# anything else (dicts, lists, None) as JSON text, with its name listed in the `json_attrs` attribute.
def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    json_names = []
    for key, value in attrs.items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (str, int, float, np.integer, np.floating)):
            out[key] = value.item() if isinstance(value, np.generic) else value
        else:
            try:
                out[key] = json.dumps(value, sort_keys=True)
            except TypeError:
                raise WorldModelsError(f"file attribute {key!r} is not JSON-serialisable: {value!r}") from None
            json_names.append(key)
    out["json_attrs"] = json.dumps(sorted(json_names))
    return out


def decode_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    json_names = set(json.loads(_as_python(raw.get("json_attrs", "[]"))))
    out = {}
    for key, value in raw.items():
        if key == "json_attrs":
            continue
        value = _as_python(value)
        out[key] = json.loads(value) if key in json_names else value
    return out


def normalized(value: Any) -> str:
    """A canonical text form for comparing identities: tuples equal lists, dict key order does not matter."""
    return json.dumps(_as_python(value), sort_keys=True, default=str)


def _as_python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
