"""M: mixture likelihood and sampling, the model's step/forward agreement, the loss with padding, loading."""

import math

import pytest
import torch

from worldmodels.errors import WorldModelsError
from worldmodels.models.mdrnn import (MDRNN, gmm_nll, load_mdrnn, mdrnn_loss, sample_gmm, sample_latents)


def test_gmm_nll_k1_is_the_gaussian_log_density():
    g = torch.Generator().manual_seed(0)
    x, mu = torch.randn(4, 6, 3, generator=g), torch.randn(4, 6, 3, generator=g)
    logsigma = 0.3 * torch.randn(4, 6, 3, generator=g)
    expected = -torch.distributions.Normal(mu, logsigma.exp()).log_prob(x).mean()
    got = gmm_nll(x, torch.zeros(4, 6, 3, 1), mu.unsqueeze(-1), logsigma.unsqueeze(-1))
    assert torch.allclose(got, expected, atol=1e-5)


def test_gmm_nll_k2_matches_a_hand_computed_mixture():
    # one dimension: 0.25 N(0, 1) + 0.75 N(2, 0.5^2) at x = 1
    x = torch.tensor([[1.0]])
    logpi = torch.log(torch.tensor([[[0.25, 0.75]]]))
    mu = torch.tensor([[[0.0, 2.0]]])
    logsigma = torch.log(torch.tensor([[[1.0, 0.5]]]))
    p1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    p2 = math.exp(-0.5 * 4) / (0.5 * math.sqrt(2 * math.pi))
    expected = -math.log(0.25 * p1 + 0.75 * p2)
    assert gmm_nll(x, logpi, mu, logsigma).item() == pytest.approx(expected, rel=1e-5)


def _two_component_mixture(z=3):
    logpi = torch.log(torch.tensor([0.8, 0.2])).expand(z, 2)
    mu = torch.tensor([1.0, -3.0]).expand(z, 2)
    logsigma = torch.log(torch.tensor([0.5, 1.0])).expand(z, 2)
    return logpi, mu, logsigma


def test_sample_gmm_small_temperature_concentrates_on_the_dominant_mean():
    logpi, mu, logsigma = _two_component_mixture()
    n = 20000
    g = torch.Generator().manual_seed(1)
    z = sample_gmm(logpi.expand(n, 3, 2), mu.expand(n, 3, 2), logsigma.expand(n, 3, 2), 0.01, generator=g)
    assert (z - 1.0).abs().max() < 0.5 * 0.1 * 5  # sigma 0.5 scaled by sqrt(0.01): within 5 sd, no -3 draws
    assert z.std().item() == pytest.approx(0.05, rel=0.05)


def test_sample_gmm_at_tau_1_matches_the_mixture_moments():
    logpi, mu, logsigma = _two_component_mixture()
    n = 200000
    g = torch.Generator().manual_seed(2)
    z = sample_gmm(logpi.expand(n, 3, 2), mu.expand(n, 3, 2), logsigma.expand(n, 3, 2), 1.0, generator=g)
    mean = 0.8 * 1.0 + 0.2 * -3.0
    var = 0.8 * (0.25 + 1.0) + 0.2 * (1.0 + 9.0) - mean ** 2
    assert z.mean().item() == pytest.approx(mean, abs=0.02)
    assert z.var().item() == pytest.approx(var, rel=0.02)


def test_sample_gmm_sigma_scales_by_sqrt_tau():
    n = 100000
    logpi, mu, logsigma = torch.zeros(n, 2, 1), torch.zeros(n, 2, 1), torch.full((n, 2, 1), math.log(2.0))
    for tau in (0.25, 1.0, 2.0):
        z = sample_gmm(logpi, mu, logsigma, tau, generator=torch.Generator().manual_seed(3))
        assert z.std().item() == pytest.approx(2.0 * math.sqrt(tau), rel=0.02)
    with pytest.raises(WorldModelsError):
        sample_gmm(logpi, mu, logsigma, 0.0)


def test_resampling_uses_exp_of_half_logvar():
    n = 100000
    mu, logvar = torch.full((n, 2), 1.5), torch.full((n, 2), math.log(4.0))  # variance 4, sigma 2
    z = sample_latents(mu, logvar, torch.Generator().manual_seed(4))
    assert z.mean().item() == pytest.approx(1.5, abs=0.03)
    assert z.std().item() == pytest.approx(2.0, rel=0.02)  # exp(logvar) would give 4


def test_step_equals_forward_step_by_step():
    torch.manual_seed(0)
    m = MDRNN(z_dim=4, action_dim=2, hidden=16, n_gaussians=3)
    z, a = torch.randn(3, 7, 4), torch.randn(3, 7, 2)
    out, (h, c) = m(z, a)
    state = None
    for t in range(7):
        o, state = m.step(z[:, t], a[:, t], state)
        for seq, one in zip(out, o):
            assert torch.allclose(seq[:, t], one, atol=1e-5)
    assert torch.allclose(state[0], h, atol=1e-5) and torch.allclose(state[1], c, atol=1e-5)
    assert out.logpi.shape == (3, 7, 4, 3) and out.reward.shape == (3, 7)
    assert torch.allclose(out.logpi.exp().sum(-1), torch.ones(3, 7, 4), atol=1e-5)
    # a state carried over from a first half continues like one long sequence
    out1, st = m(z[:, :3], a[:, :3])
    out2, _ = m(z[:, 3:], a[:, 3:], st)
    assert torch.allclose(out2.mu, out.mu[:, 3:], atol=1e-5)


def test_masking_ignores_padding():
    torch.manual_seed(0)
    m = MDRNN(z_dim=3, action_dim=2, hidden=8, n_gaussians=2)
    z, a = torch.randn(2, 5, 3), torch.randn(2, 5, 2)
    z_next, reward, done = torch.randn(2, 5, 3), torch.randn(2, 5), torch.zeros(2, 5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    mask_z = mask.clone()
    mask_z[1, 2] = False
    out, _ = m(z, a)
    base = mdrnn_loss(out, z_next, reward, done, mask_z, mask)
    z_next2, reward2, done2 = z_next.clone(), reward.clone(), done.clone()
    z_next2[1, 2:] = float("nan")
    reward2[1, 3:] = 1e6
    done2[1, 3:] = 1.0
    other = mdrnn_loss(out, z_next2, reward2, done2, mask_z, mask)
    for key in base:
        assert torch.allclose(base[key], other[key]), key
    unmasked = mdrnn_loss(out, z_next, reward2, done, None, None)
    assert unmasked["reward_mse"] > base["reward_mse"] * 100


def test_done_positives_are_weighted():
    out = MDRNN(2, 1, 4, 1)(torch.zeros(1, 2, 2), torch.zeros(1, 2, 1))[0]
    z, r = torch.zeros(1, 2, 2), torch.zeros(1, 2)
    done = torch.tensor([[0.0, 1.0]])
    w10 = mdrnn_loss(out, z, r, done, done_pos_weight=10.0)["done_bce"]
    w1 = mdrnn_loss(out, z, r, done, done_pos_weight=1.0)["done_bce"]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.done_logit, done, reduction="none")[0]
    assert torch.allclose(w10, (bce[0] + 10 * bce[1]) / 2, atol=1e-6) and w10 > w1


def test_load_mdrnn_round_trip_and_errors(tmp_path):
    from worldmodels.checkpoint import save_checkpoint

    m = MDRNN(3, 2, 8, 2)
    save_checkpoint(tmp_path / "m", "mdrnn", {"model": m.state_dict(), "model_args": m.config})
    loaded = load_mdrnn(tmp_path / "m", "cpu")
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), loaded.parameters())) and not loaded.training
    with pytest.raises(WorldModelsError, match="no checkpoint"):
        load_mdrnn(tmp_path / "missing")
    save_checkpoint(tmp_path / "v", "vae", {"model": {}})
    with pytest.raises(WorldModelsError, match="expected mdrnn"):
        load_mdrnn(tmp_path / "v")
    save_checkpoint(tmp_path / "bad", "mdrnn", {"model": m.state_dict(), "model_args": {**m.config, "hidden": 9}})
    with pytest.raises(WorldModelsError, match="does not match"):
        load_mdrnn(tmp_path / "bad")
