"""Reading HDF5 episode files: :class:`EpisodeFile` validates on open and reads only what is asked for.

Files are opened in HDF5's SWMR read mode (readable while written, and after the writer was killed) and
without HDF5's file lock, so readers never stop a writer. See ``docs/data.md`` for the layout and
``worldmodels/data/writer.py`` for how episodes are committed.

A truncated or corrupt file fails fast with one :class:`WorldModelsError`, never a hang: a cleanly closed
file shorter than the end address in its superblock is refused before HDF5 opens it, and SWMR reads get a
small retry budget for metadata whose checksum fails (HDF5's default never ends on a damaged file).
"""

from __future__ import annotations

import contextlib
import ctypes
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

# A SWMR reader retries a metadata read whose checksum fails (it may have caught a block while the writer
# rewrote it), sleeping 1, 2, 4, ... ns in between. HDF5's default of 100 tries in SWMR mode sleeps for
# ~2**100 ns: on a truncated or corrupt file (where the checksum never matches) that is a hang. 28 tries
# wait ~0.27 s in all before giving up, orders of magnitude longer than a writer takes to write a block.
SWMR_READ_ATTEMPTS = 28

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _truncation(path: Path) -> str | None:
    """Why ``path`` is shorter than HDF5 recorded when it was last closed, or None (also when unknown).

    The superblock stores the file's end address; HDF5 checks it on open, except in SWMR read mode (a
    file being written grows past it). It is only trustworthy once the writer closed the file cleanly:
    while a file is open for writing (or its writer was killed) the consistency flags are set and the
    stored end is stale. Damage to such a file shows up later, as metadata that fails its checksum (within
    ``SWMR_READ_ATTEMPTS``) or as a committed chunk past the end of the file (``_check_chunks_in_file``).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            offset = 0  # the superblock is at 0, or after a user block: at 512, 1024, 2048, ...
            while offset + 64 <= size:
                fh.seek(offset)
                head = fh.read(64)
                if head[:8] == HDF5_SIGNATURE:
                    break
                offset = 512 if offset == 0 else 2 * offset
            else:
                return None
    except OSError:
        return None
    version = head[8]
    if version in (0, 1):  # no SWMR before version 3: the stored end is written on close
        if any(head[20:24]):  # consistency flags: unused in these versions, so something unknown
            return None
        n_addr, at = head[13], 24 + (4 if version == 1 else 0) + 2 * head[13]  # after base, free-space
    elif version in (2, 3):
        if head[11] != 0:  # open for writing (or SWMR writing), or its writer was killed
            return None
        n_addr, at = head[9], 12 + 2 * head[9]  # after base address, superblock extension address
    else:
        return None
    if n_addr not in (2, 4, 8) or at + n_addr > len(head):
        return None
    eof = int.from_bytes(head[at:at + n_addr], "little")  # absolute, as HDF5's own check reads it
    if eof == (1 << (8 * n_addr)) - 1 or size >= eof:  # undefined address, or whole
        return None
    return f"the file has {size} bytes but held {eof} when it was last closed"


_set_read_attempts: Any = None


def _read_fapl() -> h5py.h5p.PropFAID:
    """File access properties of a reader: no HDF5 file lock, our chunk cache, a bounded SWMR retry budget."""
    global _set_read_attempts
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    _, _, _, w0 = fapl.get_cache()
    fapl.set_cache(0, CACHE_SLOTS, CACHE_BYTES, w0)
    if hasattr(fapl, "set_file_locking"):  # h5py built with HDF5 >= 1.12.1
        fapl.set_file_locking(False, False)
    if _set_read_attempts is None:
        _set_read_attempts = False
        # h5py does not wrap H5Pset_metadata_read_attempts: call it in the HDF5 library that h5py is linked
        # with (looking a symbol up in h5py's extension module searches the libraries it depends on).
        with contextlib.suppress(OSError, AttributeError):
            lib = ctypes.CDLL(h5py.h5p.__file__)
            setter, getter = lib.H5Pset_metadata_read_attempts, lib.H5Pget_metadata_read_attempts
            setter.argtypes, setter.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
            getter.argtypes, getter.restype = [ctypes.c_int64, ctypes.POINTER(ctypes.c_uint)], ctypes.c_int
            got = ctypes.c_uint(0)
            if (setter(fapl.id, SWMR_READ_ATTEMPTS) >= 0 and getter(fapl.id, ctypes.byref(got)) >= 0
                    and got.value == SWMR_READ_ATTEMPTS):
                _set_read_attempts = setter
    if _set_read_attempts:
        _set_read_attempts(fapl.id, SWMR_READ_ATTEMPTS)
    return fapl


def _open_swmr_reader(path: Path) -> h5py.File:
    name = str(path).encode("utf-8") if os.name == "nt" else os.fsencode(path)  # as h5py encodes names
    return h5py.File(h5py.h5f.open(name, h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=_read_fapl()))


def _open_h5(path: Path, schema: Schema, mode: str = "r") -> h5py.File:
    """Open ``path`` with h5py, turning every way it can fail into one clear error."""
    if not path.exists():
        raise WorldModelsError(f"{path}: no such file (expected {schema.description})")
    if not path.is_file():
        raise WorldModelsError(f"{path}: not a file")
    if not h5py.is_hdf5(path):
        raise WorldModelsError(f"{path}: not an HDF5 file (expected {schema.description})")
    cut = _truncation(path)
    if cut:
        raise WorldModelsError(f"{path}: {cut}; the file is truncated or corrupt")
    cache = dict(rdcc_nbytes=CACHE_BYTES, rdcc_nslots=CACHE_SLOTS)
    try:
        if mode == "r":
            # SWMR reads a file while it is written, and a file whose writer was killed. Readers take no
            # HDF5 file lock, so an open reader (a training run) never stops a writer from resuming.
            return _open_swmr_reader(path)
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
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)  # no KeyError quotes
    return (text.splitlines() or [type(err).__name__])[0]


def _check_chunks_in_file(ds: h5py.Dataset, n_frames: int, path: Path, where: str) -> None:
    """Refuse a file cut short: HDF5 reads bytes past the end of the file as zeros, silently.

    The file's size is taken after the chunk index was read: a live writer writes a chunk before the index
    entry that points to it, so a file that is only growing never fails this check.
    """
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
    file_size = path.stat().st_size
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
        except (OSError, RuntimeError, KeyError) as err:  # h5py raises any of these for what HDF5 cannot read
            self.close()
            raise WorldModelsError(f"{self.path}: unreadable ({_first_line(err)}); "
                                   "the file is probably truncated or corrupt") from None
        except BaseException:
            self.close()
            raise

    def _validate(self) -> None:
        f, where = self._file, str(self.path)
        raw_attrs = dict(f.attrs.items())  # read them all here: an unreadable one must not look absent
        try:
            attrs = decode_attrs(raw_attrs)
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
        except (KeyError, TypeError, ValueError) as err:  # e.g. an action_space without its shape
            raise WorldModelsError(f"{where}: malformed file attributes ({type(err).__name__}: {err})") from None

        def member(name: str) -> Any:
            # Only a missing link is "missing": h5py's get() would also hide an object it cannot read.
            return f[name] if f.id.links.exists(name.encode()) else None

        table = member(EPISODES)
        if not isinstance(table, h5py.Dataset) or table.dtype != EPISODE_DTYPE or table.ndim != 1:
            raise WorldModelsError(f"{where}: missing or malformed '{EPISODES}' table")
        if f.swmr_mode:  # another handle on this file in this process may hold stale metadata
            table.refresh()
        _check_chunks_in_file(table, len(table), self.path, where)
        episodes = table[()]
        starts, lengths = episodes["start"], episodes["length"]
        n_frames = int(lengths.sum())
        expected_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        if (lengths < 1).any() or not np.array_equal(starts, expected_starts):
            raise WorldModelsError(f"{where}: the '{EPISODES}' table is inconsistent "
                                   "(episodes must be contiguous and non-empty)")
        for field in fields:
            ds = member(field.name)
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
            _check_chunks_in_file(ds, n_frames, self.path, where)
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
        """Run ``fn(dataset)``; a damaged chunk or chunk index (h5py: OSError or RuntimeError) is one error line."""
        try:
            return fn(self._dataset(name))
        except (OSError, RuntimeError) as err:
            raise WorldModelsError(f"{self.path}: reading {name} {what} failed ({_first_line(err)}); "
                                   "the file is truncated or corrupt") from None

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
            self._guarded(field, f"frames in [{uniq[0]}, {uniq[-1] + 1})", gather)
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


class EpisodeFiles:
    """Several episode files of one schema read as one, e.g. the data of every round of iterative training.

    Episodes are numbered file after file and frames take global indices (file i's frames follow file
    i - 1's); ``.episodes`` holds the global starts. A read stays inside one file, as an episode does.
    ``same`` names the attributes every file must share (what makes them one dataset); ``.attrs`` are the
    first file's. With one path it reads like that :class:`EpisodeFile`.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], schema: Schema,
                 same: Sequence[str] = ("env", "action_space")):
        from worldmodels.data.schema import normalized

        if not paths:
            raise WorldModelsError(f"no {schema.name} file given")
        self.files: list[EpisodeFile] = []
        try:
            for path in paths:
                self.files.append(EpisodeFile(path, schema))
        except BaseException:
            self.close()
            raise
        first = self.files[0]
        for other in self.files[1:]:
            for key in same:
                if normalized(other.attrs.get(key)) != normalized(first.attrs.get(key)):
                    self.close()
                    raise WorldModelsError(f"{other.path} has {key} {other.attrs.get(key)!r} but {first.path} has "
                                           f"{first.attrs.get(key)!r}; files read together must agree")
        self.schema, self.path, self.attrs = schema, first.path, first.attrs
        frames = np.array([f.n_frames for f in self.files], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(frames)[:-1]])  # (n_files,) first global frame of each
        counts = np.array([f.n_episodes for f in self.files], dtype=np.int64)
        self.first_episodes = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (n_files,) first global episode
        tables = []
        for f, offset in zip(self.files, self.offsets):
            table = f.episodes.copy()
            table["start"] += offset
            tables.append(table)
        self.episodes: np.ndarray = np.concatenate(tables)
        self.n_episodes, self.n_frames = len(self.episodes), int(frames.sum())

    def locate(self, episode: int) -> tuple[int, int]:
        """(file index, episode index inside that file) of global episode ``episode``."""
        i = int(np.searchsorted(self.first_episodes, episode, side="right")) - 1
        return i, int(episode - self.first_episodes[i])

    def read(self, field: str, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` (global indices) of ``field``; the range must lie in one file."""
        i = max(int(np.searchsorted(self.offsets, start, side="right")) - 1, 0)
        offset = int(self.offsets[i])
        if stop - offset > self.files[i].n_frames:
            raise IndexError(f"frames [{start}, {stop}) cross from {self.files[i].path} into the next file")
        return self.files[i].read(field, start - offset, stop - offset)

    def take(self, field: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at arbitrary global indices (1-D, any order), each file read once with :meth:`EpisodeFile.take`."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_frames):
            raise IndexError(f"frame index out of range for {self.n_frames} committed frames")
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), *self.files[0].field(field).shape), self.files[0].field(field).dtype)
        for i in np.unique(which):
            mask = which == i
            out[mask] = self.files[i].take(field, idx[mask] - self.offsets[i])
        return out

    def episode(self, i: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        f, local = self.locate(i % self.n_episodes if i < 0 else i)
        return self.files[f].episode(local, fields)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "EpisodeFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def split_paths(paths: str) -> list[str]:
    """A comma-separated list of files (``a.h5,b.h5``), as stage options take several."""
    return [p.strip() for p in paths.split(",") if p.strip()]


def open_rollouts(path: str | os.PathLike) -> EpisodeFile:
    """Open and validate a rollouts file (``worldmodels collect``)."""
    return EpisodeFile(path, ROLLOUTS)


def open_latents(path: str | os.PathLike) -> EpisodeFile:
    """Open and validate a latents file (``worldmodels encode``)."""
    return EpisodeFile(path, LATENTS)
