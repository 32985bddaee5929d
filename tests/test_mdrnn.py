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
    assert len(loaded.checkpoint_id) == 32 and loaded.checkpoint_path.endswith("checkpoint.pt")
    with pytest.raises(WorldModelsError, match="no checkpoint"):
        load_mdrnn(tmp_path / "missing")
    save_checkpoint(tmp_path / "v", "vae", {"model": {}})
    with pytest.raises(WorldModelsError, match="expected mdrnn"):
        load_mdrnn(tmp_path / "v")
    save_checkpoint(tmp_path / "bad", "mdrnn", {"model": m.state_dict(), "model_args": {**m.config, "hidden": 9}})
    with pytest.raises(WorldModelsError, match="does not match"):
        load_mdrnn(tmp_path / "bad")


# --- the train-mdrnn stage on a tiny latents file ------------------------------------------------------

import subprocess
import sys
import numpy as np

from worldmodels import config as cfgmod
from worldmodels.checkpoint import load_checkpoint, save_checkpoint
from worldmodels.data import LATENTS, EpisodeFiles, EpisodeWriter, open_latents
from worldmodels.metrics import read_metrics
from worldmodels.stages import train_mdrnn

ZT, NA = 3, 3  # latent size and discrete actions of the tiny dataset


def write_latents(path, lengths=(12, 30, 7, 25, 18, 9), seed=0):
    """Episodes whose dynamics M can learn: z_{t+1} = 0.8 z_t + shift[a_t]; mu[:, 2] marks the episode."""
    rng = np.random.default_rng(seed)
    shift = np.array([[0.5, 0.0], [-0.5, 0.0], [0.0, 0.5]], np.float32)
    attrs = {"env": "doom-takecover", "action_space": {"type": "discrete", "n": NA}, "z_dim": ZT,
             "vae_checkpoint": "", "vae_id": "", "rollouts": ""}
    with EpisodeWriter(path, LATENTS, attrs) as w:
        for e, length in enumerate(lengths):
            a = rng.integers(0, NA, length)
            mu = np.zeros((length, ZT), np.float32)
            mu[0, :2] = rng.normal(size=2)
            for t in range(1, length):
                mu[t, :2] = 0.8 * mu[t - 1, :2] + shift[a[t - 1]]
            mu[:, 2] = e
            term = np.zeros(length, bool)
            term[-1] = e % 2 == 0
            w.append({"mu": mu, "logvar": np.full((length, ZT), -6.0, np.float32), "action": a,
                      "reward": mu[:, 0].copy(), "terminated": term, "truncated": ~term & (np.arange(length) == length - 1)},
                     seed=e)
    return str(path)


def tiny_cfg(tmp_path, **kw):
    values = {"latents": str(tmp_path / "latents.h5"), "out": str(tmp_path / "run" / "mdrnn"), "hidden": 16,
              "n_gaussians": 2, "seq_len": 30, "batch_size": 8, "steps": 40, "eval_every": 20, "lr": 3e-3,
              "val_fraction": 0.2, "val_batches": 2, "picture_steps": 6, "device": "cpu", **kw}
    return cfgmod.from_dict(train_mdrnn.Config, values)


def test_sequences_never_mix_episodes_and_pad_with_masks(tmp_path):
    write_latents(tmp_path / "latents.h5")
    with open_latents(tmp_path / "latents.h5") as src:
        sampler = train_mdrnn.SequenceSampler(src, np.arange(6), 10, 64, {"type": "discrete", "n": NA})
        b = sampler.sample(np.random.default_rng(0))
    ep = b["mu"][:, :, 2]  # (B, T+1): the episode id of every frame read
    for i in range(64):
        n = int(b["mask"][i].sum())
        assert (ep[i, :n + 1][b["mu"][i, :n + 1].abs().sum(-1) > 0] == ep[i, 0]).all()
        assert n == int(b["mask_z"][i].sum()) + (0 if b["mask_z"][i, n - 1] else 1)
        assert not b["mask"][i, n:].any() and (b["action"][i, n:] == 0).all()
        assert torch.equal(b["action"][i, :n].sum(-1), torch.ones(n))  # one-hot
    assert (b["mask"].sum(1) < 10).any() and (b["mask"].sum(1) == 10).any()  # short episodes padded
    assert b["done"].sum() > 0  # episode ends are sampled, with their done targets


def test_tiny_run_lowers_the_loss_and_records_what_later_stages_need(tmp_path):
    write_latents(tmp_path / "latents.h5")
    cfg = tiny_cfg(tmp_path, steps=60)
    with pytest.warns(UserWarning, match="skipping dream_vs_real"):
        result = train_mdrnn.run(cfg)
    records = read_metrics(tmp_path / "run" / "mdrnn" / "metrics.jsonl")
    assert [r["step"] for r in records] == [20, 40, 60]
    assert records[-1]["mdrnn/nll"] < records[0]["mdrnn/nll"] - 0.3
    assert records[-1]["val/mdrnn/nll"] < records[0]["val/mdrnn/nll"]
    assert all(k in records[-1] for k in ("mdrnn/reward_mse", "mdrnn/done_bce", "val/mdrnn/done_bce"))
    state = load_checkpoint(result["checkpoint"], kind="mdrnn")
    assert state["config"]["env"] == "doom-takecover" and state["config"]["action_space"]["n"] == NA
    assert state["config"]["latents"] == str((tmp_path / "latents.h5").resolve()) and not result["picture"]
    m = load_mdrnn(tmp_path / "run" / "mdrnn")
    assert (m.z_dim, m.action_dim, m.hidden, m.n_gaussians) == (ZT, NA, 16, 2)


def test_resume_continues_exactly_and_refuses_a_changed_config(tmp_path):
    write_latents(tmp_path / "latents.h5")
    kw = {"steps": 20, "eval_every": 10, "picture_steps": 0}
    straight = train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "a" / "mdrnn"), **kw))
    first = train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "b" / "mdrnn"), **{**kw, "steps": 10}))
    resumed = train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "b" / "mdrnn"), **kw))
    assert resumed["id"] == first["id"] and resumed["step"] == 20
    a, b = (load_checkpoint(r["checkpoint"])["model"] for r in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "mdrnn" / "metrics.jsonl")] == [10, 20]
    with pytest.raises(WorldModelsError, match="different config.*hidden"):
        train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "b" / "mdrnn"), hidden=8))
    fresh = train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "b" / "mdrnn"), hidden=8, fresh=True,
                                     **{**kw, "steps": 2, "eval_every": 2}))
    assert fresh["id"] != first["id"] and load_mdrnn(fresh["checkpoint"]).hidden == 8


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    write_latents(tmp_path / "latents.h5")
    real_losses, calls = train_mdrnn.batch_losses, []

    def diverging(*args):  # training steps after the 5th produce NaN, as a too-high learning rate would
        losses = real_losses(*args)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) > 5:
                losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(train_mdrnn, "batch_losses", diverging)
    with pytest.raises(WorldModelsError, match=r"mdrnn/loss = nan.*checkpoint of step 4 .* kept.*--lr"):
        train_mdrnn.run(tiny_cfg(tmp_path, eval_every=2, steps=10, picture_steps=0))
    state = load_checkpoint(tmp_path / "run" / "mdrnn")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_dream_vs_real_picture_with_a_vae(tmp_path):
    from worldmodels.models.vae import ConvVAE

    write_latents(tmp_path / "latents.h5")
    vae = ConvVAE(ZT)
    save_checkpoint(tmp_path / "run" / "vae", "vae", {"model": vae.state_dict(), "z_dim": ZT})
    result = train_mdrnn.run(tiny_cfg(tmp_path, steps=2, eval_every=2))
    out = tmp_path / "run" / "mdrnn"
    assert result["picture"] and (out / "dream_vs_real.png").stat().st_size > 1000
    import imageio.v2 as imageio

    gif = imageio.mimread(out / "dream_vs_real.gif")
    assert len(gif) == 6 and gif[0].shape[:2] == (64 * 2, 128 * 2)


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "worldmodels", "train-mdrnn", "--latents", str(tmp_path / "no.h5"),
                           "--out", str(tmp_path / "m")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "no.h5" in proc.stderr


def test_episode_sequences_start_at_the_first_frame(tmp_path):
    write_latents(tmp_path / "latents.h5")
    with open_latents(tmp_path / "latents.h5") as src:
        first = {int(src.episode(e, ["mu"])["mu"][0, 2]): src.episode(e, ["mu"])["mu"][0] for e in range(6)}
        b = train_mdrnn.SequenceSampler(src, np.arange(6), 10, 64, {"type": "discrete", "n": NA}).sample(
            np.random.default_rng(0))
        w = train_mdrnn.SequenceSampler(src, np.arange(6), 10, 64, {"type": "discrete", "n": NA}, "window").sample(
            np.random.default_rng(0))
    for i in range(64):
        np.testing.assert_array_equal(b["mu"][i, 0].numpy(), first[int(b["mu"][i, 0, 2])])
    assert len({int(e) for e in b["mu"][:, 0, 2]}) == 6  # every episode drawn (uniformly, not by length)
    starts = [np.array_equal(w["mu"][i, 0].numpy(), first[int(w["mu"][i, 0, 2])]) for i in range(64)]
    assert not all(starts)  # windows start inside episodes too


def test_recent_share_draws_that_share_of_sequences_from_the_recent_episodes(tmp_path):
    write_latents(tmp_path / "latents.h5")
    desc = {"type": "discrete", "n": NA}
    recent = np.array([False] * 4 + [True] * 2)  # 2 of 6 episodes: a third of uniform draws
    with open_latents(tmp_path / "latents.h5") as src:
        ids = {int(src.episode(e, ["mu"])["mu"][0, 2]): e for e in range(6)}
        for share, lo, hi in ((0.8, 0.75, 0.85), (0.0, 0.28, 0.39)):
            b = train_mdrnn.SequenceSampler(src, np.arange(6), 10, 2000, desc, "episode", recent, share).sample(
                np.random.default_rng(0))
            drawn = np.array([ids[int(i)] for i in b["mu"][:, 0, 2]])
            assert lo < recent[drawn].mean() < hi
            assert len(set(drawn[~recent[drawn]])) == 4  # the older episodes are still all drawn
        every = np.ones(6, bool)  # every episode recent: the share has nothing to split, draws stay uniform
        b = train_mdrnn.SequenceSampler(src, np.arange(6), 10, 600, desc, "episode", every, 0.8).sample(
            np.random.default_rng(0))
        assert len({int(i) for i in b["mu"][:, 0, 2]}) == 6
    with pytest.raises(WorldModelsError, match="recent_share"):
        train_mdrnn.run(tiny_cfg(tmp_path, recent_share=1.5))


def test_low_return_share_splits_the_recent_draws_by_return(tmp_path):
    """--low-return-share S: S of the latest files' draws (of every draw without --recent-share) from their episodes
    returning under --low-return, older files' draws untouched; returns are the episodes' reward sums, across files."""
    a, b = write_latents(tmp_path / "a.h5"), write_latents(tmp_path / "b.h5", lengths=(5, 8), seed=1)
    desc = {"type": "discrete", "n": NA}
    with EpisodeFiles([a, b], LATENTS) as src:
        returns = train_mdrnn.episode_returns(src)
        sums = [float(np.sum(src.episode(e, ["reward"])["reward"])) for e in range(8)]
        np.testing.assert_allclose(returns, sums, rtol=1e-6)
    with open_latents(a) as src:
        ids = {int(src.episode(e, ["mu"])["mu"][0, 2]): e for e in range(6)}
        recent, low = np.arange(6) >= 4, np.isin(np.arange(6), [0, 4])
        cases = [(recent, 0.5, [0.125, 0.125, 0.125, 0.125, 0.375, 0.125]),  # episode 0 is old: not reweighted
                 (None, 0.0, [0.375, 0.0625, 0.0625, 0.0625, 0.375, 0.0625])]  # no recent files: every draw split
        for group, share, expected in cases:
            sampler = train_mdrnn.SequenceSampler(src, np.arange(6), 10, 4000, desc, "episode", group, share, low,
                                                  0.75)
            np.testing.assert_allclose(sampler.p, expected)
            drawn = np.array([ids[int(i)] for i in sampler.sample(np.random.default_rng(0))["mu"][:, 0, 2]])
            np.testing.assert_allclose(np.bincount(drawn, minlength=6) / len(drawn), expected, atol=0.03)
        none_low = train_mdrnn.SequenceSampler(src, np.arange(6), 10, 8, desc, "episode", None, 0.0,
                                               np.zeros(6, bool), 0.75)
        np.testing.assert_allclose(none_low.p, np.full(6, 1 / 6))  # nothing under the bar: draws stay uniform
    cfg = tiny_cfg(tmp_path, latents=f"{a},{b}", low_return_share=0.5, low_return=float(np.median(returns)))
    summary = train_mdrnn.run(cfg)
    assert np.isfinite(summary["metrics"]["mdrnn/loss"])
    with pytest.raises(WorldModelsError, match="low_return_share.*--low-return"):
        train_mdrnn.run(tiny_cfg(tmp_path, low_return_share=0.5, fresh=True))


def test_done_head_counts_follow_the_dreams_rule():
    logit = torch.tensor([[-1.0, 2.0, 0.5, -3.0], [0.1, -0.2, 0.0, 9.0]])
    done = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    # ends: (0,2) fired, (1,2) logit 0 not fired, (1,3) fired; others: (0,0) no, (0,1) yes, (1,0) yes, (1,1) no
    assert train_mdrnn.done_head_counts(logit, done, mask).tolist() == [2, 3, 2, 4]


@pytest.mark.slow  # a learning check (11 s): CI runs it with -m slow
def test_m_from_episode_starts_learns_when_episodes_end_and_windows_cannot(tmp_path):
    # Nothing in z tells the time; every episode dies after 10 steps. Only an M whose h started at the
    # episode's first frame can count to the death, which is what the dream needs (Doom's hidden health).
    rng, steps = np.random.default_rng(0), 10
    attrs = {"env": "doom-takecover", "action_space": {"type": "discrete", "n": NA}, "z_dim": 2,
             "vae_checkpoint": "", "vae_id": "", "rollouts": ""}
    with EpisodeWriter(tmp_path / "l.h5", LATENTS, attrs) as w:
        for e in range(60):
            term = np.zeros(steps, bool)
            term[-1] = True
            w.append({"mu": rng.normal(size=(steps, 2)).astype(np.float32),
                      "logvar": np.full((steps, 2), -6.0, np.float32), "action": rng.integers(0, NA, steps),
                      "reward": np.zeros(steps, np.float32), "terminated": term, "truncated": np.zeros(steps, bool)},
                     seed=e)
    report, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny LSTM: one thread is fastest, and the result needs no parallelism
    try:
        for mode, seq_len in (("episode", steps), ("window", 4)):
            cfg = tiny_cfg(tmp_path, latents=str(tmp_path / "l.h5"), out=str(tmp_path / mode / "mdrnn"),
                           n_gaussians=1, seq_len=seq_len, batch_size=16, steps=200, eval_every=200, lr=1e-2,
                           picture_steps=0, sequences=mode)
            result = train_mdrnn.run(cfg)
            with open_latents(tmp_path / "l.h5") as src:
                report[mode] = train_mdrnn.done_head_report(load_mdrnn(tmp_path / mode / "mdrnn"), src,
                                                            np.array(result["val_episodes"]))
    finally:
        torch.set_num_threads(threads)
    assert report["episode"]["deaths"] == 12
    assert report["episode"]["recall"] >= 0.9 and report["episode"]["false_alarm"] <= 0.15, report
    # a window M cannot meet that bar (it misses deaths, or fires everywhere)
    assert report["window"]["recall"] < 0.9 or report["window"]["false_alarm"] > 0.15, report
    metrics = read_metrics(tmp_path / "episode" / "mdrnn" / "metrics.jsonl")[-1]
    assert metrics["val/mdrnn/done_recall"] >= 0.9 and "val/mdrnn/done_false_alarm" in metrics


# --- dropout: one mask per sequence in training, for dream ensembles -------------------------------------

def test_mdrnn_dropout_masks_each_sequence_once_in_training_and_never_in_eval():
    torch.manual_seed(0)
    p = 0.5
    m = MDRNN(3, 2, 16, 2, dropout=p)
    z, a = torch.randn(4, 7, 3), torch.randn(4, 7, 2)
    heads = []
    m.head.register_forward_hook(lambda module, inputs, output: heads.append(inputs[0].detach()))
    with torch.no_grad():
        y, _ = m.lstm(torch.cat([z, a], -1))  # (4, 7, 16): the LSTM output the head reads
        m.train()
        out, state = m(z, a, generator=torch.Generator().manual_seed(1))
        scale = heads[-1] / y  # (4, 7, 16): the mask
        assert torch.allclose(scale, scale[:, :1].expand_as(scale))  # one mask for all time steps of a sequence
        assert set(scale[:, 0].round(decimals=4).unique().tolist()) == {0.0, 1 / (1 - p)}  # inverted scaling
        assert len({tuple(row.tolist()) for row in scale[:, 0]}) == 4  # each sequence its own mask
        torch.testing.assert_close(state[0], y[:, -1])  # the recurrence runs unmasked
        again, _ = m(z, a, generator=torch.Generator().manual_seed(1))
        other, _ = m(z, a, generator=torch.Generator().manual_seed(2))
        assert torch.equal(again.mu, out.mu) and not torch.allclose(other.mu, out.mu)
        m.eval()
        plain = MDRNN(3, 2, 16, 2)
        plain.load_state_dict(m.state_dict())
        assert all(torch.equal(x, y) for x, y in zip(m(z, a)[0], plain(z, a)[0]))
    with pytest.raises(WorldModelsError, match=r"dropout must be in \[0, 1\)"):
        MDRNN(3, 2, 16, 2, dropout=1.0)


def test_mdrnn_checkpoint_records_dropout_and_older_ones_load_without_it(tmp_path):
    from worldmodels.checkpoint import save_checkpoint

    m = MDRNN(3, 2, 8, 2, dropout=0.3)
    save_checkpoint(tmp_path / "m", "mdrnn", {"model": m.state_dict(), "model_args": m.config})
    assert load_mdrnn(tmp_path / "m").dropout == 0.3
    old_args = {k: v for k, v in m.config.items() if k != "dropout"}
    save_checkpoint(tmp_path / "old", "mdrnn", {"model": m.state_dict(), "model_args": old_args})
    assert load_mdrnn(tmp_path / "old").dropout == 0.0


def test_train_mdrnn_dropout_is_recorded_resumes_exactly_and_is_part_of_the_run(tmp_path):
    write_latents(tmp_path / "latents.h5")
    kw = {"steps": 4, "eval_every": 2, "picture_steps": 0, "dropout": 0.3}
    straight = train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "a" / "mdrnn"), **kw))
    train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "b" / "mdrnn"), **{**kw, "steps": 2}))
    resumed = train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "b" / "mdrnn"), **kw))
    a, b = (load_checkpoint(r["checkpoint"]) for r in (straight, resumed))
    assert a["model_args"]["dropout"] == 0.3 and load_mdrnn(straight["checkpoint"]).dropout == 0.3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # masks drawn per step: resume-exact
    plain = train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "c" / "mdrnn"), **{**kw, "dropout": 0.0}))
    assert not torch.equal(load_checkpoint(plain["checkpoint"])["model"]["head.weight"], a["model"]["head.weight"])
    with pytest.raises(WorldModelsError, match="different config.*dropout"):
        train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "b" / "mdrnn"), **{**kw, "dropout": 0.1}))
    with pytest.raises(WorldModelsError, match=r"dropout must be in \[0, 1\)"):
        train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "d" / "mdrnn"), **{**kw, "dropout": 1.0}))
    # a run from before the option (no dropout in its recorded config) resumes with the default
    state = load_checkpoint(plain["checkpoint"])
    del state["config"]["dropout"]
    save_checkpoint(plain["checkpoint"], "mdrnn", state)
    more = train_mdrnn.run(tiny_cfg(tmp_path, out=str(tmp_path / "c" / "mdrnn"), **{**kw, "dropout": 0.0, "steps": 6}))
    assert more["id"] == plain["id"] and more["step"] == 6
