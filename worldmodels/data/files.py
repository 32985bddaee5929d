"""Reading HDF5 episode files: :class:`EpisodeFile` validates on open and reads only what is asked for.

Files are opened in HDF5's SWMR read mode (readable while written, and after the writer was killed) and
without HDF5's file lock, so readers never stop a writer. See ``docs/data.md`` for the layout and
``worldmodels/data/writer.py`` for how episodes are committed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from worldmodels.data.schema import EPISODE_DTYPE, EPISODES, LATENTS, ROLLOUTS, SCHEMAS, Field, Schema, decode_attrs
from worldmodels.errors import WorldModelsError

# Per-dataset chunk cache: holds a few 1.5 MB obs chunks, so partial-chunk appends and neighbouring
# random reads do not decompress the same chunk again and again.
CACHE_BYTES = 32 << 20
CACHE_SLOTS = 10007


def _open_h5(path: Path, schema: Schema, mode: str = "r") -> h5py.File:
    """Open ``path`` with h5py, turning every way it can fail into one clear error."""
    if not path.exists():
        raise WorldModelsError(f"{path}: no such file (expected {schema.description})")
    if not path.is_file():
        raise WorldModelsError(f"{path}: not a file")
    if not h5py.is_hdf5(path):
        raise WorldModelsError(f"{path}: not an HDF5 file (expected {schema.description})")
    cache = dict(rdcc_nbytes=CACHE_BYTES, rdcc_nslots=CACHE_SLOTS)
    try:
        if mode == "r":
            # swmr=True reads a file while it is written, and a file whose writer was killed. Readers take
            # no HDF5 file lock, so an open reader (a training run) never stops a writer from resuming.
            return h5py.File(path, "r", swmr=True, locking=False, **cache)
        return h5py.File(path, mode, libver="latest", **cache)
    except OSError as err:
        msg = str(err)
        if "unable to lock file" in msg:  # HDF5's own lock, taken by some program other than ours
            raise WorldModelsError(f"{path}: locked by another program; retry when it is done") from None
        if "already open for read-only" in msg:
            raise WorldModelsError(f"{path}: open for reading in this process; close it before writing") from None
        if mode == "r":
            with contextlib.suppress(OSError):  # an HDF5 file from elsewhere, without SWMR support
                return h5py.File(path, "r", locking=False, **cache)
        if mode != "r" and "consistency flags" in msg:
            raise  # the writer handles an interrupted file by recovering it
        raise WorldModelsError(f"{path}: cannot open as HDF5 ({_first_line(err)}); "
                               "the file is probably truncated or corrupt") from None


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def _check_chunks_in_file(ds: h5py.Dataset, n_frames: int, file_size: int, where: str) -> None:
    """Refuse a file cut short: HDF5 reads bytes past the end of the file as zeros, silently."""
    end = 0

    def visit(info: Any) -> None:
        nonlocal end
        if info.chunk_offset[0] < n_frames and info.byte_offset is not None:
            end = max(end, info.byte_offset + info.size)

    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(visit)  # ~1 s per million chunks, and 10M CarRacing frames are ~80k chunks
    else:  # pragma: no cover - older HDF5
        for i in range(ds.id.get_num_chunks()):
            visit(ds.id.get_chunk_info(i))
    if end > file_size:
        raise WorldModelsError(f"{where}: dataset '{ds.name.lstrip('/')}' needs {end} bytes but the file has "
                               f"{file_size}; the file is truncated or corrupt")


class EpisodeFile:
    """A validated, read-only view of an episode file. Reads never load more than asked for.

    h5py handles do not cross processes: the file is reopened by path in a forked or unpickled copy
    (e.g. each DataLoader worker), so passing an ``EpisodeFile`` to workers is safe.
    """

    def __init__(self, path: str | os.PathLike, schema: Schema = ROLLOUTS):
        self.path = Path(path)
        self.schema = schema
        self._file = _open_h5(self.path, schema)
        self._pid = os.getpid()
        try:
            self._validate()
        except OSError as err:
            self.close()
            raise WorldModelsError(f"{self.path}: unreadable ({_first_line(err)}); "
                                   "the file is probably truncated or corrupt") from None
        except BaseException:
            self.close()
            raise

    def _validate(self) -> None:
        f, where = self._file, str(self.path)
        try:
            attrs = decode_attrs(f.attrs)
        except ValueError as err:
            raise WorldModelsError(f"{where}: malformed file attributes ({err})") from None
        name, version = attrs.get("schema"), attrs.get("schema_version")
        if name != self.schema.name:
            found = f"a {name} file" if name else "not a worldmodels episode file (no schema attribute)"
            raise WorldModelsError(f"{where}: {found}, expected {self.schema.name} ({self.schema.description})")
        if version != self.schema.version:
            raise WorldModelsError(f"{where}: {name} schema version {version}, but this worldmodels reads "
                                   f"version {self.schema.version}")
        try:
            fields = self.schema.fields(attrs)
        except WorldModelsError as err:
            raise WorldModelsError(f"{where}: {err}") from None
        table = f.get(EPISODES)
        if not isinstance(table, h5py.Dataset) or table.dtype != EPISODE_DTYPE or table.ndim != 1:
            raise WorldModelsError(f"{where}: missing or malformed '{EPISODES}' table")
        if f.swmr_mode:  # another handle on this file in this process may hold stale metadata
            table.refresh()
        episodes = table[()]
        starts, lengths = episodes["start"], episodes["length"]
        n_frames = int(lengths.sum())
        expected_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        if (lengths < 1).any() or not np.array_equal(starts, expected_starts):
            raise WorldModelsError(f"{where}: the '{EPISODES}' table is inconsistent "
                                   "(episodes must be contiguous and non-empty)")
        for field in fields:
            ds = f.get(field.name)
            if not isinstance(ds, h5py.Dataset):
                raise WorldModelsError(f"{where}: missing dataset '{field.name}'")
            if f.swmr_mode:
                ds.refresh()
            if ds.dtype != field.dtype:
                raise WorldModelsError(f"{where}: dataset '{field.name}' has dtype {ds.dtype}, expected {field.dtype}")
            if ds.shape[1:] != field.shape:
                raise WorldModelsError(f"{where}: dataset '{field.name}' has frames of shape {ds.shape[1:]}, "
                                       f"expected {field.shape}")
            if ds.shape[0] < n_frames:
                raise WorldModelsError(f"{where}: dataset '{field.name}' holds {ds.shape[0]} frames but the "
                                       f"episode table covers {n_frames}; the file is truncated or corrupt")
            _check_chunks_in_file(ds, n_frames, self.path.stat().st_size, where)
            if n_frames:  # a cheap probe: the first and last committed frames must decode
                ds[0], ds[n_frames - 1]
        self.attrs: dict[str, Any] = attrs
        self.episodes: np.ndarray = episodes
        self.n_episodes = len(episodes)
        self.n_frames = n_frames
        self._fields = {fd.name: fd for fd in fields}

    @property
    def fields(self) -> list[str]:
        return list(self._fields)

    def field(self, name: str) -> Field:
        if name not in self._fields:
            raise KeyError(f"no field {name!r} in {self.schema.name}; fields: {', '.join(self._fields)}")
        return self._fields[name]

    def _dataset(self, name: str) -> h5py.Dataset:
        self.field(name)
        if self._pid != os.getpid():  # a forked copy: never share the parent's HDF5 handle
            self._file = _open_h5(self.path, self.schema)
            self._pid = os.getpid()
        return self._file[name]

    def _guarded(self, name: str, what: str, fn):
        try:
            return fn(self._dataset(name))
        except OSError as err:
            raise WorldModelsError(f"{self.path}: reading {name} {what} failed ({_first_line(err)}); "
                                   "the file is probably corrupt") from None

    def read(self, field: str, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` of ``field`` (global frame indices), shape ``(stop - start, *frame_shape)``."""
        if not 0 <= start <= stop <= self.n_frames:
            raise IndexError(f"frames [{start}, {stop}) out of range for {self.n_frames} committed frames")
        return self._guarded(field, f"frames [{start}, {stop})", lambda ds: ds[start:stop])

    def take(self, field: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at arbitrary global indices (any order, repeats allowed), shape ``(*indices.shape, *frame_shape)``.

        Reads one contiguous span per touched chunk, so the cost follows the chunks touched, not the file size.
        """
        idx = np.asarray(indices, dtype=np.int64)
        flat = idx.ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= self.n_frames):
            raise IndexError(f"frame index out of range for {self.n_frames} committed frames")
        fd = self.field(field)
        uniq, inverse = np.unique(flat, return_inverse=True)
        out = np.empty((len(uniq), *fd.shape), fd.dtype)

        def gather(ds: h5py.Dataset) -> np.ndarray:
            chunk_ids = uniq // (ds.chunks[0] if ds.chunks else max(self.n_frames, 1))
            breaks = np.flatnonzero(np.diff(chunk_ids)) + 1
            for lo, hi in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(uniq)]])):
                first = uniq[lo]
                out[lo:hi] = ds[first:uniq[hi - 1] + 1][uniq[lo:hi] - first]
            return out

        if len(uniq):
            self._guarded(field, "frames", gather)
        return out[inverse.ravel()].reshape(*idx.shape, *fd.shape)

    def episode(self, i: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """All frames of episode ``i`` (negative counts from the end) as ``{field: (length, ...)}``."""
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range for {self.n_episodes} episodes")
        row = self.episodes[i]
        start, stop = int(row["start"]), int(row["start"] + row["length"])
        return {name: self.read(name, start, stop) for name in (fields or self.fields)}

    def iter_episodes(self, fields: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.n_episodes):
            yield self.episode(i, fields)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.iter_episodes()

    def __len__(self) -> int:
        return self.n_episodes

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> "EpisodeFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, str]:
        return {"path": str(self.path), "schema": self.schema.name}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["path"], SCHEMAS[state["schema"]])

    def __repr__(self) -> str:
        return (f"EpisodeFile({str(self.path)!r}, {self.schema.name}, {self.n_episodes} episodes, "
                f"{self.n_frames} frames)")


def open_rollouts(path: str | os.PathLike) -> EpisodeFile:
    """Open and validate a rollouts file (``worldmodels collect``)."""
    return EpisodeFile(path, ROLLOUTS)


def open_latents(path: str | os.PathLike) -> EpisodeFile:
    """Open and validate a latents file (``worldmodels encode``)."""
    return EpisodeFile(path, LATENTS)
