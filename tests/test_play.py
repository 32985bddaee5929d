"""Env backends (reference / fast / auto) and the batched real-env agent (worldmodels.play)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_controller import make_tiny_run, stage_cfg
from worldmodels.envs import episode_seed, make, make_batch, resolve_backend
from worldmodels.envs.fast import fast_seed
from worldmodels.errors import WorldModelsError
from worldmodels.stages import train_controller as tc

try:
    import envpool  # noqa: F401
    HAS_ENVPOOL = True
except ImportError:
    HAS_ENVPOOL = False
needs_envpool = pytest.mark.skipif(not HAS_ENVPOOL, reason="the fast backend needs envpool (Linux x86_64, CPython >= 3.11)")


def test_fast_seeds_fit_int32_and_keep_purposes_disjoint():
    blocks = {}
    for purpose in ("collect", "train", "eval"):
        seeds = {fast_seed(episode_seed(s, i, purpose)) for s in (0, 1, 2**24 - 1) for i in (0, 1, 7, 2**32 - 1)}
        assert all(0 <= x < 2**31 for x in seeds)
        blocks[purpose] = {x >> 29 for x in seeds}
        # consecutive episodes of one run never share a track
        run = [fast_seed(episode_seed(5, i, purpose)) for i in range(1000)]
        assert len(set(run)) == 1000
    assert blocks == {"collect": {1}, "train": {2}, "eval": {3}}
    assert fast_seed(12345) == 12345  # a plain seed stays itself (block 0)


def test_auto_backend_falls_back_with_one_notice_and_fast_refuses(monkeypatch, capsys):
    import sys

    import worldmodels.envs.fast as fast

    assert resolve_backend("procgen:coinrun", "auto") == "reference"  # no fast ProcGen: no notice either
    assert capsys.readouterr().err == ""
    with pytest.raises(WorldModelsError, match="no fast backend for 'doom-takecover'"):
        resolve_backend("doom-takecover", "fast")
    with pytest.raises(WorldModelsError, match="unknown env backend"):
        resolve_backend("carracing", "turbo")
    monkeypatch.setitem(sys.modules, "envpool", None)  # as on a machine without envpool's wheels
    monkeypatch.setattr(fast, "_NOTICED", set())
    assert resolve_backend("carracing", "auto") == "reference"
    assert resolve_backend("carracing", "auto") == "reference"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "envpool is not installed" in err  # one line, once
    with pytest.raises(WorldModelsError, match="envpool is not installed"):
        make_batch("carracing", "fast")


def _play_fixed(envs, seeds, steps, action=(0.1, 0.6, 0.0)):
    obs, _ = envs.reset(seeds)
    out = [obs]
    for _ in range(steps):
        o, r, _, _ = envs.step([np.asarray(action, np.float32)] * len(seeds), np.arange(len(seeds)))
        out.append(o)
    return np.stack(out, 1), r


@pytest.mark.parametrize("backend", ["reference", pytest.param("fast", marks=needs_envpool)])
def test_a_slot_plays_its_own_seed_whatever_the_batch(backend):
    seeds = [episode_seed(0, i, "eval") for i in range(3)]
    frames, reward = _play_fixed(make_batch("carracing", backend), seeds, 5)
    alone, alone_reward = _play_fixed(make_batch("carracing", backend), [seeds[2], seeds[0]], 5)
    np.testing.assert_array_equal(alone[0], frames[2])
    np.testing.assert_array_equal(alone[1], frames[0])
    assert alone_reward[0] == reward[2] and alone_reward[1] == reward[0]
    assert not np.array_equal(frames[0, 0], frames[1, 0])  # different seeds, different tracks
    single = make("carracing", backend)
    first, _ = single.reset(seed=seeds[1])
    np.testing.assert_array_equal(first, frames[1, 0])  # make() and make_batch() agree
    single.close()


@needs_envpool
def test_fast_frames_look_like_the_reference_ones():
    # Same preprocessing, another track generator: statistics agree, pixels of one seed do not.
    fast, _ = _play_fixed(make_batch("carracing", "fast"), [episode_seed(0, i, "eval") for i in range(4)], 60)
    ref, _ = _play_fixed(make_batch("carracing", "reference"), [episode_seed(0, i, "eval") for i in range(4)], 60)
    assert fast.shape == ref.shape and fast.dtype == ref.dtype == np.uint8
    late_f, late_r = fast[:, 55:].astype(float), ref[:, 55:].astype(float)  # past the zoom-in
    assert abs(late_f.mean() - late_r.mean()) < 10
    np.testing.assert_allclose(late_f.mean(axis=(0, 1, 2, 3)), late_r.mean(axis=(0, 1, 2, 3)), atol=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from worldmodels.agent import load_world

    return load_world(make_tiny_run(tmp_path_factory.mktemp("play")), "zh")


def _agent(world):
    from worldmodels.play import BatchAgent

    return BatchAgent(world.vae, world.mdrnn, world.action_map, world.obs_mode, world.input_dim)


def test_batched_members_play_like_separate_episodes(world):
    rng = np.random.default_rng(0)
    params = rng.normal(0, 0.5, (3, world.n_params))
    seeds = [episode_seed(1, i, "train") for i in range(3)]
    agent = _agent(world)
    together = agent.play(make_batch("carracing"), params, seeds, max_steps=12, record=[False, True, False])
    again = agent.play(make_batch("carracing"), params, seeds, max_steps=12, record=[False, True, False])
    assert [r["return"] for r in together] == [r["return"] for r in again]  # same call, same returns
    assert together[1]["frames"].shape == (13, 64, 64, 3) and together[0]["frames"] is None
    for i in (2, 0):  # each member alone (a batch of one), in another order
        alone = agent.play(make_batch("carracing"), params[i:i + 1], seeds[i:i + 1], max_steps=12)[0]
        assert alone["length"] == together[i]["length"] == 12
        assert alone["return"] == pytest.approx(together[i]["return"], abs=1e-3)
    assert len({round(r["return"], 6) for r in together}) == 3


def test_z_noise_belongs_to_the_episode(world):
    from worldmodels.play import noise_keys

    agent = _agent(world)
    frames = np.random.default_rng(1).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    t = torch.tensor([3, 3])
    z = agent.encode(frames, noise_keys([11, 22]), t)
    swapped = agent.encode(frames[::-1].copy(), noise_keys([22, 11]), t)
    torch.testing.assert_close(z, swapped.flip(0))
    later = agent.encode(frames, noise_keys([11, 22]), t + 1)
    assert not torch.allclose(z, later)  # a new draw at every step
    agent.sample_z = False
    mu = agent.encode(frames, noise_keys([11, 22]), t)
    torch.testing.assert_close(mu, world.vae.encode(torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255)[0])


@pytest.mark.parametrize("backend", ["reference", pytest.param("fast", marks=needs_envpool)])
def test_real_training_is_independent_of_workers_and_records_its_backend(tmp_path, backend):
    run = make_tiny_run(tmp_path)
    curves = {}
    for workers in (0, 2):
        tc.run(stage_cfg(run, where="real", workers=workers, env_backend=backend, env_batch=3, fresh=True,
                         eval_every=0))
        state = torch.load(run / "controller" / "checkpoint.pt", weights_only=False)
        curves[workers] = (state["best"]["fitness"], state["mean"].tolist())
        assert state["identity"]["env_backend"] == backend
    assert curves[0] == curves[2]
    other = "fast" if backend == "reference" else "reference"
    with pytest.raises(WorldModelsError, match="env_backend"):  # resuming on another env is refused
        tc.run(stage_cfg(run, where="real", workers=0, env_backend=other, env_batch=3, generations=3))


def test_each_episode_draws_its_own_z_whatever_its_slot(world, monkeypatch):
    from worldmodels.play import BatchAgent, noise_keys

    seen: dict = {}
    real = BatchAgent.sample

    def spy(self, mu, logvar, keys, t):
        z = real(self, mu, logvar, keys, t)
        for k, row, step in zip(keys.tolist(), z, t.tolist()):
            seen.setdefault(k, {})[step] = row.clone()
        return z

    monkeypatch.setattr(BatchAgent, "sample", spy)
    params = np.random.default_rng(2).normal(0, 0.5, (3, world.n_params))
    seeds = [episode_seed(4, i, "train") for i in range(3)]
    agent = _agent(world)
    agent.play(make_batch("carracing"), params, seeds, max_steps=6)
    together = dict(seen)
    seen.clear()
    agent.play(make_batch("carracing"), params[2:], seeds[2:], max_steps=6)  # slot 0 now
    key = int(noise_keys(seeds[2:])[0])
    assert set(seen) == {key} and sorted(seen[key]) == list(range(6))
    for step, z in seen[key].items():
        torch.testing.assert_close(z, together[key][step], atol=1e-5, rtol=0)
    assert not torch.allclose(together[int(noise_keys(seeds[:1])[0])][3], together[key][3])


@needs_envpool
def test_a_stalled_rollout_is_credited_the_return_of_its_full_episode(world):
    """With stall_steps a member that goes 60 steps without a new tile stops there and is credited -0.1 for
    each remaining step: what the full episode scores when the car neither finds the road again nor leaves
    the playfield (-100, which the credit cannot foresee; docs/controller.md)."""
    rng = np.random.default_rng(3)
    params = np.concatenate([rng.normal(0, 0.5, (5, world.n_params)), np.zeros((1, world.n_params))])
    seeds = [episode_seed(6, i, "train") for i in range(6)]
    agent = _agent(world)
    full = agent.play(make_batch("carracing", "fast"), params, seeds, max_steps=300)
    cut = agent.play(make_batch("carracing", "fast"), params, seeds, max_steps=300, stall_steps=60)
    assert not any(r["stalled"] for r in full)
    compared = 0
    for a, b in zip(full, cut):
        assert b["length"] < a["length"] if b["stalled"] else b["length"] == a["length"]
        if not b["stalled"] or a["length"] == 300:  # not stalled, or the full episode ran to the time limit
            assert b["return"] == pytest.approx(a["return"], abs=1e-3)
            compared += b["stalled"]
    assert compared >= 2
    with pytest.raises(WorldModelsError, match="stall-steps"):
        tc.run(stage_cfg(world.run_dir, where="dream", stall_steps=40))


def test_top_action_is_the_share_of_steps_on_the_most_common_action(tmp_path):
    """Doom (discrete): a controller with zero weights always takes the middle action (1.0); a random one
    mixes actions (< 1.0); continuous CarRacing has no top action."""
    from worldmodels.agent import load_world

    world = load_world(make_tiny_run(tmp_path, env="doom-takecover"), "zh")
    agent = _agent(world)
    params = np.stack([np.zeros(world.n_params), np.random.default_rng(0).normal(0, 3, world.n_params)])
    seeds = [episode_seed(0, i, "eval") for i in range(2)]
    results = agent.play(make_batch("doom-takecover"), params, seeds, max_steps=40)
    assert results[0]["top_action"] == 1.0
    assert 0.34 <= results[1]["top_action"] < 1.0
    counts_from_trace = agent.play(make_batch("doom-takecover"), params[1:], seeds[1:], max_steps=40, record=[True])[0]
    _, n = np.unique(counts_from_trace["actions"], return_counts=True)
    assert counts_from_trace["top_action"] == pytest.approx(n.max() / len(counts_from_trace["actions"]))
