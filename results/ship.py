"""Models that results ship: slim checkpoints (weights, id, config; no optimizer) and dream start latents.

    python results/ship.py slim SRC_STAGE_DIR DST_STAGE_DIR [--half]   # vae/, mdrnn/ or controller/, with its record
    python results/ship.py starts LATENTS_H5 OUT_H5           # every episode's first frame, as one-frame episodes
    python results/ship.py snapshot RUN/controller INIT [OUT] # a search's state, for a fresh machine to continue
    python results/ship.py scored RUN                         # exit 0 if RUN/eval-test scores RUN's C as it is now
    python results/ship.py iterate RUN/iterate DST [--half]   # iterate's rounds, for a fresh machine to continue

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


def slim(src: str, dst: str, half: bool = False, record: tuple[str, ...] = RECORD) -> None:
    import torch

    state = load_checkpoint(src)
    keep = {k: v for k, v in without_resume_state(state).items() if k not in ("kind", "meta")}
    if half and "model" in keep:  # V and M; C's few parameters stay as they are
        keep["model"] = {k: v.half() if v.is_floating_point() else v for k, v in keep["model"].items()}
        keep["stored_as"] = "float16"
    save_checkpoint(Path(dst), state["kind"], keep)
    for pattern in record:
        for path in Path(src).glob(pattern):
            shutil.copyfile(path, Path(dst) / path.name)


def iterate(src: str, dst: str, half: bool = False) -> None:
    """``worldmodels iterate``'s rounds without their data: the records and every round's slim M and C (and V where
    the round refit it), with their records less GIFs. Copied into a run folder's iterate/ on a fresh machine,
    iterate continues from them: it plays the rounds' episodes again with the Cs that collected them
    (docs/iterate.md). A checkpoint already shipped (same id and training length) is not written again."""
    src_dir, dst_dir = Path(src), Path(dst)
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "base.json", "rounds.csv", "rounds.json", "rounds.png"):
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, dst_dir / name)
    for rnd in sorted(src_dir.glob("round-*")):
        out = dst_dir / rnd.name
        out.mkdir(exist_ok=True)
        if (rnd / "round.json").is_file():
            shutil.copyfile(rnd / "round.json", out / "round.json")
        for part in ("vae", "mdrnn", "controller"):
            if (rnd / part).is_symlink() or not (rnd / part / "checkpoint.pt").is_file():
                continue  # a round that kept the last V links to it; iterate links it again
            if not _same(rnd / part, out / part):
                # no GIFs: a round is a record, not a shipped model with a report (M's GIF is 2 MB)
                slim(str(rnd / part), str(out / part), half=half, record=tuple(p for p in RECORD if p != "*.gif"))
        for folder in rnd.glob("eval-*"):
            (out / folder.name).mkdir(exist_ok=True)
            for name in ("summary.json", "returns.csv"):
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, out / folder.name / name)


def _same(src: Path, dst: Path) -> bool:
    if not (dst / "checkpoint.pt").is_file():
        return False
    a, b = load_checkpoint(src), load_checkpoint(dst)
    return all(a.get(k) == b.get(k) for k in ("id", "epoch", "step", "generation"))


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


def snapshot(src: str, init: str, out: str | None = None) -> None:
    """The state a CMA-ES search has reached, as a folder that results/carracing/run.sh continues it from on a fresh
    machine (kilobytes, where the full checkpoint is ~20 MB): a slim C whose ``mean`` is CMA-ES's mean and whose
    ``generation`` counts every generation so far, ``sigma`` (the step size reached), ``generations`` (the same
    count), ``segments.json`` (each search's id: the generations before it, so a C of any segment is labelled with
    the campaign's count) and ``metrics.jsonl`` (the whole record). A search that was itself continued from INIT
    counts on from it. Written to OUT (default: INIT itself; then the search's own folder is renamed aside, as
    its resume settings, --init and --sigma0, no longer match the new INIT)."""
    import json
    import pickle

    state = load_checkpoint(src, kind="controller")
    start, out = Path(init), Path(out or init)
    started_here = state["config"].get("init") and Path(state["config"]["init"]).resolve() == start.resolve()
    before = int((start / "generations").read_text()) if started_here else 0
    total = before + int(state["generation"])
    segments = json.loads((start / "segments.json").read_text()) if started_here else {}
    segments[state["id"]] = before
    record = (start / "metrics.jsonl").read_text().splitlines() if started_here else []
    for line in (Path(src) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["generation"] < state["generation"]:  # the record may run ahead of the last checkpoint
            record.append(json.dumps({**row, "generation": row["generation"] + before}))
    out.mkdir(parents=True, exist_ok=True)
    slim_state = {k: v for k, v in without_resume_state(state).items() if k not in ("kind", "meta")}
    save_checkpoint(out, "controller", {**slim_state, "generation": total})
    sigma = pickle.loads(state["es"]).sigma
    (out / "sigma").write_text(f"{sigma!r}\n")
    (out / "generations").write_text(f"{total}\n")
    (out / "segments.json").write_text(json.dumps(segments, indent=1) + "\n")
    (out / "metrics.jsonl").write_text("\n".join(record) + "\n")
    moved = ""
    if out.resolve() == start.resolve():
        aside = Path(src).with_name(f"{Path(src).name}.before-{out.name}-{total}")
        Path(src).rename(aside)
        moved = f"; its folder moved to {aside}"
    print(f"{out}: the search's state after {total} generations (sigma {sigma:.4f}){moved}")


def scored(run: str, evaluation: str = "eval-test") -> bool:
    """Whether RUN/EVALUATION/summary.json is an evaluation of RUN's controller as it is now (same training run, same
    generation): a campaign rerun then skips the 100-track evaluation (`worldmodels evaluate` itself always plays)."""
    import json

    try:
        summary = json.loads((Path(run) / evaluation / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    state = load_checkpoint(Path(run) / "controller", kind="controller")
    return (summary.get("controller_id"), summary.get("generation")) == (state["id"], state["generation"])


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
    elif sys.argv[1] == "snapshot":
        snapshot(*sys.argv[2:5])
    elif sys.argv[1] == "iterate":
        iterate(sys.argv[2], sys.argv[3], half="--half" in sys.argv[4:])
    elif sys.argv[1] == "scored":
        sys.exit(0 if scored(*sys.argv[2:4]) else 1)
    else:
        starts(*sys.argv[2:4])
