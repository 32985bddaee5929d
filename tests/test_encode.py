"""The encode stage: latents.h5 from rollouts.h5 and a V checkpoint (round trip, resume, refusals)."""

import numpy as np
import pytest
import torch
from test_vae import make_rollouts  # tests/ is on sys.path under pytest

from worldmodels import cli
from worldmodels.checkpoint import save_checkpoint
from worldmodels.data import EpisodeWriter, open_latents, open_rollouts
from worldmodels.errors import WorldModelsError
from worldmodels.models import ConvVAE, frames_to_tensor
from worldmodels.stages import encode

LENGTHS = [12, 7, 15, 9]


def save_vae(folder, z_dim=6, seed=0, run_id=None, epoch=3):
    torch.manual_seed(seed)
    model = ConvVAE(z_dim)
    save_checkpoint(folder, "vae", {"model": model.state_dict(), "z_dim": z_dim, "epoch": epoch,
                                    "config": {"z_dim": z_dim}, **({"id": run_id} if run_id else {})})
    return model.eval()


@pytest.fixture
def setup(tmp_path):
    rollouts = make_rollouts(tmp_path / "rollouts.h5", LENGTHS, seed=3)
    model = save_vae(tmp_path / "vae")
    cfg = encode.Config(data=str(rollouts), vae=str(tmp_path / "vae"), out=str(tmp_path / "latents.h5"),
                        batch_size=5, device="cpu")
    return tmp_path, model, cfg


def test_round_trip_values_shapes_and_carried_fields(setup):
    tmp_path, model, cfg = setup
    encode.run(cfg)
    with open_latents(cfg.out) as lat, open_rollouts(cfg.data) as src:
        assert lat.n_episodes == len(LENGTHS) and lat.n_frames == sum(LENGTHS)
        assert np.array_equal(lat.episodes, src.episodes)  # start, length, seed, level
        assert lat.attrs["z_dim"] == 6 and lat.attrs["vae_id"] == model_id(tmp_path)
        assert lat.attrs["vae_epoch"] == 3 and lat.attrs["rollouts"] == str(src.path.resolve())
        assert lat.attrs["vae_checkpoint"].endswith("checkpoint.pt")
        for i in range(src.n_episodes):
            real, got = src.episode(i), lat.episode(i)
            assert got["mu"].shape == got["logvar"].shape == (LENGTHS[i], 6)
            assert got["mu"].dtype == np.float32
            with torch.no_grad():
                mu, logvar = model.encode(frames_to_tensor(real["obs"]))  # whole episode at once
            np.testing.assert_allclose(got["mu"], mu.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got["logvar"], logvar.numpy(), rtol=1e-5, atol=1e-5)
            for key in ("action", "reward", "terminated", "truncated"):
                assert np.array_equal(got[key], real[key])


def model_id(tmp_path):
    from worldmodels.checkpoint import load_checkpoint
    return load_checkpoint(tmp_path / "vae")["id"]


def test_rerun_continues_after_a_crash_and_after_more_collection(setup, monkeypatch):
    tmp_path, model, cfg = setup
    real_append, calls = EpisodeWriter.append, []

    def crash_after_two(self, *args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real_append(self, *args, **kw)

    monkeypatch.setattr(EpisodeWriter, "append", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        encode.run(cfg)
    monkeypatch.setattr(EpisodeWriter, "append", real_append)
    with open_latents(cfg.out) as lat:
        assert lat.n_episodes == 2
        first_two = lat.read("mu", 0, lat.n_frames)
    encode.run(cfg)
    make_rollouts(tmp_path / "rollouts.h5", [11], seed=3)  # collection went on: one more episode
    encode.run(cfg)
    with open_latents(cfg.out) as lat:
        assert lat.n_episodes == len(LENGTHS) + 1
        assert np.array_equal(lat.read("mu", 0, len(first_two)), first_two)
    # a straight run over the grown file gives the same latents
    encode.run(encode.Config(**{**cfg.__dict__, "out": str(tmp_path / "straight.h5")}))
    with open_latents(cfg.out) as a, open_latents(tmp_path / "straight.h5") as b:
        np.testing.assert_allclose(a.read("mu", 0, a.n_frames), b.read("mu", 0, b.n_frames), atol=1e-5)


def test_other_vae_or_source_is_refused(setup):
    tmp_path, model, cfg = setup
    encode.run(cfg)
    save_vae(tmp_path / "vae2", seed=1)
    with pytest.raises(WorldModelsError, match="holds other data.*vae_id.*refusing to overwrite"):
        encode.run(encode.Config(**{**cfg.__dict__, "vae": str(tmp_path / "vae2")}))
    save_vae(tmp_path / "vae", run_id=model_id(tmp_path), epoch=4)  # the same V, trained further
    with pytest.raises(WorldModelsError, match="vae_epoch: file has 3, this run wants 4"):
        encode.run(cfg)
    other = make_rollouts(tmp_path / "other.h5", [5, 5], seed=9)
    with pytest.raises(WorldModelsError, match="do not match the episodes"):
        encode.run(encode.Config(**{**cfg.__dict__, "data": str(other)}))


def test_corrupt_or_mismatched_checkpoint_and_missing_data_are_one_line_errors(setup, capsys):
    tmp_path, model, cfg = setup
    (tmp_path / "broken").mkdir()
    good = (tmp_path / "vae" / "checkpoint.pt").read_bytes()
    (tmp_path / "broken" / "checkpoint.pt").write_bytes(good[:len(good) // 2])  # truncated
    save_checkpoint(tmp_path / "mismatch", "vae", {"model": ConvVAE(4).state_dict(), "z_dim": 6})
    for vae, expect in (("broken", "not a readable checkpoint"), ("mismatch", "do not fit ConvVAE"),
                        ("nothing", "no checkpoint")):
        code = cli.main(["encode", "--data", cfg.data, "--vae", str(tmp_path / vae), "--out", cfg.out,
                         "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert code == 1 and expect in err and err.count("\n") == 0
    code = cli.main(["encode", "--data", str(tmp_path / "none.h5"), "--vae", cfg.vae, "--out", cfg.out])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "none.h5: no such file" in err and err.count("\n") == 0
    assert not (tmp_path / "latents.h5").exists()
