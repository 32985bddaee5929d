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
