"""The offline baseline: weights, target mappings, recovery of a known linear policy, and a checkpoint evaluate reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_controller import make_tiny_run
from worldmodels.agent import load_world
from worldmodels.errors import WorldModelsError
from worldmodels.models.controller import BatchedController, make_action_map
from worldmodels.offline import episode_weights, fit_offline_controller, fit_policy, raw_targets, save_offline_controller

PROCGEN = make_action_map("procgen", {"type": "discrete", "n": 5})
CAR = make_action_map("carracing", {"type": "box", "shape": [3]})
DOOM = make_action_map("doom", {"type": "discrete", "n": 3})


def test_episode_weights():
    r = [0.0, 1.0, 3.0]
    soft = episode_weights(r)
    assert np.isclose(soft.mean(), 1.0) and soft[0] < soft[1] < soft[2]
    assert np.allclose(episode_weights(r, "minmax") * 4 / 9, [0.0, 1 / 3, 1.0])  # mean-1 rescaled (R-min)/(max-min)
    assert np.allclose(episode_weights(r, "uniform"), 1.0) and np.allclose(episode_weights([2.0, 2.0]), 1.0)
    sharper = episode_weights(r, beta=5.0)
    assert sharper[2] / sharper[0] > soft[2] / soft[0]
    with pytest.raises(WorldModelsError, match="softmax, minmax, uniform"):
        episode_weights(r, "best")


def test_targets_invert_the_action_maps():
    raw = torch.tensor(raw_targets(np.array([[0.3, 0.8, 0.5]]), CAR))
    assert torch.allclose(CAR(raw), torch.tensor([[0.3, 0.8, 0.5]], dtype=torch.float64))
    for action in range(3):
        assert DOOM(torch.tensor(raw_targets(np.array([action]), DOOM))).item() == action
    assert raw_targets(np.array([2, 0]), PROCGEN).tolist() == [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]]


def synthetic(map_, true_params, n_good=30, n_bad=30, T=40, dim=6, seed=0):
    """Good episodes (returns 10 to 11) act with the known linear policy, bad ones (return 0) with another one."""
    rng = np.random.default_rng(seed)
    good = BatchedController(true_params, dim, map_.output_dim, map_.bias, dtype=torch.float64)
    bad = BatchedController(rng.normal(size=len(true_params)), dim, map_.output_dim, map_.bias, dtype=torch.float64)
    feats, acts, rets = [], [], []
    for e in range(n_good + n_bad):
        x = rng.normal(size=(T, dim))
        policy = good if e < n_good else bad
        feats.append(x), acts.append(map_(policy(torch.tensor(x))).numpy())
        rets.append(10.0 + rng.uniform() if e < n_good else 0.0)
    return feats, acts, rets


def test_recovers_a_known_discrete_policy_and_weights_high_returns():
    dim = 6
    true = np.random.default_rng(1).normal(size=PROCGEN.output_dim * (dim + 1))
    feats, acts, rets = synthetic(PROCGEN, true, dim=dim)
    x = torch.tensor(np.random.default_rng(2).normal(size=(2000, dim)))
    want = PROCGEN(BatchedController(true, dim, 5, True, dtype=torch.float64)(x))

    def agreement(fit):
        return (PROCGEN(BatchedController(fit.params, dim, 5, True, dtype=torch.float64)(x)) == want).double().mean()

    weighted = agreement(fit_policy(feats, acts, rets, PROCGEN, beta=3.0))
    uniform = agreement(fit_policy(feats, acts, rets, PROCGEN, weighting="uniform"))
    assert weighted > 0.8 and weighted > uniform + 0.15


def test_recovers_a_known_continuous_policy():
    dim = 6
    true = np.random.default_rng(3).normal(scale=0.3, size=3 * (dim + 1))
    feats, acts, rets = synthetic(CAR, true, dim=dim)
    # Steering and gas invert exactly; brake clips negative raw outputs to 0, which cannot be inverted.
    rows = np.r_[0:2 * dim, 3 * dim:3 * dim + 2]
    fit = fit_policy(feats, acts, rets, CAR, weighting="minmax", ridge=1e-6)
    assert np.allclose(fit.params[rows], true[rows], atol=0.03)  # only the good episodes count with min-max weights
    blurred = fit_policy(feats, acts, rets, CAR, weighting="uniform", ridge=1e-6)
    assert np.abs(blurred.params[rows] - true[rows]).max() > 0.1


@pytest.mark.parametrize("env", ["carracing", "procgen:coinrun"])
def test_fit_on_a_run_gives_a_checkpoint_evaluate_reads(tmp_path, env):
    from worldmodels.stages import evaluate as ev

    run = make_tiny_run(tmp_path, env=env)
    world = load_world(run, "zh")
    fit = fit_offline_controller(world)
    assert fit.params.shape == (world.n_params,) and np.isfinite(fit.params).all()
    assert fit.info["episodes"] == 3 and fit.info["frames"] == 15
    save_offline_controller(run / "controller", fit, world, {"obs_mode": "zh"})
    summary = ev.run(ev.Config(run=str(run), episodes=1, workers=0, max_steps=5, gif=False, levels="train"))
    assert summary["trained_where"] == "offline" and summary["episodes"] == 1
    with pytest.raises(WorldModelsError, match="latents file"):
        fit_offline_controller(world, latents=tmp_path / "nope.h5")


@pytest.mark.parametrize("env,obs_mode", [("carracing", "zh"), ("procgen:coinrun", "zch")])
def test_c_sees_the_same_input_in_the_agent_the_offline_fit_and_teacher_forced_m(tmp_path, monkeypatch, env, obs_mode):
    """One real episode, C's input built three ways: by the real-env agent as it plays (``sample_z=False``, so
    z = mu), by the offline fit's feature builder from the episode written to a latents file, and by M's sequence
    forward teacher-forced on the episode's (mu, action) prefixes, concatenated by hand. All three are
    ``x_t = [z_t, h_t]`` (``[z_t, c_t, h_t]``) with (h_t, c_t) M's state after (z_0, a_0) ... (z_{t-1}, a_{t-1}),
    zero at t = 0: an off-by-one in h, another concatenation order or a mis-encoded action breaks the equality."""
    import torch.nn.functional as F

    import worldmodels.play as play
    from worldmodels.data import LATENTS, EpisodeWriter, open_latents
    from worldmodels.envs import episode_seed, make_batch
    from worldmodels.models.controller import controller_input
    from worldmodels.models.vae import frames_to_tensor
    from worldmodels.offline import episode_features

    world = load_world(make_tiny_run(tmp_path, env=env), obs_mode)
    Z, H = world.z_dim, world.hidden
    seen, actions = [], []

    def recording_input(z, state, mode):
        x = controller_input(z, state, mode)
        seen.append(x[0].detach().clone())
        return x

    class RecordingEnvs:
        def __init__(self, envs):
            self.envs = envs

        def reset(self, seeds):
            return self.envs.reset(seeds)

        def step(self, acts, live):
            actions.append(acts[0])
            return self.envs.step(acts, live)

    monkeypatch.setattr(play, "controller_input", recording_input)
    agent = play.BatchAgent(world.vae, world.mdrnn, world.action_map, obs_mode, world.input_dim, sample_z=False)
    params = np.random.default_rng(0).normal(0, 1.0, (1, world.n_params))
    [result] = agent.play(RecordingEnvs(make_batch(env)), params, [episode_seed(0, 0, "train")], max_steps=12,
                          record=[True])
    T = result["length"]
    assert T >= 8 and len(seen) == len(actions) == T
    x_agent = torch.stack(seen).double()  # (T, I)
    assert x_agent.shape == (T, world.input_dim)

    # The episode as collection stores it: frame t's mu beside the action taken on it.
    with torch.no_grad():
        mu = world.vae.encode(frames_to_tensor(result["frames"][:T]))[0]  # (T, Z)
    discrete = world.action_map.discrete
    stored = np.array(actions, dtype=np.int64) if discrete else np.stack(actions).astype(np.float32)
    assert len(np.unique(stored, axis=0)) > 1  # the actions vary: an action fed one step late would show
    with open_latents(world.latents_path) as f:
        attrs = {k: v for k, v in f.attrs.items() if k in LATENTS.required_attrs}
    path = tmp_path / "played.h5"
    with EpisodeWriter(path, LATENTS, attrs) as writer:
        writer.append({"mu": mu.numpy(), "logvar": np.full((T, Z), -2.0, np.float32), "action": stored,
                       "reward": np.zeros(T, np.float32), "terminated": np.zeros(T, bool),
                       "truncated": np.arange(T) == T - 1}, seed=0)
    with open_latents(path) as f:
        x_offline = torch.as_tensor(episode_features(world, [f.episode(0, ["mu", "action", "reward"])])[0])

    # M teacher-forced: its sequence forward (the training path, not step()) over each prefix.
    a = (F.one_hot(torch.as_tensor(stored), world.action_map.n_actions).float() if discrete
         else torch.as_tensor(stored))
    rows = []
    with torch.no_grad():
        for t in range(T):
            if t == 0:
                h = c = torch.zeros(H)
            else:
                _, (h, c) = world.mdrnn(mu[None, :t], a[None, :t])
                h, c = h[0], c[0]
            rows.append(torch.cat([mu[t], h] if obs_mode == "zh" else [mu[t], c, h]))
    x_forced = torch.stack(rows).double()
    assert (x_forced[1:, Z:] - x_forced[:-1, Z:]).abs().max() > 1e-3  # M's state moves along the episode

    torch.testing.assert_close(x_offline, x_forced, atol=1e-5, rtol=0)
    torch.testing.assert_close(x_agent, x_forced, atol=1e-5, rtol=0)
