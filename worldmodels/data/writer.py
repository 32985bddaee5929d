"""Writing HDF5 episode files: :class:`EpisodeWriter`, the one crash-safe writer of a file.

Crash safety comes from HDF5's single-writer/multiple-reader (SWMR) mode: every dataset and attribute is
created first, then the writer switches to SWMR mode and only appends (resize, write, flush). HDF5 orders
its writes in that mode so that the file on disk is readable by a SWMR reader at every moment, even after
``kill -9``. An episode is committed by extending the ``episodes`` table, which happens only after all of
its frames were written and flushed; readers trust only the frames the table covers.

gzip fields (frames, above all) are compressed here, not in HDF5's filter pipeline: :class:`_GzipChunks`
builds each chunk and deflates it with ISA-L (``isal``, ~4x faster than zlib at level 1, and smaller),
then stores the bytes with ``write_direct_chunk``. The stored format is HDF5's own gzip filter, so any
HDF5 reader decodes it. With HDF5's zlib, compressing ProcGen frames cost more than stepping the env and
capped collection near 10k frames/s (benchmarks/collect.py).

A file whose writer died keeps HDF5's "open for writing" flags set and cannot be reopened for writing.
The next writer then copies the committed episodes into a fresh file and renames it over the old one
(atomic; O(file size), but only after a crash) and goes on appending.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from worldmodels.data.files import CACHE_BYTES, CACHE_SLOTS, EpisodeFile, _open_h5
from worldmodels.data.schema import EPISODE_DTYPE, EPISODES, RESERVED_ATTRS, Field, Schema, encode_attrs, normalized
from worldmodels.errors import WorldModelsError
from worldmodels.utils import atomic_path, exclusive_lock


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


def _deflate_fn():
    try:
        from isal import isal_zlib

        return lambda data, level: isal_zlib.compress(data, min(level, 3))  # ISA-L has levels 0-3
    except ImportError:  # no isal wheel for this platform: zlib, same format, ~4x slower
        import zlib

        return zlib.compress


deflate = _deflate_fn()


class _GzipChunks:
    """Appends to a gzip-filtered dataset chunk by chunk, compressing here (see the module docstring).

    Holds the frames of the partial last chunk, which the next episode completes and rewrites.
    """

    def __init__(self, ds: h5py.Dataset, level: int, n_frames: int):
        self.ds, self.level, self.chunk = ds, level, ds.chunks[0]
        self.zeros = (0,) * (ds.ndim - 1)
        start = n_frames - n_frames % self.chunk
        self.tail = ds[start:n_frames] if n_frames > start else np.zeros((0, *ds.shape[1:]), ds.dtype)

    def append(self, a: np.ndarray, n: int) -> None:
        """Write frames ``a`` at ``[n, n + len(a))`` (the dataset holds n frames now)."""
        self.ds.resize(n + len(a), axis=0)
        data = np.concatenate([self.tail, np.asarray(a, dtype=self.ds.dtype)])
        first = n - len(self.tail)  # chunk-aligned
        for at in range(0, len(data), self.chunk):
            block = data[at:at + self.chunk]
            if len(block) < self.chunk:  # HDF5 stores an edge chunk at full size
                block = np.concatenate([block, np.zeros((self.chunk - len(block), *block.shape[1:]), block.dtype)])
            self.ds.id.write_direct_chunk((first + at, *self.zeros), deflate(np.ascontiguousarray(block).tobytes(),
                                                                              self.level))
        full = len(data) - len(data) % self.chunk
        self.tail = data[full:].copy()


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

    def __init__(self, path: str | os.PathLike, schema: Schema, attrs: Mapping[str, Any], fresh: bool = False,
                 hdf5_compresses: bool = False):
        from worldmodels import __version__

        self.path = Path(path)
        self._hdf5_compresses = hdf5_compresses  # the old path (HDF5's own zlib), kept for benchmarks/collect.py
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
        # Only plain gzip on chunks we can rebuild: a file an older version made with other filters keeps them.
        self._gzip = {fd.name: _GzipChunks(f[fd.name], f[fd.name].compression_opts, self.n_frames)
                      for fd in self._fields if not self._hdf5_compresses
                      and f[fd.name].compression == "gzip" and not f[fd.name].shuffle and not f[fd.name].fletcher32}

    def _recover(self) -> None:
        """Copy the committed episodes of an interrupted file into a fresh one, then swap it in atomically."""
        from tqdm import tqdm

        with EpisodeFile(self.path, self.schema) as old, atomic_path(self.path) as tmp:
            print(f"{self.path}: the last writer was interrupted; recovering its {old.n_episodes} committed "
                  "episodes into a clean file", file=sys.stderr)
            src, n = old._file, old.n_frames
            with h5py.File(tmp, "w", libver="latest", rdcc_nbytes=CACHE_BYTES, rdcc_nslots=CACHE_SLOTS) as dst:
                # The same chunks and filters as the old file (which an older version may have chosen
                # differently): that is what makes copying stored chunk bytes valid.
                with tqdm(total=n * len(self._fields), unit="frame", desc="recover", leave=False) as bar:
                    for fd in self._fields:
                        ds = dst.create_dataset_like(fd.name, src[fd.name], shape=(0, *fd.shape))
                        _copy_frames(src[fd.name], ds, n, ds.chunks[0])
                        bar.update(n)
                dst.create_dataset_like(EPISODES, src[EPISODES], shape=(old.n_episodes,))[:] = old.episodes
                for key, value in src.attrs.items():
                    dst.attrs[key] = value

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
        self._check_values(data, length)
        f, n = self._file, self.n_frames
        for name, a in data.items():
            if name in self._gzip:
                self._gzip[name].append(a, n)
                continue
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

    def _check_values(self, data: Mapping[str, np.ndarray], length: int) -> None:
        """docs/data.md's rules on values, checked before anything is written (vectorised; one error line):
        only an episode's last frame ends it, with exactly one of ``terminated``/``truncated``; discrete
        actions lie in [0, n) of the file's action space; float fields (rewards, Box actions, mu, logvar)
        are finite."""
        term, trunc = np.asarray(data["terminated"], bool), np.asarray(data["truncated"], bool)
        early = np.flatnonzero(term[:-1] | trunc[:-1])
        if len(early):
            name = "terminated" if term[early[0]] else "truncated"
            raise WorldModelsError(f"field {name}: set at frame {early[0]} of a {length}-frame episode; only an "
                                   "episode's last frame may end it")
        if term[-1] and trunc[-1]:
            raise WorldModelsError("the last frame has both terminated and truncated set; an episode ends one way "
                                   "(a time limit that meets the MDP's end is terminated)")
        if not (term[-1] or trunc[-1]):
            raise WorldModelsError(f"the last frame ({length - 1}) has neither terminated nor truncated set; "
                                   "every episode's last frame ends it")
        space = self.attrs["action_space"]
        if space.get("type") == "discrete":
            action, n = data["action"], int(space["n"])
            bad = np.flatnonzero((action < 0) | (action >= n))
            if len(bad):
                raise WorldModelsError(f"field action: discrete action {action[bad[0]]} at frame {bad[0]} is outside "
                                       f"[0, {n}) of the file's action space")
        for fd in self._fields:
            if fd.dtype.kind == "f":
                with np.errstate(over="ignore", invalid="ignore"):  # a float64 past float32's range: inf
                    values = np.asarray(data[fd.name], fd.dtype).reshape(length, -1)  # as stored (float32)
                finite = np.isfinite(values)
                if not finite.all():
                    frame = int(np.flatnonzero(~finite.all(1))[0])
                    raise WorldModelsError(f"field {fd.name}: {values[frame][~finite[frame]][0]} at frame {frame}; "
                                           "values must be finite")

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
