"""Dream augmentations: identity at strength 0, what each one moves and in which direction, reproducibility,
the registry's errors, and a DreamEnv with augmentations against the plain one."""

from __future__ import annotations

import copy

import pytest
import torch

from worldmodels.augment import (AUGMENTATIONS, DeepDream, RandomSwing, ValueDiversification, build_augmentations,
                                 describe, imagined_reward)
from worldmodels.dream.env import AugmentContext, DreamEnv
from worldmodels.errors import WorldModelsError
from worldmodels.models.mdrnn import MDRNN
from worldmodels.models.vae import ConvVAE

Z, A, H, B = 4, 3, 8, 16


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return ConvVAE(Z).eval(), MDRNN(Z, A, H, 2).eval()


def context(models, step=0, t=None, seed=0):
    vae, m = models
    g = torch.Generator().manual_seed(seed)
    state = (torch.randn(B, H, generator=g), torch.randn(B, H, generator=g))
    t = torch.full((B,), step, dtype=torch.int64) if t is None else t
    return AugmentContext(step, t, state, vae, m, g, torch.device("cpu"))


def armed(aug, seed=0, max_steps=1):
    """The augmentation reset for B members with every event at step 0 (max_steps=1)."""
    aug.reset(B, max_steps, torch.Generator().manual_seed(seed), torch.device("cpu"))
    return aug


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_strength_zero_is_the_identity(models, name):
    aug = armed(AUGMENTATIONS[name](probability=1.0, strength=0.0))
    z = torch.randn(B, Z)
    assert aug(z, context(models)) is z


def test_random_swing_moves_exactly_the_chosen_members_by_the_interpolation(models):
    aug = armed(RandomSwing(probability=0.5, strength=0.8), seed=3)
    chosen = aug.chosen.clone()
    assert 0 < chosen.sum() < B
    z = torch.randn(B, Z)
    out = aug(z, context(models))
    alpha = aug.alpha[:, None]
    expected = (1 - alpha) * z + alpha * aug.target  # the contract's formula
    assert torch.allclose(out[chosen], expected[chosen], atol=1e-6)
    assert torch.equal(out[~chosen], z[~chosen])
    assert (aug.alpha >= 0).all() and (aug.alpha <= 0.8).all() and aug.alpha.std() > 0
    assert out.shape == z.shape and out.dtype == z.dtype and out.device == z.device
    # Not the event step: nothing moves.
    assert torch.equal(aug(z, context(models, step=1)), z)


def test_random_swing_real_source_draws_bank_latents(models):
    bank = torch.randn(5, Z) + 100.0
    aug = armed(build_augmentations(["random_swing"], {"random_swing": {"probability": 1.0, "strength": 1.0,
                                                                        "source": "real"}}, latents=bank)[0])
    aug(torch.zeros(B, Z), context(models))
    assert all(any(torch.equal(row, b) for b in bank) for row in aug.target)


def test_deepdream_increases_the_targeted_activation_norm(models):
    vae, _ = models
    aug = armed(DeepDream(probability=0.5, strength=0.5, steps=3), seed=1)
    chosen = aug.chosen.clone()
    z = torch.randn(B, Z)
    out = aug(z, context(models))
    with torch.no_grad():
        before = DeepDream.activation(vae, z).pow(2).flatten(1).mean(1)
        after = DeepDream.activation(vae, out).pow(2).flatten(1).mean(1)
    assert (after[chosen] > before[chosen]).all()
    assert torch.equal(out[~chosen], z[~chosen])
    assert torch.allclose((out - z).norm(dim=1)[chosen], torch.tensor(1.5), atol=0.05)  # 3 unit steps of 0.5 (at most)


def test_value_diversification_moves_the_predicted_reward_in_the_chosen_direction(models):
    _, m = models
    aug = armed(ValueDiversification(probability=1.0, strength=0.05, steps=2, horizon=3), seed=2)
    assert (aug.sign > 0).any() and (aug.sign < 0).any()
    ctx = context(models)
    z = torch.randn(B, Z)
    out = aug(z, ctx)
    with torch.no_grad():
        before = imagined_reward(m, z, ctx.state, 3)
        after = imagined_reward(m, out, ctx.state, 3)
    assert ((after - before) * aug.sign > 0).all()
    assert out.shape == z.shape and not out.requires_grad


def test_gradient_augmentations_work_under_no_grad(models):
    aug = armed(DeepDream(probability=1.0, strength=0.1))
    z = torch.randn(B, Z)
    with torch.no_grad():
        out = aug(z, context(models))
    assert not torch.equal(out, z)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_reproducible_under_a_seed(models, name):
    outs = []
    for _ in range(2):
        aug = armed(AUGMENTATIONS[name](probability=0.5, strength=0.3), seed=11, max_steps=1)
        outs.append(aug(torch.ones(B, Z), context(models)))
    assert torch.equal(outs[0], outs[1])
    other = armed(AUGMENTATIONS[name](probability=0.5, strength=0.3), seed=12)(torch.ones(B, Z), context(models))
    assert not torch.equal(outs[0], other)


def test_event_steps_fall_inside_the_window():
    aug = RandomSwing(probability=1.0, window=5)
    aug.reset(1000, 100, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert aug.at_step.max() == 4 and aug.at_step.min() == 0
    assert abs(aug.chosen.float().mean() - 1.0) < 1e-6


def test_registry_errors_and_description():
    augs = build_augmentations("random_swing, deepdream,value_diversification",
                               {"deepdream": {"steps": 2}, "random_swing": {"strength": 0.3}})
    assert [a.name for a in augs] == ["random_swing", "deepdream", "value_diversification"]
    assert describe(augs)[1] == {"name": "deepdream", "probability": 0.5, "strength": 0.5, "window": 0, "steps": 2}
    with pytest.raises(WorldModelsError, match="choose from random_swing, deepdream, value_diversification"):
        build_augmentations(["dreamy"], {})
    with pytest.raises(WorldModelsError, match="unknown option.*alpha.*valid: probability"):
        build_augmentations(["random_swing"], {"random_swing": {"alpha": 1}})
    with pytest.raises(WorldModelsError, match="unknown augmentation 'typo'"):
        build_augmentations(["deepdream"], {"typo": {}})
    with pytest.raises(WorldModelsError, match="probability"):
        RandomSwing(probability=2.0)
    with pytest.raises(WorldModelsError, match="real latents"):
        build_augmentations(["random_swing"], {"random_swing": {"source": "real"}})


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_dream_with_augmentation_differs_only_on_chosen_members(models, name):
    vae, m = models[0], copy.deepcopy(models[1])
    mu0 = torch.randn(6, Z)
    initial = (mu0, torch.full((6, Z), -2.0))
    with torch.no_grad():
        m.head.bias[-1] = -20.0  # never done: every member runs all steps
    steps = 6

    def trajectory(augs):
        env = DreamEnv(vae, m, initial, 1.0, B, "cpu", steps, seed=5, augmentations=augs)
        zs = [env.reset()[:, :Z]]
        with torch.no_grad():
            for _ in range(steps):
                zs.append(env.step(torch.zeros(B, A))[0][:, :Z])
        return torch.stack(zs, 1), env  # (B, T+1, Z)

    plain, _ = trajectory([])
    aug = AUGMENTATIONS[name](probability=0.5, strength=0.5)
    augmented, env = trajectory([aug])
    chosen = aug.chosen
    assert 0 < chosen.sum() < B
    assert torch.equal(augmented[~chosen], plain[~chosen])
    differs = (augmented != plain).flatten(1).any(1)
    assert torch.equal(differs, chosen)
    # The first difference is at each chosen member's event step (index t+1 holds step t's z).
    first = (augmented != plain).any(2).float().argmax(1)
    assert torch.equal(first[chosen], aug.at_step[chosen] + 1)
