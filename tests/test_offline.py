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
