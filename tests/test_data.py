"""HDF5 episode files: exact round trips, validation of damaged files, refusals, and kill -9 safety."""

import json
import multiprocessing as mp
import pickle
import random
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from worldmodels.data import LATENTS, ROLLOUTS, EpisodeWriter, open_latents, open_rollouts
from worldmodels.errors import WorldModelsError

BOX = {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}
ATTRS = dict(env="carracing", env_kwargs={"a": [1, 2]}, action_space=BOX, policy="brownian", seed=3, max_steps=None)
DISCRETE_ATTRS = dict(ATTRS, env="doom-takecover", action_space={"type": "discrete", "n": 3}, policy="repeat")


def episode(i, discrete=False, max_len=300):
    """Deterministic synthetic episode ``i`` (contents depend only on i). As docs/data.md says, only the last
    frame ends it: terminated (the MDP's end) or truncated (a time limit), one of them, drawn per episode."""
    rng = np.random.default_rng(i)
    n = int(rng.integers(1, max_len))
    action = rng.integers(0, 3, n) if discrete else rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    last = np.arange(n) == n - 1
    terminated = bool(rng.random() < 0.5)
    return dict(obs=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8), action=action,
                reward=rng.normal(size=n).astype(np.float32), terminated=last & terminated,
                truncated=last & (not terminated))


def write(path, n, attrs=ATTRS, discrete=False):
    with EpisodeWriter(path, ROLLOUTS, attrs) as w:
        for i in range(w.n_episodes, n):
            w.append(episode(i, discrete), seed=100 + i, level=i)
    return path


def assert_episode_equal(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == np.asarray(want[key]).dtype or key == "action", key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("discrete", [False, True])
def test_round_trip_is_exact(tmp_path, discrete):
    attrs = DISCRETE_ATTRS if discrete else ATTRS
    path = write(tmp_path / "r.h5", 3, attrs, discrete)
    eps = [episode(i, discrete) for i in range(3)]
    with open_rollouts(path) as f:
        assert f.n_episodes == len(f) == 3 and f.n_frames == sum(len(e["obs"]) for e in eps)
        assert f.attrs["env_kwargs"] == {"a": [1, 2]} and f.attrs["max_steps"] is None
        assert f.attrs["action_space"] == attrs["action_space"] and f.attrs["schema_version"] == 1
        assert list(f.episodes["seed"]) == [100, 101, 102] and list(f.episodes["level"]) == [0, 1, 2]
        assert f.field("action").dtype == (np.int64 if discrete else np.float32)
        for got, want in zip(f, eps):
            assert_episode_equal(got, want)
        assert_episode_equal(f.episode(-1, ["obs"]), {"obs": eps[-1]["obs"]})
        # global frame indices: read() spans episode boundaries, take() any order with repeats
        every = {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}
        np.testing.assert_array_equal(f.read("reward", 5, f.n_frames - 2), every["reward"][5:-2])
        idx = np.random.default_rng(0).integers(0, f.n_frames, (9, 4))
        idx[0, 0] = idx[0, 1]
        for key in ("obs", "action", "terminated"):
            np.testing.assert_array_equal(f.take(key, idx), every[key][idx])
        assert f.take("obs", []).shape == (0, 64, 64, 3)
        with pytest.raises(IndexError):
            f.take("obs", [f.n_frames])
        with pytest.raises(IndexError):
            f.read("obs", 0, f.n_frames + 1)


def test_latents_schema_and_required_attrs(tmp_path):
    attrs = dict(env="carracing", action_space=BOX, z_dim=4, vae_checkpoint="runs/x/vae/checkpoint.pt",
                 vae_id="abc", rollouts="data/carracing/rollouts.h5")
    mu = np.arange(20, dtype=np.float32).reshape(5, 4)
    ep = dict(mu=mu, logvar=-mu, action=np.zeros((5, 3), np.float32), reward=np.ones(5, np.float32),
              terminated=np.zeros(5, bool), truncated=np.eye(5, dtype=bool)[-1])
    with EpisodeWriter(tmp_path / "l.h5", LATENTS, attrs) as w:
        w.append(ep, seed=1)
    with open_latents(tmp_path / "l.h5") as f:
        assert f.attrs["vae_id"] == "abc" and f.fields == ["mu", "logvar", "action", "reward", "terminated",
                                                            "truncated"]
        assert_episode_equal(f.episode(0), ep)
    with pytest.raises(WorldModelsError, match="missing: vae_id"):
        EpisodeWriter(tmp_path / "m.h5", LATENTS, {k: v for k, v in attrs.items() if k != "vae_id"})
    with pytest.raises(WorldModelsError, match="a worldmodels.latents file, expected worldmodels.rollouts"):
        open_rollouts(tmp_path / "l.h5")


def test_append_rejects_malformed_episodes(tmp_path):
    with EpisodeWriter(tmp_path / "r.h5", ROLLOUTS, ATTRS) as w:
        good = episode(0)
        for bad, match in [({k: v for k, v in good.items() if k != "reward"}, "do not match"),
                           (dict(good, obs=good["obs"][:, :32]), "shape"),
                           (dict(good, reward=good["reward"][:-1]), "frames"),
                           (dict(good, terminated=good["reward"]), "dtype"),
                           ({k: v[:0] for k, v in good.items()}, "at least one frame")]:
            with pytest.raises(WorldModelsError, match=match):
                w.append(bad, seed=0)
        assert w.n_episodes == 0
        w.append(good, seed=0)
    with open_rollouts(tmp_path / "r.h5") as f:
        assert f.n_episodes == 1 and f.n_frames == len(good["obs"])


def _set(ep, key, index, value):
    """A copy of episode ``ep`` with ``ep[key][index] = value``."""
    a = np.array(ep[key], copy=True)
    a[index] = value
    return dict(ep, **{key: a})


def _ending(ep, terminated, truncated):
    """A copy of ``ep`` with these (L,) end flags."""
    n = len(ep["reward"])
    return dict(ep, terminated=np.asarray(terminated, bool)[:n], truncated=np.asarray(truncated, bool)[:n])


LAST, NONE = [False] * 5 + [True], [False] * 6
LATENT_ATTRS_4 = dict(env="carracing", action_space=BOX, z_dim=4, vae_checkpoint="c", vae_id="i", rollouts="r")


def _good(schema):
    """(attrs, a 6-frame episode that follows docs/data.md) for rollouts with Box or Discrete actions, or latents."""
    rng = np.random.default_rng(0)
    steps = dict(reward=rng.normal(size=6).astype(np.float32), terminated=np.array(LAST), truncated=np.array(NONE))
    if schema == "latents":
        return LATENT_ATTRS_4, dict(steps, mu=rng.normal(size=(6, 4)).astype(np.float32),
                                    logvar=np.full((6, 4), -2.0, np.float32),
                                    action=rng.uniform(-1, 1, (6, 3)).astype(np.float32))
    obs = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    if schema == "discrete":
        return DISCRETE_ATTRS, dict(steps, obs=obs, action=np.array([0, 1, 2, 2, 1, 0]))
    return ATTRS, dict(steps, obs=obs, action=rng.uniform(-1, 1, (6, 3)).astype(np.float32))


BAD_EPISODES = [  # (schema, change, the error's text)
    ("box", lambda e: _ending(e, [True] + LAST[1:], NONE), "field terminated: set at frame 0 of a 6-frame episode"),
    ("box", lambda e: _ending(e, LAST, [False, False, True, False, False, False]), "field truncated: set at frame 2"),
    ("box", lambda e: _ending(e, [False, False, True, False, False, True], NONE), "field terminated: set at frame 2"),
    ("box", lambda e: _ending(e, LAST, LAST), "both terminated and truncated"),
    ("box", lambda e: _ending(e, NONE, NONE), r"last frame \(5\) has neither terminated nor truncated"),
    ("box", lambda e: _set(e, "reward", 3, np.nan), "field reward: nan at frame 3"),
    ("box", lambda e: _set(e, "reward", 4, -np.inf), "field reward: -inf at frame 4"),
    ("box", lambda e: dict(e, reward=np.array([0, 0, 1e300, 0, 0, 0])), "field reward: inf at frame 2"),  # as float32
    ("box", lambda e: _set(e, "action", (1, 2), np.nan), "field action: nan at frame 1"),
    ("box", lambda e: _set(e, "action", (5, 0), np.inf), "field action: inf at frame 5"),
    ("discrete", lambda e: _set(e, "action", 1, 3), r"discrete action 3 at frame 1 is outside \[0, 3\)"),
    ("discrete", lambda e: _set(e, "action", 4, -1), r"discrete action -1 at frame 4 is outside \[0, 3\)"),
    ("discrete", lambda e: _set(e, "reward", 0, np.nan), "field reward: nan at frame 0"),
    ("latents", lambda e: _set(e, "mu", (2, 3), np.nan), "field mu: nan at frame 2"),
    ("latents", lambda e: _set(e, "logvar", (5, 1), np.inf), "field logvar: inf at frame 5"),
    ("latents", lambda e: _ending(e, LAST, [False] * 4 + [True, False]), "field truncated: set at frame 4"),
]


@pytest.mark.parametrize("schema,change,match", BAD_EPISODES,
                         ids=[f"{s}-{m.split(':')[0].split(' ')[-1]}-{i}" for i, (s, _, m) in enumerate(BAD_EPISODES)])
def test_append_refuses_episodes_against_the_data_rules_and_writes_nothing(tmp_path, schema, change, match):
    """docs/data.md: only an episode's last frame ends it (terminated or truncated, not both), discrete actions
    lie in [0, n), rewards, Box actions, mu and logvar are finite. A bad episode is one error line, before any
    frame is written: the file keeps the episodes and frames it had, and the writer goes on."""
    attrs, good = _good(schema)
    path = tmp_path / "f.h5"
    with EpisodeWriter(path, LATENTS if schema == "latents" else ROLLOUTS, attrs) as w:
        w.append(good, seed=0)
        with pytest.raises(WorldModelsError, match=match) as err:
            w.append(change(good), seed=1)
        assert "\n" not in str(err.value)
        assert (w.n_episodes, w.n_frames) == (1, 6)
        assert all(w._file[name].shape[0] == 6 for name in good)  # no frame went in either
        w.append(_ending(good, NONE, LAST), seed=2)  # the writer goes on: a cut episode is fine
    with (open_latents if schema == "latents" else open_rollouts)(path) as f:
        assert f.n_episodes == 2 and f.n_frames == 12 and list(f.episodes["seed"]) == [0, 2]
        assert_episode_equal(f.episode(0), good)


def test_one_frame_episodes_end_on_their_only_frame(tmp_path):
    _, good = _good("box")
    one = {k: v[-1:] for k, v in good.items()}
    with EpisodeWriter(tmp_path / "f.h5", ROLLOUTS, ATTRS) as w:
        w.append(one, seed=0)
        w.append(_ending(one, [False], [True]), seed=1)
        with pytest.raises(WorldModelsError, match=r"last frame \(0\) has neither"):
            w.append(_ending(one, [False], [False]), seed=2)
        assert w.n_episodes == 2


@pytest.mark.parametrize("discrete", [False, True])
def test_writer_built_chunks_read_as_hdf5s_own(tmp_path, discrete):
    # The writer deflates gzip chunks itself (ISA-L) and rewrites the partial last chunk at each episode;
    # across a close and reopen mid-chunk, the file must read exactly like one HDF5 compressed itself.
    attrs = DISCRETE_ATTRS if discrete else ATTRS
    ours, theirs = tmp_path / "ours.h5", tmp_path / "theirs.h5"
    for stop in (3, 7):  # reopen between episode 3 and 4: a partial chunk carried over
        with EpisodeWriter(ours, ROLLOUTS, attrs) as w:
            assert set(w._gzip) == ({"obs", "action", "terminated", "truncated"} if discrete
                                    else {"obs", "terminated", "truncated"})
            for i in range(w.n_episodes, stop):
                w.append(episode(i, discrete, max_len=150), seed=i)
    with EpisodeWriter(theirs, ROLLOUTS, attrs, hdf5_compresses=True) as w:
        assert not w._gzip
        for i in range(7):
            w.append(episode(i, discrete, max_len=150), seed=i)
    with open_rollouts(ours) as a, open_rollouts(theirs) as b:
        assert a.n_frames == b.n_frames and a.n_frames % 64 != 0
        for key in a.fields:
            np.testing.assert_array_equal(a.read(key, 0, a.n_frames), b.read(key, 0, b.n_frames), err_msg=key)
        for i in range(7):
            assert_episode_equal(a.episode(i), episode(i, discrete, max_len=150))
    with h5py.File(ours, "r") as f:  # stored as HDF5's gzip filter: any HDF5 reader decodes it
        assert f["obs"].compression == "gzip" and f["obs"].chunks[0] == 64


def test_resume_appends_after_committed_episodes(tmp_path):
    path = write(tmp_path / "r.h5", 2)
    with EpisodeWriter(path, ROLLOUTS, ATTRS) as w:
        assert w.n_episodes == 2
        # an append interrupted after its frames were written but before the commit leaves extra frames
        w._file["reward"].resize(w.n_frames + 7, axis=0)
    write(path, 4)
    with open_rollouts(path) as f:
        assert f.n_episodes == 4 and f._file["reward"].shape[0] == f.n_frames
        for i in range(4):
            assert_episode_equal(f.episode(i), episode(i))


def _damage(path, how):
    with h5py.File(path, "r+") as f:
        if how == "missing dataset":
            del f["reward"]
        elif how == "wrong dtype":
            del f["reward"]
            f.create_dataset("reward", data=np.zeros(f["obs"].shape[0], np.float64))
        elif how == "wrong shape":
            del f["action"]
            f.create_dataset("action", data=np.zeros((f["obs"].shape[0], 2), np.float32))
        elif how == "wrong schema":
            f.attrs["schema"] = "someone.else"
        elif how == "wrong version":
            f.attrs["schema_version"] = 99
        elif how == "table gap":
            f["episodes"][1] = (f["episodes"][1]["start"] + 1, *list(f["episodes"][1])[1:])
        elif how == "table past data":
            f["terminated"].resize(f["terminated"].shape[0] - 1, axis=0)
        elif how == "missing attr":
            del f.attrs["action_space"]


@pytest.mark.parametrize("how,match", [
    ("missing dataset", "missing dataset 'reward'"), ("wrong dtype", "dtype float64, expected float32"),
    ("wrong shape", r"shape \(2,\), expected \(3,\)"), ("wrong schema", "a someone.else file"),
    ("wrong version", "version 99"), ("table gap", "inconsistent"), ("table past data", "covers"),
    ("missing attr", "missing: action_space")])
def test_damaged_files_give_one_clear_error(tmp_path, how, match):
    path = write(tmp_path / "r.h5", 2)
    _damage(path, how)
    with pytest.raises(WorldModelsError, match=match):
        open_rollouts(path)


def test_missing_not_hdf5_and_truncated_files(tmp_path):
    with pytest.raises(WorldModelsError, match="no such file"):
        open_rollouts(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(WorldModelsError, match="not an HDF5 file"):
        open_rollouts(tmp_path / "text.h5")
    path = write(tmp_path / "r.h5", 3)
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 100):
        (tmp_path / "cut.h5").write_bytes(data[:keep])
        with pytest.raises(WorldModelsError, match="truncated or corrupt"):
            open_rollouts(tmp_path / "cut.h5")


PROBE = textwrap.dedent("""
    import json, sys, time
    from worldmodels.data import open_latents, open_rollouts
    from worldmodels.errors import WorldModelsError
    for spec in json.loads(sys.argv[1]):
        t = time.perf_counter()
        try:
            with (open_latents if spec["schema"] == "latents" else open_rollouts)(spec["path"]) as f:
                for i in range(f.n_episodes):
                    f.episode(i)
            outcome = "ok"
        except WorldModelsError as err:
            outcome = "error: " + str(err)
        print(json.dumps(dict(spec, outcome=outcome, seconds=time.perf_counter() - t)), flush=True)
""")


def probe(specs, timeout=30):
    """Open and read every file of ``specs`` in a child process, so that a hang fails the test instead of
    blocking it. Anything but a WorldModelsError (a traceback) fails too."""
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(specs)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        done = (err.stdout or b"").count(b"\n" if isinstance(err.stdout, bytes) else "\n")
        pytest.fail(f"hang: {specs[done]} still reading after {timeout} s", pytrace=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def assert_fails_fast(result, seconds=5.0):
    assert result["outcome"].startswith("error: ") and "truncated or corrupt" in result["outcome"], result
    assert "\n" not in result["outcome"] and result["seconds"] < seconds, result


LATENT_ATTRS = dict(env="carracing", action_space=BOX, z_dim=32, vae_checkpoint="runs/x/vae/checkpoint.pt",
                    vae_id="abc", rollouts="data/carracing/rollouts.h5")


def latent_episode(i):
    rng = np.random.default_rng(i)
    n = int(rng.integers(1, 300))
    mu = rng.normal(size=(n, 32)).astype(np.float32)
    return dict(mu=mu, logvar=-mu, action=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
                reward=rng.normal(size=n).astype(np.float32), terminated=np.zeros(n, bool),
                truncated=np.eye(n, dtype=bool)[-1])


def file_bytes(path, schema, writer):
    """The bytes of a 3-episode file: ``closed`` by its writer, or copied while the writer has it ``open``
    (what a kill -9 leaves: HDF5's "open for writing" flags set and a stale end address in the superblock)."""
    attrs, make = (ATTRS, episode) if schema is ROLLOUTS else (LATENT_ATTRS, latent_episode)
    with EpisodeWriter(path, schema, attrs) as w:
        for i in range(3):
            w.append(make(i), seed=100 + i, level=i)
        if writer == "open":
            return path.read_bytes()
    return path.read_bytes()


@pytest.mark.parametrize("writer", ["closed", "open"])
@pytest.mark.parametrize("schema", [ROLLOUTS, LATENTS], ids=["rollouts", "latents"])
def test_cut_files_fail_fast_wherever_they_are_cut(tmp_path, schema, writer):
    """A file cut anywhere is one WorldModelsError within seconds. A closed file is refused from its
    superblock before HDF5 opens it; an open one shows its damage in HDF5's SWMR reads, whose retries of
    metadata that fails its checksum used to last more than ten minutes (the first 20,000 bytes of a file)."""
    data = file_bytes(tmp_path / "src.h5", schema, writer)
    n, kind = len(data), schema.name.split(".")[1]
    specs = []
    for what, keep in {"whole": n, "20000 bytes": 20_000, "50 %": n // 2, "90 %": n * 9 // 10,
                       "all but 8 bytes": n - 8}.items():
        path = tmp_path / f"{what.replace(' ', '_')}.h5"
        path.write_bytes(data[:keep])
        specs.append(dict(schema=kind, path=str(path), cut=what))
    whole, *cut = probe(specs)
    assert whole["outcome"] == "ok", whole
    for result in cut:
        assert_fails_fast(result)
        if writer == "closed":
            assert "when it was last closed" in result["outcome"], result


def test_damaged_chunk_is_one_error_naming_the_frames(tmp_path):
    """A damaged compressed chunk in the middle: the file opens (its first and last frames decode), frames
    elsewhere read exactly, and reading the damaged frames is one WorldModelsError naming them."""
    path = write(tmp_path / "r.h5", 3)
    obs = np.concatenate([episode(i)["obs"] for i in range(3)])
    with h5py.File(path, "r") as f:
        ds = f["obs"]
        info, chunk = ds.id.get_chunk_info(ds.id.get_num_chunks() // 2), ds.chunks[0]
    lo = info.chunk_offset[0]
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(range(256)) * 4)
    with open_rollouts(path) as f:
        np.testing.assert_array_equal(f.read("obs", 0, lo), obs[:lo])
        np.testing.assert_array_equal(f.take("obs", [lo + chunk, 0]), obs[[lo + chunk, 0]])
        with pytest.raises(WorldModelsError, match=rf"r.h5: reading obs frames \[{lo + 3}, {lo + 5}\) failed "
                                                   r"\(.*\); the file is truncated or corrupt$"):
            f.read("obs", lo + 3, lo + 5)
        with pytest.raises(WorldModelsError, match=rf"reading obs frames in \[1, {lo + 8}\) failed"):
            f.take("obs", [lo + 7, 1])


def test_damaged_metadata_fails_fast(tmp_path):
    """Bytes overwritten inside the root group's object header (metadata with a checksum), length intact."""
    path = write(tmp_path / "r.h5", 2)
    head = path.read_bytes()[:48]
    assert head[:8] == b"\x89HDF\r\n\x1a\n" and head[8] == 3  # superblock v3 (libver="latest")
    root = int.from_bytes(head[36:44], "little")  # root object header address, after base, ext, eof
    with open(path, "r+b") as fh:
        fh.seek(root + 16)
        fh.write(b"\xa5" * 16)
    [result] = probe([dict(schema="rollouts", path=str(path))])
    assert_fails_fast(result)


def test_cli_on_cut_and_damaged_files_is_one_line_and_exit_1(tmp_path):
    """train-vae on the file cut at 20,000 bytes (it used to hang) and on one whose damaged chunk is found
    while streaming: one error line each, exit status 1, no traceback, in seconds."""
    good = write(tmp_path / "r.h5", 3)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:20_000])
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(good.read_bytes())
    with h5py.File(damaged, "r") as f:
        info = f["obs"].id.get_chunk_info(f["obs"].id.get_num_chunks() // 2)
    with open(damaged, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(range(256)) * 4)
    start = time.monotonic()
    procs = {data: subprocess.Popen([sys.executable, "-m", "worldmodels", "train-vae", "--data", str(data), "--out",
                                     str(tmp_path / data.stem), "--epochs", "1", "--device", "cpu"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for data in (cut, damaged)}
    try:
        outs = {data: proc.communicate(timeout=60) for data, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    assert time.monotonic() - start < 30
    for data, proc in procs.items():
        err = outs[data][1]
        assert proc.returncode == 1, err
        assert "Traceback" not in err, err
        errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].strip().startswith(f"worldmodels train-vae: error: {data}: "), err
        assert errors[0].strip().endswith("truncated or corrupt"), err
    assert outs[cut][1].count("\n") == 1  # nothing but the one line
    assert "reading obs frames" in outs[damaged][1]


def test_refusals_never_overwrite(tmp_path):
    path = write(tmp_path / "r.h5", 1)
    with EpisodeWriter(path, ROLLOUTS, ATTRS):
        with pytest.raises(WorldModelsError, match="already being written"):
            EpisodeWriter(path, ROLLOUTS, ATTRS)
    for other in (dict(ATTRS, env="procgen:coinrun"), dict(ATTRS, seed=4), dict(ATTRS, env_kwargs={}),
                  dict(ATTRS, policy="random"), dict(ATTRS, max_steps=20)):
        with pytest.raises(WorldModelsError, match="holds other data.*refusing to overwrite"):
            EpisodeWriter(path, ROLLOUTS, other)
    before = path.read_bytes()
    text = tmp_path / "notes.h5"
    text.write_text("precious")
    with pytest.raises(WorldModelsError, match="not an HDF5 file.*refusing to overwrite"):
        EpisodeWriter(text, ROLLOUTS, ATTRS, fresh=True)
    latents = dict(env="carracing", action_space=BOX, z_dim=4, vae_checkpoint="c", vae_id="i", rollouts=str(path))
    with pytest.raises(WorldModelsError, match="worldmodels.rollouts file, expected worldmodels.latents"):
        EpisodeWriter(path, LATENTS, latents)
    assert text.read_text() == "precious" and path.read_bytes() == before
    # fresh=True starts over, but only on a file of the same schema
    with EpisodeWriter(path, ROLLOUTS, dict(ATTRS, seed=9), fresh=True) as w:
        assert w.n_episodes == 0
    assert open_rollouts(path).attrs["seed"] == 9


def _read_first_obs(f):
    return f.episode(0)["obs"].sum()


def test_reader_crosses_processes_by_path(tmp_path):
    path = write(tmp_path / "r.h5", 2)
    f = open_rollouts(path)
    copy = pickle.loads(pickle.dumps(f))
    assert copy.n_episodes == 2 and np.array_equal(copy.episode(1)["obs"], f.episode(1)["obs"])
    with mp.get_context("fork").Pool(1) as pool:  # a forked copy reopens the file instead of sharing the handle
        assert pool.apply(_read_first_obs, (f,)) == episode(0)["obs"].sum()
    assert _read_first_obs(f) == episode(0)["obs"].sum()


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_data import ATTRS, episode
    from worldmodels.data import ROLLOUTS, EpisodeWriter
    with EpisodeWriter(sys.argv[1], ROLLOUTS, ATTRS) as w:
        print(w.n_episodes, flush=True)
        for i in range(w.n_episodes, int(sys.argv[2])):
            w.append(episode(i, max_len=40), seed=100 + i, level=i)
""")


def test_kill_9_at_random_moments_keeps_committed_episodes(tmp_path):
    path, endless = tmp_path / "r.h5", 10**6
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(__import__("pathlib").Path(__file__).parent)))
    rng = random.Random(0)
    counts = []
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(endless)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        proc.stdout.readline()  # the writer is open (and, after a crash, recovered): kill it while it appends
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        with open_rollouts(path) as f:
            counts.append(f.n_episodes)
            for i in range(f.n_episodes):  # every committed episode is whole and exact
                assert_episode_equal(f.episode(i), episode(i, max_len=40))
    print("committed after each kill:", counts)
    assert counts == sorted(counts) and counts[-1] > 0, counts
    n_target = counts[-1] + 10
    subprocess.run([sys.executable, str(script), str(path), str(n_target)], check=True, capture_output=True)
    with open_rollouts(path) as f:
        assert f.n_episodes == n_target
        assert list(f.episodes["seed"]) == [100 + i for i in range(n_target)]
        for i in range(n_target):
            assert_episode_equal(f.episode(i), episode(i, max_len=40))
    assert not list(tmp_path.glob(".r.h5.*.tmp"))


def test_reader_in_another_process_never_blocks_the_writer(tmp_path):
    path = write(tmp_path / "r.h5", 2)
    code = ("import sys; from worldmodels.data import open_rollouts; f = open_rollouts(sys.argv[1]); "
            "print(f.n_episodes, flush=True); sys.stdin.readline(); "
            "print(f.episode(1)['obs'].sum(), f.n_episodes, open_rollouts(sys.argv[1]).n_episodes)")
    reader = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert reader.stdout.readline().strip() == "2"
    write(path, 3)  # resumes and commits while the reader holds the file open
    out, _ = reader.communicate("go\n", timeout=60)
    # the open reader keeps its snapshot (2 episodes, readable); a new one sees the third episode
    assert out.split() == [str(episode(1)["obs"].sum()), "2", "3"]
    with pytest.raises(WorldModelsError, match="open for reading in this process"):
        with open_rollouts(path):
            EpisodeWriter(path, ROLLOUTS, ATTRS)


def test_recovery_keeps_an_older_files_chunking(tmp_path):
    """A killed file written with other chunks/filters (an older version) is recovered exactly."""
    path = tmp_path / "r.h5"
    script = tmp_path / "old_writer.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        import dataclasses
        from test_data import ATTRS, episode
        from worldmodels.data import ROLLOUTS, EpisodeWriter
        layout = ROLLOUTS.layout
        old = dataclasses.replace(ROLLOUTS, layout=lambda a: [dataclasses.replace(f, chunk_frames=100,
                                  compression=("lzf", None) if f.compression else None) for f in layout(a)])
        with EpisodeWriter(sys.argv[1], old, ATTRS) as w:
            for i in range(3):
                w.append(episode(i), seed=100 + i, level=i)
            os._exit(0)  # like kill -9: no close, HDF5's "open for writing" flags stay set
    """))
    subprocess.run([sys.executable, str(script), str(path)], check=True)
    write(path, 4)  # recovers (copying stored chunks), then appends with the file's own chunking
    with open_rollouts(path) as f:
        assert f.n_episodes == 4 and f._file["obs"].chunks[0] == 100 and f._file["obs"].compression == "lzf"
        for i in range(4):
            assert_episode_equal(f.episode(i), episode(i))
