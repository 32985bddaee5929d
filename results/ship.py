"""Models that results ship: slim checkpoints (weights, id, config; no optimizer) and dream start latents.

    python results/ship.py slim SRC_STAGE_DIR DST_STAGE_DIR   # vae/, mdrnn/ or controller/ checkpoint
    python results/ship.py starts LATENTS_H5 OUT_H5           # every episode's first frame, as one-frame episodes

A slim checkpoint keeps the training run's id, so files and controllers made from the full one still match
it, and evaluates the same; it cannot be resumed (no optimizer or CMA-ES state). The starts file is a valid latents file whose episodes are
the first frames of LATENTS_H5's: what the dream needs to start its episodes (World.initial_latents)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from worldmodels.checkpoint import load_checkpoint, save_checkpoint

# What only a resumed training needs: the optimizer, RNG snapshots, CMA-ES's state (its covariance is
# N x N floats: 9.5 MB for Doom's 1,088-parameter C).
DROP = ("optimizer", "rng", "es", "np_rng")


def slim(src: str, dst: str) -> None:
    state = load_checkpoint(src)
    save_checkpoint(Path(dst), state["kind"], {k: v for k, v in state.items() if k not in DROP + ("kind", "meta")})


def starts(latents: str, out: str) -> None:
    from worldmodels.data import LATENTS, EpisodeWriter, open_latents

    with open_latents(latents) as f:
        eps = f.episodes
        first = np.asarray(eps["start"])
        data = {k: np.asarray(f.take(k, first)) for k in ("mu", "logvar", "action", "reward")}
        attrs = {k: v for k, v in f.attrs.items() if k not in ("schema", "schema_version", "worldmodels_version",
                                                                  "json_attrs")}
    with EpisodeWriter(out, LATENTS, attrs, fresh=True) as w:
        for i in range(len(first)):
            w.append({"mu": data["mu"][i:i + 1], "logvar": data["logvar"][i:i + 1], "action": data["action"][i:i + 1],
                      "reward": data["reward"][i:i + 1], "terminated": np.zeros(1, bool),
                      "truncated": np.ones(1, bool)}, seed=int(eps["seed"][i]), level=int(eps["level"][i]))


if __name__ == "__main__":
    {"slim": slim, "starts": starts}[sys.argv[1]](*sys.argv[2:4])
