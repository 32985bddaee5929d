"""V: the ConvVAE, its loss, load_vae, and the train-vae stage on tiny synthetic rollout files."""

import math

import numpy as np
import pytest
import torch

from worldmodels.checkpoint import save_checkpoint
from worldmodels.errors import WorldModelsError
from worldmodels.models import ConvVAE, frames_to_tensor, load_vae, vae_loss


def test_parameter_count_matches_the_paper():
    assert sum(p.numel() for p in ConvVAE(32).parameters()) == 4_348_547


def test_output_shapes_and_range():
    model = ConvVAE(16)
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x[2, 1], torch.as_tensor(frames[2, :, :, 1]).float() / 255)
    recon, mu, logvar = model(x)
    assert recon.shape == (5, 3, 64, 64) and mu.shape == logvar.shape == (5, 16)
    assert 0 <= recon.min() and recon.max() <= 1
    assert model.decode(torch.zeros(3, 16)).shape == (3, 3, 64, 64)
    with pytest.raises(WorldModelsError, match="uint8"):
        frames_to_tensor(frames.astype(np.float32))


def test_eval_mode_uses_the_mean_and_training_mode_samples():
    model = ConvVAE(8)
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    recon, mu, _ = model(x)
    assert torch.equal(recon, model.decode(mu))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x)[0], recon)


def test_loss_equals_a_hand_computed_value():
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])   # (2, 1, 2, 2)
    recon = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    mu = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    logvar = torch.tensor([[0.0, 0.0], [0.0, math.log(4.0)]])
    out = vae_loss(x, recon, mu, logvar, kl_tolerance=0.5)
    # sample 0: SSE 4 * 0.25 = 1, KL 0 floored to 0.5 * 2 = 1; sample 1: SSE 0, KL 4/2 + (4 - 1 - ln 4)/2
    kl1 = 2.0 + (3.0 - math.log(4.0)) / 2
    assert out["recon"].item() == pytest.approx(0.5)
    assert out["kl"].item() == pytest.approx(kl1 / 2)
    assert out["loss"].item() == pytest.approx((1.0 + 1.0 + 0.0 + kl1) / 2)


def test_kl_floor_stops_the_gradient_below_it():
    x = torch.zeros(1, 3, 4, 4)
    for scale, expect_zero in ((0.1, True), (3.0, False)):
        mu = torch.full((1, 8), scale, requires_grad=True)
        logvar = torch.full((1, 8), -0.1, requires_grad=True)
        out = vae_loss(x, x.clone(), mu, logvar, kl_tolerance=0.5)
        below = out["kl"].item() < 0.5 * 8
        assert below == expect_zero
        out["loss"].backward()
        grads = torch.cat([mu.grad.flatten(), logvar.grad.flatten()])
        assert (grads.abs().max().item() == 0.0) == expect_zero


def test_load_vae_round_trip_and_clear_errors(tmp_path):
    model = ConvVAE(8)
    save_checkpoint(tmp_path / "vae", "vae", {"model": model.state_dict(), "z_dim": 8, "config": {"z_dim": 8},
                                              "id": "abc"})
    loaded = load_vae(tmp_path / "vae")
    assert not loaded.training and loaded.z_dim == 8 and loaded.checkpoint_id == "abc"
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded.encode(x)[0], model.eval().encode(x)[0])
    with pytest.raises(WorldModelsError, match="no checkpoint"):
        load_vae(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a torch file")
    with pytest.raises(WorldModelsError, match="not a readable checkpoint"):
        load_vae(tmp_path / "bad")
    save_checkpoint(tmp_path / "m", "mdrnn", {"model": {}})
    with pytest.raises(WorldModelsError, match="holds a mdrnn checkpoint"):
        load_vae(tmp_path / "m")
    save_checkpoint(tmp_path / "z", "vae", {"model": model.state_dict(), "z_dim": 16})
    with pytest.raises(WorldModelsError, match="do not fit ConvVAE"):
        load_vae(tmp_path / "z")


# ---------------------------------------------------------------------------------------------- train-vae

import dataclasses  # noqa: E402

from worldmodels import cli  # noqa: E402
from worldmodels.checkpoint import load_checkpoint  # noqa: E402
from worldmodels.data import ROLLOUTS, EpisodeWriter  # noqa: E402
from worldmodels.metrics import read_metrics  # noqa: E402
from worldmodels.stages import train_vae  # noqa: E402


def synthetic_frames(start: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Frames with structure V can learn (a coloured square moving over a gradient), global index in pixel 0."""
    frames = np.empty((length, 64, 64, 3), np.uint8)
    ramp = np.linspace(0, 160, 64, dtype=np.float32)
    colour = rng.integers(60, 255, 3)
    for t in range(length):
        frames[t] = ramp[None, :, None].astype(np.uint8)
        x, y = (7 * t) % 48, (3 * t + 11 * start) % 48
        frames[t, y:y + 16, x:x + 16] = colour
        idx = start + t
        frames[t, 0, 0] = (idx % 256, (idx // 256) % 256, idx // 65536)
    return frames


def frame_ids(frames: np.ndarray) -> np.ndarray:
    px = frames[:, 0, 0].astype(np.int64)
    return px[:, 0] + 256 * px[:, 1] + 65536 * px[:, 2]


def make_rollouts(path, lengths, seed=0):
    """A tiny rollouts.h5 written with the data layer, one synthetic episode per entry of ``lengths``."""
    rng = np.random.default_rng(seed)
    attrs = {"env": "synthetic", "env_kwargs": {}, "action_space": {"type": "discrete", "n": 3},
             "policy": "random", "seed": seed, "max_steps": 100}
    with EpisodeWriter(path, ROLLOUTS, attrs) as writer:
        start = writer.n_frames
        for i, n in enumerate(lengths):
            writer.append({"obs": synthetic_frames(start, n, rng), "action": rng.integers(0, 3, n),
                           "reward": rng.standard_normal(n).astype(np.float32),
                           "terminated": np.arange(n) == n - 1, "truncated": np.zeros(n, bool)},
                          seed=100 + i, level=i % 3)
            start += n
    return path


def vae_config(tmp_path, **kw):
    values = dict(data=str(tmp_path / "rollouts.h5"), out=str(tmp_path / "vae"), z_dim=8, epochs=2,
                  batch_size=32, lr=1e-3, val_fraction=0.25, shuffle_buffer=128, device="cpu", seed=0)
    values.update(kw)
    return train_vae.Config(**values)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
    return make_rollouts(tmp_path_factory.mktemp("data") / "rollouts.h5", [40, 35, 30, 25, 45, 20, 35, 26])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Few frames: for the tests about resuming and stopping rather than learning."""
    return make_rollouts(tmp_path_factory.mktemp("small") / "rollouts.h5", [20, 14, 18, 12])


def test_stream_covers_each_training_frame_once_and_shuffles(rollouts):
    ranges = [(0, 40), (95, 125), (185, 230)]
    expected = np.concatenate([np.arange(a, b) for a, b in ranges])
    for workers in (0, 2):
        stream = train_vae.FrameStream(str(rollouts), ranges, batch_size=16, buffer_frames=48, shuffle=True)
        stream.set_epoch(3)
        batches = list(train_vae._loader(stream, workers, torch.device("cpu")))
        ids = frame_ids(np.concatenate([b.numpy() for b in batches]))
        assert np.array_equal(np.sort(ids), expected)
        assert not np.array_equal(ids, expected)  # shuffled
        assert max(len(b) for b in batches) == 16
    stream.set_epoch(4)
    assert not np.array_equal(frame_ids(np.concatenate([b.numpy() for b in stream])), ids)
    in_order = train_vae.FrameStream(str(rollouts), ranges, batch_size=16, buffer_frames=0, shuffle=False)
    assert np.array_equal(frame_ids(np.concatenate([b.numpy() for b in in_order])), expected)


def test_capped_epoch_reads_a_new_random_part_of_the_frames_each_epoch(rollouts):
    ranges = [(0, 40), (95, 125), (185, 230)]
    everything = set(np.concatenate([np.arange(a, b) for a, b in ranges]).tolist())
    stream = train_vae.FrameStream(str(rollouts), ranges, batch_size=8, buffer_frames=16, shuffle=True,
                                   block_frames=10, epoch_frames=30)
    seen = []
    for epoch in range(3):
        stream.set_epoch(epoch)
        batches = list(stream)
        ids = frame_ids(np.concatenate([b.numpy() for b in batches]))
        assert 30 <= len(ids) < 40 and len(set(ids.tolist())) == len(ids)  # whole chunks, up to the cap
        assert stream.frames_per_epoch == len(ids) and len(stream) == len(batches) == -(-len(ids) // 8)
        assert set(ids.tolist()) <= everything
        seen.append(frozenset(ids.tolist()))
    assert len(set(seen)) == 3  # each epoch draws other chunks
    whole = train_vae.FrameStream(str(rollouts), ranges, batch_size=8, buffer_frames=16, shuffle=True,
                                  block_frames=10, epoch_frames=1000)
    assert len(frame_ids(np.concatenate([b.numpy() for b in whole]))) == 115  # a cap above the data: all of it


def test_validation_split_is_by_whole_episodes():
    for n, frac in ((2, 0.5), (10, 0.2), (33, 0.05), (5, 0.0)):
        train, val = train_vae.split_episodes(n, frac, seed=1)
        assert not set(train) & set(val) and sorted([*train, *val]) == list(range(n))
        assert len(train) >= 1 and (len(val) >= 1) == (frac > 0)
    with pytest.raises(WorldModelsError, match="val_fraction"):
        train_vae.split_episodes(4, 1.0, seed=0)


def test_tiny_run_learns_and_writes_its_outputs(tmp_path, rollouts):
    summary = train_vae.run(vae_config(tmp_path, data=str(rollouts)))
    records = read_metrics(tmp_path / "vae" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("vae/loss", "vae/recon", "vae/kl", "val/vae/loss", "val/vae/recon", "val/vae/kl"):
        assert all(math.isfinite(r[key]) for r in records)
    assert records[-1]["vae/loss"] < records[0]["vae/loss"]
    assert records[-1]["val/vae/recon"] < records[0]["val/vae/recon"]
    out = tmp_path / "vae"
    for name in ("checkpoint.pt", "config.yaml", "reconstructions.png", "traversal.png"):
        assert (out / name).stat().st_size > 0
    state = load_checkpoint(out, kind="vae")
    assert state["epoch"] == 2 and state["id"] == summary["id"]
    # whole episodes on each side of the split
    assert not set(summary["train_episodes"]) & set(state["data"]["val_episodes"])
    assert load_vae(out).checkpoint_id == summary["id"]


def _state_equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path, small):
    whole = train_vae.run(vae_config(tmp_path, data=str(small), batch_size=16, out=str(tmp_path / "whole")))
    first = train_vae.run(vae_config(tmp_path, data=str(small), batch_size=16, epochs=1))
    after_one = load_checkpoint(tmp_path / "vae", kind="vae")
    assert after_one["epoch"] == 1
    second = train_vae.run(vae_config(tmp_path, data=str(small), batch_size=16, epochs=2))
    assert second["id"] == first["id"] != whole["id"]
    resumed, straight = load_checkpoint(tmp_path / "vae"), load_checkpoint(tmp_path / "whole")
    assert resumed["epoch"] == 2
    assert _state_equal(resumed["optimizer"], straight["optimizer"])
    assert _state_equal(resumed["model"], straight["model"])
    assert [r["epoch"] for r in read_metrics(tmp_path / "vae" / "metrics.jsonl")] == [1, 2]
    # same command again: nothing left to do, nothing changes
    train_vae.run(vae_config(tmp_path, data=str(small), batch_size=16, epochs=2))
    assert _state_equal(load_checkpoint(tmp_path / "vae")["model"], resumed["model"])


def test_changed_config_is_refused_unless_fresh(tmp_path, small):
    first = train_vae.run(vae_config(tmp_path, data=str(small), batch_size=16, epochs=1))
    with pytest.raises(WorldModelsError, match=r"different config \(lr: 0.001 -> 0.01\)"):
        train_vae.run(vae_config(tmp_path, data=str(small), batch_size=16, epochs=1, lr=1e-2))
    again = train_vae.run(vae_config(tmp_path, data=str(small), batch_size=16, epochs=1, lr=1e-2, fresh=True))
    assert again["id"] != first["id"] and load_checkpoint(tmp_path / "vae")["config"]["lr"] == 1e-2


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, small, monkeypatch):
    cfg = vae_config(tmp_path, data=str(small), batch_size=16, epochs=1)
    train_vae.run(cfg)
    good = load_checkpoint(tmp_path / "vae")

    def nan_loss(*args, **kw):
        out = vae_loss(*args, **kw)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(train_vae, "vae_loss", nan_loss)
    with pytest.raises(WorldModelsError, match=r"vae/loss = nan .*checkpoint of epoch 1 .* is kept"):
        train_vae.run(dataclasses.replace(cfg, epochs=2))
    kept = load_checkpoint(tmp_path / "vae")
    assert kept["epoch"] == 1 and _state_equal(kept["model"], good["model"])


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert cli.main(["train-vae", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "v")]) == 1
    err = capsys.readouterr().err.strip()
    assert "missing.h5: no such file" in err and err.count("\n") == 0
    assert cli.main(["train-vae", "--out", str(tmp_path / "v")]) == 1
    assert "--data" in capsys.readouterr().err
