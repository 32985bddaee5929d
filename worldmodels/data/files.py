"""HDF5 episode files: one crash-safe writer (:class:`EpisodeWriter`) and a validating reader (:class:`EpisodeFile`).

Crash safety comes from HDF5's single-writer/multiple-reader (SWMR) mode: every dataset and attribute is
created first, then the writer switches to SWMR mode and only appends (resize, write, flush). HDF5 orders
its writes in that mode so that the file on disk is readable by a SWMR reader at every moment, even after
``kill -9``. An episode is committed by extending the ``episodes`` table, which happens only after all of
its frames were written and flushed; readers trust only the frames the table covers.

A file whose writer died keeps HDF5's "open for writing" flags set and cannot be reopened for writing.
The next writer then copies the committed episodes into a fresh file and renames it over the old one
(atomic; O(file size), but only after a crash) and goes on appending.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from worldmodels.data.schema import (EPISODE_DTYPE, EPISODES, LATENTS, RESERVED_ATTRS, ROLLOUTS, SCHEMAS, Field,
                                     Schema, decode_attrs, encode_attrs, normalized)
from worldmodels.errors import WorldModelsError
from worldmodels.utils import atomic_path, exclusive_lock

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
        return f"EpisodeFile({str(self.path)!r}, {self.schema.name}, {self.n_episodes} episodes, {self.n_frames} frames)"


def open_rollouts(path: str | os.PathLike) -> EpisodeFile:
    """Open and validate a rollouts file (``worldmodels collect``)."""
    return EpisodeFile(path, ROLLOUTS)


def open_latents(path: str | os.PathLike) -> EpisodeFile:
    """Open and validate a latents file (``worldmodels encode``)."""
    return EpisodeFile(path, LATENTS)


def _create_layout(path: Path, fields: list[Field], raw_attrs: Mapping[str, Any]) -> None:
    """An empty file with every dataset and attribute in place (nothing may be added once in SWMR mode)."""
    with h5py.File(path, "w", libver="latest") as f:
        for fd in fields:
            filt, level = fd.compression or (None, None)
            f.create_dataset(fd.name, (0, *fd.shape), fd.dtype, maxshape=(None, *fd.shape), chunks=fd.chunks,
                             compression=filt, compression_opts=level)
        f.create_dataset(EPISODES, (0,), EPISODE_DTYPE, maxshape=(None,), chunks=(1024,))
        for key, value in raw_attrs.items():
            f.attrs[key] = value


def _copy_frames(src: h5py.Dataset, dst: h5py.Dataset, n: int, chunk: int) -> None:
    """Copy frames [0, n): whole chunks as stored bytes (no decompression), the partial last chunk decoded."""
    dst.resize(n, axis=0)
    full = n // chunk
    zeros = (0,) * (src.ndim - 1)
    for c in range(full):
        mask, data = src.id.read_direct_chunk((c * chunk, *zeros))
        dst.id.write_direct_chunk((c * chunk, *zeros), data, mask)
    if full * chunk < n:
        dst[full * chunk:n] = src[full * chunk:n]


class EpisodeWriter:
    """The single writer of an episode file: creates it, or resumes one with the same schema and attrs.

    ``attrs`` identify the data (env, kwargs, policy, seed...): an existing file whose attrs differ is
    refused, never overwritten. ``fresh=True`` deletes an existing file of the same schema first.
    Holds ``<path>.lock`` while open, so a second writer gets a clear error.
    """

    def __init__(self, path: str | os.PathLike, schema: Schema, attrs: Mapping[str, Any], fresh: bool = False):
        from worldmodels import __version__

        self.path = Path(path)
        self.schema = schema
        reserved = sorted(set(attrs) & set(RESERVED_ATTRS))
        if reserved:
            raise WorldModelsError(f"attribute names reserved by the writer: {', '.join(reserved)}")
        self.attrs = dict(attrs)
        self._fields = schema.fields(self.attrs)
        self._raw_attrs = encode_attrs({"schema": schema.name, "schema_version": schema.version,
                                        "worldmodels_version": __version__, **self.attrs})
        self._file: h5py.File | None = None
        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(exclusive_lock(self.path, f"{schema.name} writer"))
            self._remove_stale_temps()
            if self.path.exists():
                self._check_existing(fresh)
            if not self.path.exists():
                with atomic_path(self.path) as tmp:
                    _create_layout(tmp, self._fields, self._raw_attrs)
            self._open_for_append()
        except BaseException:
            self.close()
            raise

    def _refusal(self, problem: str) -> WorldModelsError:
        return WorldModelsError(f"{problem}; refusing to overwrite it: write to another path or delete the file")

    def _check_existing(self, fresh: bool) -> None:
        try:
            with EpisodeFile(self.path, self.schema) as old:
                stored = old.attrs
        except WorldModelsError as err:
            raise self._refusal(str(err)) from None
        if fresh:
            self.path.unlink()
            return
        diffs = [key for key in sorted(set(self.attrs) | (set(stored) - set(RESERVED_ATTRS)))
                 if normalized(stored.get(key)) != normalized(self.attrs.get(key))]
        if diffs:
            detail = "; ".join(f"{k}: file has {stored.get(k)!r}, this run wants {self.attrs.get(k)!r}"
                               for k in diffs[:4])
            raise self._refusal(f"{self.path} holds other data ({detail})")

    def _open_for_append(self) -> None:
        try:
            f = _open_h5(self.path, self.schema, "r+")
        except OSError:  # HDF5's "still open for writing" flags: the last writer was killed
            self._recover()
            f = _open_h5(self.path, self.schema, "r+")
        self._file = f
        table = f[EPISODES]
        lengths = table["length"] if len(table) else np.zeros(0, np.int64)
        self.n_episodes, self.n_frames = len(table), int(np.sum(lengths))
        f.swmr_mode = True  # at once: readers may have the file open
        # Frames past the table belong to an episode that never committed: drop them.
        for fd in self._fields:
            if f[fd.name].shape[0] != self.n_frames:
                f[fd.name].resize(self.n_frames, axis=0)
                f[fd.name].flush()

    def _recover(self) -> None:
        """Copy the committed episodes of an interrupted file into a fresh one, then swap it in atomically."""
        from tqdm import tqdm

        with EpisodeFile(self.path, self.schema) as old, atomic_path(self.path) as tmp:
            print(f"{self.path}: the last writer was interrupted; recovering its {old.n_episodes} committed "
                  "episodes into a clean file", file=sys.stderr)
            src = old._file
            _create_layout(tmp, self._fields, dict(src.attrs))
            with h5py.File(tmp, "r+", libver="latest", rdcc_nbytes=CACHE_BYTES, rdcc_nslots=CACHE_SLOTS) as dst:
                n = old.n_frames
                with tqdm(total=n * len(self._fields), unit="frame", desc="recover", leave=False) as bar:
                    for fd in self._fields:
                        _copy_frames(src[fd.name], dst[fd.name], n, fd.chunk_frames)
                        bar.update(n)
                dst[EPISODES].resize(old.n_episodes, axis=0)
                dst[EPISODES][:] = old.episodes

    def _remove_stale_temps(self) -> None:
        # Temp files of a recovery or creation that was itself killed; we hold the lock, so none is live.
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def append(self, arrays: Mapping[str, np.ndarray], seed: int, level: int = -1) -> int:
        """Write one whole episode (``{field: (L, ...)}``) and commit it; returns its episode index."""
        if self._file is None:
            raise WorldModelsError(f"{self.path}: writer is closed")
        names = [fd.name for fd in self._fields]
        if sorted(arrays) != sorted(names):
            raise WorldModelsError(f"episode fields {sorted(arrays)} do not match the schema's {sorted(names)}")
        data, length = {}, None
        for fd in self._fields:
            a = np.asarray(arrays[fd.name])
            if a.ndim != 1 + len(fd.shape) or a.shape[1:] != fd.shape:
                raise WorldModelsError(f"field {fd.name}: frames of shape {a.shape[1:]}, expected {fd.shape}")
            if not np.can_cast(a.dtype, fd.dtype, "same_kind"):
                raise WorldModelsError(f"field {fd.name}: dtype {a.dtype} cannot be stored as {fd.dtype}")
            if length is not None and len(a) != length:
                raise WorldModelsError(f"field {fd.name} has {len(a)} frames, others {length}")
            data[fd.name], length = a, len(a)
        if not length:
            raise WorldModelsError("an episode needs at least one frame")
        f, n = self._file, self.n_frames
        for name, a in data.items():
            f[name].resize(n + length, axis=0)
            f[name][n:] = a
        for name in data:
            f[name].flush()
        # The commit: only now does the episode exist for readers.
        table = f[EPISODES]
        table.resize(self.n_episodes + 1, axis=0)
        table[self.n_episodes] = np.array((n, length, seed, level), dtype=EPISODE_DTYPE)
        table.flush()
        self.n_episodes += 1
        self.n_frames += length
        return self.n_episodes - 1

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        finally:
            self._file = None
            self._stack.close()

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
