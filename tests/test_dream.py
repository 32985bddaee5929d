"""The batched dream: agreement with M and with single dreams, temperature, done masking, gymnasium envs."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from worldmodels.dream import DreamEnv, DreamGymEnv, DreamVectorEnv
from worldmodels.errors import WorldModelsError
from worldmodels.models.mdrnn import MDRNN

Z, A, H, K = 4, 2, 16, 3


class TinyDecoder(torch.nn.Module):
    """Stands in for V where a picture is needed: z -> (B, 3, 64, 64) in [0, 1]."""

    def __init__(self, z_dim=Z):
        super().__init__()
        self.fc = torch.nn.Linear(z_dim, 3 * 64 * 64)

    def decode(self, z):
        return torch.sigmoid(self.fc(z)).view(-1, 3, 64, 64)


def make_model(seed=0, dtype=torch.float32, done_bias=-5.0):
    torch.manual_seed(seed)
    m = MDRNN(Z, A, H, K).to(dtype).eval()
    with torch.no_grad():
        m.head.bias[-1] = done_bias  # rarely done unless a test wants it
    return m


def initial(n=5, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, Z, generator=g, dtype=dtype), torch.full((n, Z), -2.0, dtype=dtype)


def test_batched_members_equal_single_dreams():
    m = make_model(dtype=torch.float64, done_bias=0.0)
    with torch.no_grad():
        m.head.weight[-1] *= 20  # some members end early, so freezing is exercised too
    B, steps = 6, 12
    acts = torch.rand(steps, B, A, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1
    batched = DreamEnv(None, m, initial(dtype=torch.float64), 1.2, B, "cpu", 10, seed=11)
    singles = [DreamEnv(None, m, initial(dtype=torch.float64), 1.2, 1, "cpu", 10, seed=11, stream_ids=[b])
               for b in range(B)]
    obs = batched.reset()
    for b, env in enumerate(singles):
        assert torch.allclose(env.reset(), obs[b:b + 1], atol=1e-10)
    for t in range(steps):
        obs, rew, done, _ = batched.step(acts[t])
        for b, env in enumerate(singles):
            o, r, d, _ = env.step(acts[t, b:b + 1])
            assert torch.allclose(o, obs[b:b + 1], atol=1e-8) and torch.allclose(r, rew[b:b + 1], atol=1e-8)
            assert bool(d[0]) == bool(done[b])
    assert 0 < int(batched.done.sum()) and batched.all_done()
    assert torch.equal(batched.lengths, torch.cat([e.lengths for e in singles]))
    assert len(set(obs[:, 0].tolist())) == B  # members really draw different numbers


def test_dream_step_follows_mdrnn_step():
    m = make_model()
    env = DreamEnv(None, m, initial(), 1.0, 8, "cpu", 50, obs_mode="zch", seed=3)
    obs = env.reset()
    z, state = obs[:, :Z], None
    for t in range(5):
        a = torch.randn(8, A)
        with torch.no_grad():
            out, state = m.step(z, a, state)
        obs, reward, _, _ = env.step(a)
        z, c, h = obs[:, :Z], obs[:, Z:Z + H], obs[:, Z + H:]
        assert torch.allclose(h, state[0], atol=1e-5) and torch.allclose(c, state[1], atol=1e-5)
        assert torch.allclose(reward, out.reward, atol=1e-5)


@pytest.mark.parametrize("obs_mode", ["zh", "zch", "z"])
def test_dream_observations_are_c_s_input_as_the_agent_and_the_offline_fit_build_it(obs_mode):
    """A dream's observations are the controller-input rule of docs/controller.md: ``controller_input`` of the
    dreamed z and M's state after (z_0, a_0) ... (z_{t-1}, a_{t-1}) from zero, the features the offline fit builds
    (``offline.controller_features``, M.step teacher-forced) on the dream's own latents and actions. Another
    layout ([h, z], [z, h, c]) or a state one step off would make C see something else in the dream than in the
    real env."""
    from worldmodels.models.controller import controller_input_dim
    from worldmodels.offline import controller_features

    m = make_model(dtype=torch.float64)
    B, steps = 3, 6
    env = DreamEnv(None, m, initial(dtype=torch.float64), 1.0, B, "cpu", 50, obs_mode=obs_mode, seed=4)
    assert env.obs_dim == controller_input_dim(Z, H, obs_mode)
    obs, zs = [env.reset()], [env.z.clone()]
    acts = torch.rand(steps, B, A, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    for t in range(steps):
        obs.append(env.step(acts[t])[0])
        zs.append(env.z.clone())
    assert not bool(env.done.any())
    obs, zs = torch.stack(obs, 1), torch.stack(zs, 1)  # (B, T + 1, obs_dim), (B, T + 1, Z)
    pad = torch.zeros(B, 1, A, dtype=torch.float64)  # the action after the last observation is never read
    feats = controller_features(m, list(zs.numpy()), list(torch.cat([acts.transpose(0, 1), pad], 1)), obs_mode)
    torch.testing.assert_close(obs, torch.as_tensor(np.stack(feats)), atol=1e-10, rtol=0)
    if obs_mode != "z":
        assert obs[:, -1, Z:].abs().max() > 1e-3  # the state part is not trivially zero


@pytest.mark.parametrize("tau", [0.05, 1.3])
def test_dream_samples_the_tempered_mixture(tau):
    m = make_model(seed=2)
    with torch.no_grad():
        m.head.weight[:Z * K] *= 4  # peaked mixture weights make the temperature matter
    n = 40000
    one = (torch.randn(1, Z), torch.full((1, Z), -40.0))  # every member starts at the same z
    env = DreamEnv(None, m, one, tau, n, "cpu", 5, seed=4)
    obs0 = env.reset()
    a = torch.full((n, A), 0.3)
    z1 = env.step(a)[0][:, :Z]
    with torch.no_grad():
        out, _ = m.step(obs0[:1, :Z], a[:1])
    pi = torch.softmax(out.logpi[0] / tau, -1)  # (Z, K)
    mu, sigma = out.mu[0], out.logsigma[0].exp() * math.sqrt(tau)
    mean = (pi * mu).sum(-1)
    var = (pi * (sigma ** 2 + mu ** 2)).sum(-1) - mean ** 2
    se = (var / n).sqrt()
    assert ((z1.mean(0) - mean).abs() < 5 * se + 1e-4).all()
    assert torch.allclose(z1.var(0), var, rtol=0.05, atol=1e-5)


def test_done_members_are_frozen_until_all_are_done():
    m = make_model(done_bias=0.0)
    with torch.no_grad():
        m.head.weight[-1] *= 20
    B = 32
    env = DreamEnv(None, m, initial(), 1.0, B, "cpu", max_steps=6, reward="survival", seed=0)
    env.reset()
    seen_done = torch.zeros(B, dtype=torch.bool)
    frozen_obs = frozen_ret = None
    for t in range(9):
        obs, reward, done, info = env.step(torch.rand(B, A) * 2 - 1)
        if frozen_obs is not None:
            assert torch.equal(obs[seen_done], frozen_obs[seen_done])
            assert torch.equal(env.returns[seen_done], frozen_ret[seen_done])
            assert (reward[seen_done] == 0).all()
        assert not (info["terminated"] & seen_done).any()
        seen_done |= done
        frozen_obs, frozen_ret = obs.clone(), env.returns.clone()
    assert env.all_done() and 0 < int((env.lengths < 6).sum()) < B  # some ended early, others were cut
    assert torch.equal(env.returns, env.lengths.float())  # survival: +1 per step alive
    assert env.lengths.max() == 6


def test_seeds_and_episodes():
    m = make_model()
    env = DreamEnv(None, m, initial(), 1.0, 4, "cpu", 20, seed=9)
    first = env.reset()
    nxt = env.step(torch.zeros(4, A))[0]
    assert torch.equal(env.reset(seed=9), first) and torch.equal(env.step(torch.zeros(4, A))[0], nxt)
    assert not torch.equal(env.reset(), first)  # a new episode draws new numbers
    assert not torch.equal(env.reset(seed=10), first)


def test_augmentation_hook():
    class Shift:
        def __init__(self):
            self.calls = []

        def reset(self, batch_size, max_steps, generator, device):
            self.calls.append(("reset", batch_size, max_steps, isinstance(generator, torch.Generator)))

        def __call__(self, z_next, ctx):
            self.calls.append(("step", ctx.step, tuple(ctx.state[0].shape)))
            return torch.full_like(z_next, 7.0)

    aug = Shift()
    env = DreamEnv(None, make_model(), initial(), 1.0, 3, "cpu", 10, seed=0, augmentations=[aug])
    env.reset()
    obs = env.step(torch.zeros(3, A))[0]
    env.step(torch.zeros(3, A))
    assert (obs[:, :Z] == 7.0).all()
    assert aug.calls == [("reset", 3, 10, True), ("step", 0, (3, H)), ("step", 1, (3, H))]


def test_bad_arguments_are_clear_errors():
    m = make_model()
    with pytest.raises(WorldModelsError, match="reward"):
        DreamEnv(None, m, initial(), reward="money")
    with pytest.raises(WorldModelsError, match="initial_latents"):
        DreamEnv(None, m, (torch.zeros(3, Z + 1), torch.zeros(3, Z + 1)))
    env = DreamEnv(None, m, initial(), batch_size=2)
    env.reset()
    with pytest.raises(WorldModelsError, match="actions must have shape"):
        env.step(torch.zeros(3, A))
    with pytest.raises(WorldModelsError, match="no VAE"):
        env.frames()


def test_discrete_actions_are_one_hot():
    m = make_model()
    env = DreamEnv(None, m, initial(), 1.0, 3, "cpu", 10, seed=1)
    env.reset()
    z0 = env.z.clone()
    h = env.step(torch.tensor([0, 1, 1]))[0][:, Z:]
    with torch.no_grad():
        _, (h_ref, _) = m.step(z0, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    assert torch.allclose(h, h_ref, atol=1e-5)


@pytest.mark.parametrize("space", [None, {"type": "discrete", "n": A}])
def test_dream_gym_env_passes_check_env(space):
    env = DreamGymEnv(TinyDecoder(), make_model(), initial(), 1.0, "cpu", max_steps=20, action_space=space,
                      render_mode="rgb_array")
    check_env(env, skip_render_check=False)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (Z + H,) and obs.dtype == np.float32
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    total, steps, ended = 0.0, 0, False
    while not ended:
        obs, r, term, trunc, _ = env.step(env.action_space.sample())
        total, steps, ended = total + r, steps + 1, term or trunc
    assert steps <= 20 and total == pytest.approx(float(env.dream.returns[0]), abs=1e-4)


def test_vector_env_steps_and_autoresets():
    m = make_model(done_bias=0.0)
    with torch.no_grad():
        m.head.weight[-1] *= 20
    n = 16
    venv = DreamVectorEnv(None, m, initial(), n, 1.0, "cpu", max_steps=4, seed=2, reward="survival")
    assert isinstance(venv, gym.vector.VectorEnv) and venv.observation_space.shape == (n, Z + H)
    obs, _ = venv.reset(seed=2)
    ended_before = np.zeros(n, bool)
    episodes = 0
    for t in range(12):
        obs2, rew, term, trunc, _ = venv.step(venv.action_space.sample())
        assert obs2.shape == (n, Z + H) and rew.shape == (n,)
        # members that ended last step restart now: reward 0, not ended, a fresh first observation
        assert (rew[ended_before] == 0).all() and not (term | trunc)[ended_before].any()
        assert (rew[~ended_before] == 1).all()
        episodes += int((term | trunc).sum())
        ended_before = term | trunc
        obs = obs2
    assert episodes > n  # members restarted and ended again
    assert venv.dream.lengths.max() <= 4


@pytest.fixture(scope="module")
def dream_run(tmp_path_factory):
    """A run folder with a random V and a 2-step M trained on tiny Doom latents."""
    from test_mdrnn import ZT, tiny_cfg, write_latents
    from worldmodels.checkpoint import save_checkpoint
    from worldmodels.models.vae import ConvVAE
    from worldmodels.stages import train_mdrnn

    root = tmp_path_factory.mktemp("dream_stage")
    write_latents(root / "latents.h5")
    torch.manual_seed(0)
    save_checkpoint(root / "run" / "vae", "vae", {"model": ConvVAE(ZT).state_dict(), "z_dim": ZT})
    train_mdrnn.run(tiny_cfg(root, steps=2, eval_every=2, picture_steps=0))
    return root


def test_dream_stage_records_a_gif(dream_run, tmp_path):
    import imageio.v2 as imageio

    from worldmodels import cli
    from worldmodels.stages import dream as dream_stage

    _, cfg = cli.parse_stage_args("dream", ["--run", str(dream_run / "run"), "--steps", "5", "--members", "2",
                                            "--out", str(tmp_path / "d.gif"), "--device", "cpu"])
    result = dream_stage.run(cfg)
    gif = imageio.mimread(tmp_path / "d.gif")
    assert len(gif) == result["frames"] and 2 <= len(gif) <= 6 and gif[0].shape[:2] == (64 * 2, 128 * 2)
    assert result["returns"] == [float(n) for n in result["lengths"]]  # Doom latents: survival reward
    with pytest.raises(WorldModelsError, match="no checkpoint"):
        dream_stage.run(dream_stage.Config(run=str(tmp_path / "nothing")))


def test_dream_stage_pictures_an_augmented_dream_beside_the_plain_one(dream_run, tmp_path):
    import imageio.v2 as imageio

    from worldmodels import cli
    from worldmodels.stages import dream as dream_stage

    def halves(strength, probability):
        out = tmp_path / f"d{strength}.gif"
        _, cfg = cli.parse_stage_args("dream", [
            "--run", str(dream_run / "run"), "--steps", "6", "--out", str(out), "--device", "cpu",
            "--augment", "random_swing", "--augment-options",
            f"{{random_swing: {{probability: {probability}, strength: {strength}, window: 1}}}}"])
        result = dream_stage.run(cfg)
        assert result["png"] == str(out.with_suffix(".png")) and out.with_suffix(".png").stat().st_size > 1000
        assert result["augment"][0]["strength"] == strength
        gif = np.stack(imageio.mimread(out))[..., :3]  # (T, 128, 256, 3): plain | augmented, upscaled x2
        assert gif.shape[2] == 2 * gif.shape[1] == 2 * 128
        return gif[:, :, :128], gif[:, :, 128:], result

    plain, augmented, result = halves(0.0, 1.0)
    assert np.array_equal(plain, augmented)  # strength 0 is the identity: same seed, same actions, same dream
    assert result["augmented_returns"] == result["returns"]
    plain2, augmented, _ = halves(1.0, 1.0)
    assert np.array_equal(plain2, plain)  # the plain dream does not depend on the augmented one
    assert not np.array_equal(plain2[1:], augmented[1:])  # swung at step 0: the dream goes elsewhere
    assert np.array_equal(plain2[0], augmented[0])  # the start frame is shared


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniforms_never_reach_0_or_1(dtype):
    """Regression: with 24 bits the top value rounded to u = 1.0 in float32, erfinv gave inf and the dream NaN."""
    from worldmodels.dream import rng

    top = (1 << rng.UNIFORM_BITS) - 1
    u = rng.bits_to_uniform(torch.tensor([0, 1, top - 1, top]), dtype)
    assert (u > 0).all() and (u < 1).all()
    normals = torch.erfinv(u * 2 - 1), torch.special.ndtri(u)
    assert all(torch.isfinite(n).all() for n in normals)
    # and the streams themselves stay inside (0, 1) over many draws
    keys = rng.stream_keys(3, torch.arange(4096))
    draws = rng.uniforms(keys, torch.zeros(4096, dtype=torch.int64), rng.index_keys(256, "cpu"), torch.float32)
    assert draws.min() > 0 and draws.max() < 1


# --- dream ensembles: a dropout mask or one of K Ms per member's episode ----------------------------------

def _run(env, steps, restart_at=None, restart=None, first=0, seed=5):
    """(B, ...): obs, rewards and dones of ``steps`` steps from reset, the members ``restart`` (B,) (default every
    third) restarted after step ``restart_at``; actions (8, A) per step, rows first..first+B used."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(steps, 8, A, generator=g, dtype=env.dtype) * 2 - 1
    B = env.batch_size
    trace = [env.reset()]
    for t in range(steps):
        obs, reward, done, _ = env.step(acts[t, first:first + B])
        trace += [obs, reward[:, None], done[:, None].to(env.dtype)]
        if t == restart_at:
            trace.append(env.reset_members(torch.arange(B) % 3 == 0 if restart is None else restart))
    return torch.cat(trace, 1)


def test_dream_ensemble_options_off_are_the_plain_dream():
    """Dropout 0 and no extra Ms are the plain dream bit for bit; an ensemble of M with itself and a dropout rate
    too small to drop anything follow it to float precision, so neither draw moves the latents' noise."""
    m = make_model(dtype=torch.float64, done_bias=0.0)
    args = (None, m, initial(dtype=torch.float64), 1.1, 6, "cpu", 8)
    plain = _run(DreamEnv(*args, seed=3), 10, restart_at=4)
    assert torch.equal(_run(DreamEnv(*args, seed=3, dropout=0.0, models=()), 10, restart_at=4), plain)
    twin = make_model(dtype=torch.float64, done_bias=0.0)
    triplets = DreamEnv(*args, seed=3, models=[twin, twin])
    torch.testing.assert_close(_run(triplets, 10, restart_at=4), plain, atol=1e-10, rtol=0)
    assert set(triplets.model_ids.tolist()) == {0, 1, 2}  # the members really ran on the three copies
    tiny = DreamEnv(*args, seed=3, dropout=1e-12)
    torch.testing.assert_close(_run(tiny, 10, restart_at=4), plain, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kw", [{"dropout": 0.4}, {"models": 2}, {"dropout": 0.2, "models": 1}])
def test_dream_ensemble_members_equal_single_dreams(kw):
    """Member b of a batched ensemble dream equals a single one with stream b: the same M drawn (model and mask),
    the same trajectory, also after a restart (which draws a new M for the restarted members)."""
    m = make_model(dtype=torch.float64, done_bias=0.0)
    with torch.no_grad():
        m.head.weight[-1] *= 20  # some members end early
    kw = {**kw, "models": [make_model(seed=s, dtype=torch.float64, done_bias=0.0)
                           for s in range(1, 1 + kw.get("models", 0))]}
    B = 6
    args = (None, m, initial(dtype=torch.float64), 1.2, B, "cpu", 10)
    batched = DreamEnv(*args, seed=11, **kw)
    trace = _run(batched, 12, restart_at=5)
    for b in range(B):
        single = DreamEnv(None, m, initial(dtype=torch.float64), 1.2, 1, "cpu", 10, seed=11, stream_ids=[b], **kw)
        torch.testing.assert_close(_run(single, 12, 5, torch.tensor([b % 3 == 0]), b)[0], trace[b], atol=1e-8, rtol=0)
        assert single.model_ids[0] == batched.model_ids[b]
        if batched.head_mask is not None:
            assert torch.equal(single.head_mask[0], batched.head_mask[b])
    if kw["models"]:
        assert len(set(batched.model_ids.tolist())) > 1


def test_dream_dropout_mask_is_fixed_per_episode_applies_to_the_head_only_and_is_redrawn_on_restart():
    p, B = 0.5, 64
    m = make_model(dtype=torch.float64)
    env = DreamEnv(None, m, initial(dtype=torch.float64), 1.0, B, "cpu", 50, obs_mode="zch", dropout=p, seed=2)
    obs = env.reset()
    mask = env.head_mask.clone()
    assert set(mask.unique().tolist()) == {0.0, 1 / (1 - p)} and abs(float((mask == 0).double().mean()) - p) < 0.05
    assert len({tuple(row.tolist()) for row in mask}) == B  # every member its own mask
    z, state = obs[:, :Z], None
    for t in range(4):
        a = torch.rand(B, A, dtype=torch.float64) * 2 - 1
        with torch.no_grad():
            _, state = m.step(z, a, state)
            head = m.head(state[0] * mask)  # (B, 3ZK+2): M's head on the masked h
        obs, reward, _, _ = env.step(a)
        z, c, h = obs[:, :Z], obs[:, Z:Z + H], obs[:, Z + H:]
        torch.testing.assert_close(h, state[0], atol=1e-10, rtol=0)  # the recurrence and C keep the unmasked h
        torch.testing.assert_close(c, state[1], atol=1e-10, rtol=0)
        torch.testing.assert_close(reward, head[:, 3 * Z * K], atol=1e-10, rtol=0)  # the head reads masked h
        assert torch.equal(env.head_mask, mask)  # fixed within the episode
    restart = torch.arange(B) < B // 2
    env.reset_members(restart)
    assert torch.equal(env.head_mask[~restart], mask[~restart])
    assert all(not torch.equal(env.head_mask[b], mask[b]) for b in range(B // 2))
    env.reset()
    assert not torch.equal(env.head_mask, mask)  # a new episode for everyone: new masks


def test_dream_ensemble_member_steps_its_drawn_m_alone_and_members_split_evenly():
    """A member drawn onto M2 dreams exactly what a dream of M2 alone gives with the same seed and stream (the draw
    of the model leaves the latents' noise alone), one on M1 what M1 alone gives; the K Ms each get ~1/K."""
    m1, m2, m3 = (make_model(seed=s, dtype=torch.float64, done_bias=0.0) for s in (0, 1, 2))
    B = 8
    args = (initial(dtype=torch.float64), 1.1, B, "cpu", 10)
    ens = DreamEnv(None, m1, *args, seed=4, models=[m2])
    trace = _run(ens, 9)
    ids = ens.model_ids.tolist()
    assert set(ids) == {0, 1}
    for b, k in enumerate(ids):
        alone = DreamEnv(None, (m1, m2)[k], initial(dtype=torch.float64), 1.1, 1, "cpu", 10, seed=4, stream_ids=[b])
        torch.testing.assert_close(_run(alone, 9, first=b)[0], trace[b], atol=1e-10, rtol=0)
    frames = (torch.arange(3.0)[:, None].expand(3, Z) * 10, torch.full((3, Z), -40.0))  # 3 first frames, sigma ~0
    big = DreamEnv(None, make_model(), frames, 1.0, 6000, "cpu", 10, seed=0,
                   models=[make_model(seed=1), make_model(seed=2)])
    frame = (big.reset()[:, 0] / 10).round().long()  # which first frame each member started from
    share = torch.bincount(big.model_ids, minlength=3).double() / 6000
    assert ((share - 1 / 3).abs() < 0.03).all()
    assert abs(float((big.model_ids == frame).double().mean()) - 1 / 3) < 0.03  # independent of the first-frame draw
    big.reset_members(torch.arange(6000) < 3000)
    assert (big.model_ids[:3000] != big.model_ids[3000:]).float().mean() > 0.5  # restarted members draw again


def test_dream_ensemble_bad_arguments_are_clear_errors():
    m = make_model()
    for p in (-0.1, 1.0):
        with pytest.raises(WorldModelsError, match=r"dropout must be in \[0, 1\)"):
            DreamEnv(None, m, initial(), dropout=p)
    with pytest.raises(WorldModelsError, match="dream model 1 has sizes"):
        DreamEnv(None, m, initial(), models=[MDRNN(Z, A, H + 1, K)])


def test_dream_ensembles_compose_with_augmentations():
    from worldmodels.augment import RandomSwing

    m, m2 = make_model(dtype=torch.float64), make_model(seed=1, dtype=torch.float64)
    args = (None, m, initial(dtype=torch.float64), 1.0, 6, "cpu", 10)
    ensemble = _run(DreamEnv(*args, seed=1, dropout=0.3, models=[m2]), 6, restart_at=2)
    idle = RandomSwing(probability=1.0, strength=0.0)
    assert torch.equal(_run(DreamEnv(*args, seed=1, dropout=0.3, models=[m2], augmentations=[idle]), 6, 2), ensemble)
    swing = RandomSwing(probability=1.0, strength=1.0, window=1)
    swung = _run(DreamEnv(*args, seed=1, dropout=0.3, models=[m2], augmentations=[swing]), 6, 2)
    assert torch.equal(swung[:, :Z + H], ensemble[:, :Z + H]) and not torch.equal(swung, ensemble)


# --- the pessimistic dream: M's reward less its spread over dropout masks ---------------------------------

def test_dream_penalty_pays_m_s_reward_less_its_spread_over_masks_and_moves_nothing_else():
    """Penalty 0 is the plain dream bit for bit. With a penalty the latents, states and dones are the plain
    dream's, and each step's reward is M's less penalty x the std, over the dream's masks, of the reward M's head
    predicts from the masked h (recomputed here from M itself); the masks are shared by the members, the same for
    the same seed and new for another, and a restarted member's uncertainty starts again from 0."""
    m = make_model(dtype=torch.float64, done_bias=0.0)
    args = (None, m, initial(dtype=torch.float64), 1.1, 6, "cpu", 8)
    plain = _run(DreamEnv(*args, seed=3), 10, restart_at=4)
    assert torch.equal(_run(DreamEnv(*args, seed=3, penalty=0.0), 10, restart_at=4), plain)
    lam, masks, p = 2.5, 5, 0.3
    env = DreamEnv(*args, seed=3, penalty=lam, penalty_masks=masks, penalty_dropout=p)
    pess = _run(env, 10, restart_at=4)
    reward_col = [i for i in range(pess.shape[1]) if not torch.equal(pess[:, i], plain[:, i])]
    width = Z + H  # the trace: obs (Z + H), then per step obs, reward, done (and obs after the restart)
    rewards = [width + s * (width + 2) + width + (1 if s > 4 else 0) * width for s in range(10)]
    assert reward_col and set(reward_col) <= set(rewards)  # only rewards differ
    weights = env._penalty_w  # (H, masks): M's reward weights through each mask
    keep = (weights / m.head.weight[3 * Z * K][:, None] * (1 - p)).round()
    assert set(keep.unique().tolist()) <= {0.0, 1.0} and weights.shape == (H, masks)
    # each mask's reward is M's head on the masked h
    env2 = DreamEnv(*args, seed=3, penalty=lam, penalty_masks=masks, penalty_dropout=p)
    obs = env2.reset()
    z, state, g = obs[:, :Z], None, torch.Generator().manual_seed(1)
    spread_sum = torch.zeros(6, dtype=torch.float64)
    for t in range(3):
        a = torch.rand(6, A, generator=g, dtype=torch.float64) * 2 - 1
        with torch.no_grad():
            _, state = m.step(z, a, state)
            each = torch.stack([m.head(state[0] * keep[:, j] / (1 - p))[:, 3 * Z * K] for j in range(masks)], 1)
            plain_r = m.head(state[0])[:, 3 * Z * K]
        alive = (~env2.done).double()  # finished members pay nothing
        obs, reward, _, _ = env2.step(a)
        z = obs[:, :Z]
        torch.testing.assert_close(reward, (plain_r - lam * each.std(1)) * alive, atol=1e-10, rtol=0)
        spread_sum += each.std(1) * alive
    torch.testing.assert_close(env2.uncertainty, spread_sum, atol=1e-10, rtol=0)
    env2.reset_members(torch.arange(6) < 2)
    assert (env2.uncertainty[:2] == 0).all() and (env2.uncertainty[2:] > 0).all()
    same = DreamEnv(*args, seed=3, penalty=lam, penalty_masks=masks, penalty_dropout=p)
    same.reset()
    assert torch.equal(same._penalty_w, weights)
    same.reset(seed=4)
    assert not torch.equal(same._penalty_w, weights)
    for bad in ({"penalty": -1.0}, {"penalty": 1.0, "penalty_masks": 1}, {"penalty": 1.0, "penalty_dropout": 0.0}):
        with pytest.raises(WorldModelsError, match="dream penalty must be >= 0"):
            DreamEnv(*args, **bad)


def test_dream_starts_with_zero_state_are_the_first_frame_dream_and_a_given_state_is_m_s():
    """(mu, logvar, h=0, c=0) is the plain dream bit for bit; with a start's (h, c) every member begins in that
    state (each member's start drawn as its first latents are), and the first step follows M from it."""
    m = make_model(dtype=torch.float64, done_bias=0.0)
    mu, logvar = initial(dtype=torch.float64)
    zeros = torch.zeros(len(mu), H, dtype=torch.float64)
    args = (None, m, 1.1, 6, "cpu", 8)
    plain = _run(DreamEnv(None, m, (mu, logvar), 1.1, 6, "cpu", 8, seed=3), 10, restart_at=4)
    assert torch.equal(_run(DreamEnv(args[0], m, (mu, logvar, zeros, zeros), *args[2:], seed=3), 10, restart_at=4), plain)
    g = torch.Generator().manual_seed(2)
    h0, c0 = torch.rand(len(mu), H, generator=g, dtype=torch.float64), torch.randn(len(mu), H, generator=g, dtype=torch.float64)
    env = DreamEnv(None, m, (mu, logvar, h0, c0), 1.1, 6, "cpu", 8, obs_mode="zch", seed=3)
    obs = env.reset()
    z, c, h = obs[:, :Z], obs[:, Z:Z + H], obs[:, Z + H:]
    # each member's start: the row of h0 equal to its h, and the same row's c and (near) mu
    rows = [int(torch.nonzero((h0 == h[b]).all(1))[0]) for b in range(6)]
    assert all(torch.equal(c[b], c0[r]) for b, r in enumerate(rows))
    assert all((z[b] - mu[r]).abs().max() < 6 * math.exp(-1.0) for b, r in enumerate(rows))  # sigma = e^-1
    a = torch.rand(6, A, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out, state = m.step(z, a, (h, c))
    obs, reward, _, _ = env.step(a)
    assert torch.allclose(obs[:, Z + H:], state[0]) and torch.allclose(reward, out.reward)
    with pytest.raises(WorldModelsError, match=r"initial \(h, c\)"):
        DreamEnv(None, m, (mu, logvar, h0[:, :3], c0), 1.1, 6, "cpu", 8)


def test_nearest_reward_snaps_m_s_reward_to_the_given_values():
    """Only the reward changes: each step pays the value nearest M's prediction (0 for finished members), and
    the returns add up the snapped rewards."""
    m = make_model(dtype=torch.float64, done_bias=0.0)
    args = (None, m, initial(dtype=torch.float64), 1.1, 6, "cpu", 8)
    values = torch.tensor([-0.2, 0.0, 0.1, 10.0], dtype=torch.float64)
    plain, snapped = DreamEnv(*args, seed=3), DreamEnv(*args, seed=3, reward="nearest", reward_values=[0.1, 10, -0.2, 0, 0])
    plain.reset(), snapped.reset()
    total = torch.zeros(6, dtype=torch.float64)
    for t in range(8):
        a = torch.rand(6, A, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        alive = ~plain.done
        o1, r1, d1, _ = plain.step(a)
        o2, r2, d2, _ = snapped.step(a)
        assert torch.equal(o1, o2) and torch.equal(d1, d2)
        assert torch.equal(r2, values[(r1.unsqueeze(1) - values).abs().argmin(1)] * alive)
        total += r2
    assert torch.equal(snapped.returns, total) and not torch.equal(snapped.returns, plain.returns)
    with pytest.raises(WorldModelsError, match="reward_values"):
        DreamEnv(*args, reward="nearest")


def test_calibrated_reward_snaps_to_the_value_whose_center_is_nearest():
    """The calibrated reward compares M's prediction with each value's center and pays that value: centers equal
    to the values are the nearest reward; centers that put 10 at 0.05 pay 10 where nearest pays 0."""
    m = make_model(dtype=torch.float64, done_bias=0.0)
    args = (None, m, initial(dtype=torch.float64), 1.1, 6, "cpu", 8)
    near = DreamEnv(*args, seed=3, reward="nearest", reward_values=[0, 10])
    same = DreamEnv(*args, seed=3, reward="calibrated", reward_values=[10, 0], reward_centers=[10, 0])
    plain = DreamEnv(*args, seed=3)
    low = DreamEnv(*args, seed=3, reward="calibrated", reward_values=[0, 10], reward_centers=[0.0, 0.05])
    for d in (near, same, plain, low):
        d.reset()
    paid = 0
    for t in range(8):
        a = torch.rand(6, A, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        alive = ~plain.done
        r_plain = plain.step(a)[1]
        r_near, r_same, r_low = near.step(a)[1], same.step(a)[1], low.step(a)[1]
        assert torch.equal(r_near, r_same)
        assert torch.equal(r_low, torch.where(r_plain > 0.025, 10.0, 0.0).double() * alive)
        paid += int((r_low > 0).sum()) - int((r_near > 0).sum())
    assert paid > 0  # the low centers pay 10 on steps nearest pays 0
    for bad in (dict(reward_values=[0, 10]), dict(reward_values=[0, 10], reward_centers=[0.0]),
                dict(reward_values=[0, 0], reward_centers=[0.0, 1.0])):
        with pytest.raises(WorldModelsError, match="calibrated"):
            DreamEnv(*args, reward="calibrated", **bad)


def test_any_starts_carry_m_s_state_from_the_real_frames_before_them(dream_run):
    """dream_starts any: every drawn frame's mu and logvar, with the state M reaches teacher-forced on the frames
    before it in its episode (zero at a first frame), however the episodes are chunked; a drawn subset is rows
    of the full set; the nearest reward refuses data with a continuum of rewards."""
    from worldmodels.agent import any_starts, load_world
    from worldmodels.data import open_latents
    from worldmodels.stages.train_mdrnn import actions_to_input

    world = load_world(dream_run / "run")
    with open_latents(dream_run / "latents.h5") as f:
        n, rows, desc = f.n_frames, f.episodes[:], dict(f.attrs["action_space"])
        mu, logvar, h, c = any_starts(f, world.mdrnn, limit=10**6, chunk=2)
        assert torch.equal(mu, torch.from_numpy(f.read("mu", 0, n)))
        assert torch.equal(logvar, torch.from_numpy(f.read("logvar", 0, n)))
        with torch.no_grad():
            for s, length in zip(rows["start"], rows["length"]):
                x = torch.cat([mu[s:s + length], torch.from_numpy(actions_to_input(f.read("action", s, s + length), desc))], 1)
                y, (_, c_end) = world.mdrnn.lstm(x[None, :-1])  # y[t]: h after frames 0..t, frame t+1's start
                assert not h[s].any() and not c[s].any()
                torch.testing.assert_close(h[s + 1:s + length], y[0], atol=1e-5, rtol=0)
                torch.testing.assert_close(c[s + length - 1], c_end[0, 0], atol=1e-5, rtol=0)
        sub = any_starts(f, world.mdrnn, limit=20, chunk=3)
    assert len(sub[0]) == 20
    for row in range(20):
        i = int(torch.nonzero((mu == sub[0][row]).all(1))[0])
        torch.testing.assert_close(sub[2][row], h[i], atol=1e-6, rtol=0)
    obs = world.dream_factory(1.0, 10, 0, starts="any")(4).reset(seed=0)
    assert obs.shape == (4, world.input_dim) and obs[:, world.z_dim:].abs().sum() > 0  # most starts are mid-episode
    with pytest.raises(WorldModelsError, match="distinct"):
        world.dream_factory(1.0, 10, 0, reward="nearest")


def test_reward_centers_are_m_s_median_prediction_per_reward_seen(dream_run, tmp_path):
    """teacher_forced_rewards is M run on each whole episode (z = mu, the actions taken), however the episodes are
    chunked; reward_centers is the median of its prediction per reward of the data; a calibrated dream pays those
    rewards only."""
    from worldmodels.agent import load_world, teacher_forced_rewards
    from worldmodels.data import open_latents
    from worldmodels.stages.train_mdrnn import actions_to_input

    import shutil

    import h5py

    latents = tmp_path / "latents.h5"  # the fixture's frames with a sparse reward: 10 where mu_0 > 0.5, else 0
    shutil.copy(dream_run / "latents.h5", latents)
    with h5py.File(latents, "r+") as h:
        h["reward"][:] = np.where(h["mu"][:, 0] > 0.5, 10.0, 0.0)
    world = load_world(dream_run / "run", latents=str(latents))
    with open_latents(latents) as f:
        rows, desc = f.episodes[:], dict(f.attrs["action_space"])
        reward, predicted = teacher_forced_rewards(f, world.mdrnn, chunk=3)
        assert np.array_equal(reward, f.read("reward", 0, f.n_frames))
        with torch.no_grad():
            for s, n in zip(rows["start"], rows["length"]):
                z = torch.from_numpy(np.asarray(f.read("mu", s, s + n)))
                a = torch.from_numpy(actions_to_input(f.read("action", s, s + n), desc))
                out, _ = world.mdrnn(z[None], a[None])
                np.testing.assert_allclose(predicted[s:s + n], out.reward[0].double().numpy(), atol=1e-5)
        np.testing.assert_allclose(teacher_forced_rewards(f, world.mdrnn, chunk=100)[1], predicted, atol=1e-5)
    values = world.reward_values()
    assert values == [0.0, 10.0]
    assert world.reward_centers() == [float(np.median(predicted[reward == v])) for v in values]
    assert len(set(predicted.round(6))) > 1  # a real spread: the median is not a constant's
    dream = world.dream_factory(1.0, 10, 0, starts="any", reward="calibrated")(4)
    dream.reset(seed=0)
    paid = torch.cat([dream.step(torch.zeros(4, world.mdrnn.action_dim))[1] for _ in range(5)])
    assert set(paid.tolist()) <= set(values)



def test_return_cap_ends_an_episode_when_its_return_reaches_the_cap_and_pays_no_more():
    """Until a member's return reaches the cap its dream is the plain dream's; the step it does, it pays what is
    left below the cap and ends (terminated), its return exactly the cap; a cap no one reaches is the plain
    dream bit for bit; a restarted member counts from 0 again."""
    m = make_model(dtype=torch.float64)
    with torch.no_grad():
        m.head.bias[3 * Z * K] = 1.0  # ~1 a step, so returns climb past the cap
    args = (None, m, initial(dtype=torch.float64), 1.1, 6, "cpu", 12)
    g = torch.Generator().manual_seed(2)
    actions = [torch.rand(6, A, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(12)]

    def play(env):
        env.reset()
        trace = []
        for a in actions:
            obs, reward, done, info = env.step(a)
            trace.append((obs.clone(), reward.clone(), done.clone(), info["terminated"].clone(), env.returns.clone()))
        return trace

    plain = play(DreamEnv(*args, seed=3))
    assert all(torch.equal(x, y) for p, q in zip(plain, play(DreamEnv(*args, seed=3, return_cap=1e6))) for x, y in zip(p, q))
    cumulative = torch.cumsum(torch.stack([t[1] for t in plain]), 0)  # (steps, B): the plain returns
    cap = float(cumulative[5].median())  # some members reach it within 6 steps, some later or never
    capped = play(DreamEnv(*args, seed=3, return_cap=cap))
    reached = [int(torch.nonzero(cumulative[:, b] >= cap)[0]) if (cumulative[:, b] >= cap).any() else None
               for b in range(6)]
    assert any(r is not None and r < 11 for r in reached) and len(set(reached)) > 1
    for b, at in enumerate(reached):
        end = len(actions) if at is None else at
        for t in range(end):  # before the cap: the plain dream
            assert torch.equal(capped[t][0][b], plain[t][0][b]) and capped[t][1][b] == plain[t][1][b]
        if at is not None:
            before = cumulative[at - 1, b] if at else 0.0
            torch.testing.assert_close(capped[at][1][b], cap - before, atol=1e-12, rtol=0)
            assert capped[at][3][b] and capped[at][2][b] and capped[at][4][b] == cap
            assert all(capped[t][1][b] == 0 and capped[t][4][b] == cap for t in range(at + 1, len(actions)))
    env = DreamEnv(*args, seed=3, return_cap=cap)
    play(env)
    env.reset_members(torch.arange(6) < 2)
    assert (env.returns[:2] == 0).all() and not env.done[:2].any()
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(WorldModelsError, match="dream return cap must be a positive number"):
            DreamEnv(*args, return_cap=bad)
