"""Models that results ship: slim checkpoints (weights, id, config; no optimizer) and dream start latents.

    python results/ship.py slim SRC_STAGE_DIR DST_STAGE_DIR [--half]   # vae/, mdrnn/ or controller/, with its record
    python results/ship.py starts LATENTS_H5 OUT_H5           # every episode's first frame, as one-frame episodes

A slim checkpoint keeps the training run's id, so files and controllers made from the full one still match
it, and evaluates the same; it cannot be resumed (no optimizer or CMA-ES state). The stage's record goes with
it (config.yaml, metrics.jsonl and the figures it drew: V's reconstructions and traversal, M's dream beside
reality, C's learning curve), so `worldmodels report` on a shipped run folder shows them. --half stores V's and M's
weights as float16 (half the bytes); they load into the usual float32 models, so a shipped folder's
evaluation is made with, and reproduced from, the rounded weights (results/<name>/README says how far that
moved the scores). The starts file is a valid latents file whose episodes are
the first frames of LATENTS_H5's: what the dream needs to start its episodes (World.initial_latents)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from worldmodels.checkpoint import load_checkpoint, save_checkpoint, without_resume_state

RECORD = ("config.yaml", "metrics.jsonl", "*.png", "*.gif")


def slim(src: str, dst: str, half: bool = False) -> None:
    import torch

    state = load_checkpoint(src)
    keep = {k: v for k, v in without_resume_state(state).items() if k not in ("kind", "meta")}
    if half and "model" in keep:  # V and M; C's few parameters stay as they are
        keep["model"] = {k: v.half() if v.is_floating_point() else v for k, v in keep["model"].items()}
        keep["stored_as"] = "float16"
    save_checkpoint(Path(dst), state["kind"], keep)
    for pattern in RECORD:
        for path in Path(src).glob(pattern):
            shutil.copyfile(path, Path(dst) / path.name)


def starts(latents: str, out: str) -> None:
    from worldmodels.data import LATENTS, EpisodeWriter, open_latents

    with open_latents(latents) as f:
        eps = f.episodes
        first = np.asarray(eps["start"])
        data = {k: np.asarray(f.take(k, first)) for k in ("mu", "logvar", "action", "reward")}
        attrs = {k: v for k, v in f.attrs.items() if k not in ("schema", "schema_version", "worldmodels_version",
                                                                  "json_attrs")}
    tmp = Path(out).with_suffix(".unpacked.h5")
    with EpisodeWriter(tmp, LATENTS, attrs, fresh=True) as w:
        for i in range(len(first)):
            w.append({"mu": data["mu"][i:i + 1], "logvar": data["logvar"][i:i + 1], "action": data["action"][i:i + 1],
                      "reward": data["reward"][i:i + 1], "terminated": np.zeros(1, bool),
                      "truncated": np.ones(1, bool)}, seed=int(eps["seed"][i]), level=int(eps["level"][i]))
    repack(tmp, out)
    tmp.unlink()


def repack(src: Path, dst: str) -> None:
    """A compact, gzip-compressed copy of an episode file: a writer that appended one-frame episodes leaves
    half the file as free space (14 MB for 10,000 Doom starts, 5 MB repacked)."""
    import h5py

    from worldmodels.utils import atomic_path

    with h5py.File(src, "r") as f, atomic_path(dst) as tmp, h5py.File(tmp, "w") as g:
        g.attrs.update(f.attrs)
        for name, d in f.items():
            g.create_dataset(name, data=d[...], chunks=d.chunks, maxshape=d.maxshape, compression="gzip")
            g[name].attrs.update(d.attrs)


if __name__ == "__main__":
    if sys.argv[1] == "slim":
        slim(sys.argv[2], sys.argv[3], half="--half" in sys.argv[4:])
    else:
        starts(*sys.argv[2:4])
