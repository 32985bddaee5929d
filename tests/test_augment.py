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


def never_done(models):
    """M of ``models`` with a done logit far below 0: every member runs all its steps."""
    m = copy.deepcopy(models[1])
    with torch.no_grad():
        m.head.bias[-1] = -20.0
    return m


INITIAL = (torch.randn(6, Z, generator=torch.Generator().manual_seed(7)), torch.full((6, Z), -2.0))


def dream_latents(vae, m, augs, steps, batch=B, seed=5, max_steps=50, restart=None):
    """Latents (batch, steps + 1, Z) of a seeded DreamEnv (after reset, then after each zero-action step) and
    the env. ``restart`` = (k, mask): ``reset_members(mask)`` just before the k-th step (0-based)."""
    env = DreamEnv(vae, m, INITIAL, 1.0, batch, "cpu", max_steps, seed=seed, augmentations=augs)
    zs = [env.reset()[:, :Z]]
    with torch.no_grad():
        for k in range(steps):
            if restart is not None and k == restart[0]:
                env.reset_members(restart[1])
            zs.append(env.step(torch.zeros(batch, A))[0][:, :Z])
    return torch.stack(zs, 1), env


def first_change(augmented, plain):
    """(n,) index of the first latent where each row of two (n, T, Z) dreams differs (-1: never)."""
    differs = (augmented != plain).any(2)
    return torch.where(differs.any(1), differs.float().argmax(1), -1)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_probability_one_fires_in_every_trajectory_inside_the_window(models, name):
    aug = AUGMENTATIONS[name](probability=1.0, window=5)
    aug.reset(1000, 100, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert aug.at_step.max() == 4 and aug.at_step.min() == 0
    # In a dream, every trajectory is changed, first at its own event step (latent t + 1), inside the window.
    vae, m = models[0], never_done(models)
    plain, _ = dream_latents(vae, m, [], 8, batch=32)
    aug = AUGMENTATIONS[name](probability=1.0, strength=0.5, window=5)
    augmented, _ = dream_latents(vae, m, [aug], 8, batch=32)
    first = first_change(augmented, plain)
    assert torch.equal(first, aug.at_step + 1), (first, aug.at_step)
    assert first.min() >= 1 and first.max() <= 5 and len(set(first.tolist())) > 1


IDENTITY_SETS = [[name] for name in AUGMENTATIONS] + [list(AUGMENTATIONS)]


@pytest.mark.parametrize("names", IDENTITY_SETS, ids=["+".join(n) for n in IDENTITY_SETS])
@pytest.mark.parametrize("setting", [dict(probability=1.0, strength=0.0), dict(probability=0.0, strength=1.0)],
                         ids=["strength0", "probability0"])
def test_identity_settings_dream_exactly_the_plain_dream(models, names, setting):
    """Strength 0 (or probability 0): the same latents, returns, lengths and ends as the plain dream with the same
    seed, members restarted alone (reset_members) included."""
    vae, m = models[0], copy.deepcopy(models[1])
    with torch.no_grad():
        m.head.bias[-1], m.head.weight[-1] = -3.0, m.head.weight[-1] * 20  # members end after 1 to 12 steps
    restart = (5, torch.arange(B) % 3 == 0)
    plain, plain_env = dream_latents(vae, m, [], 16, restart=restart, max_steps=12)
    assert len(set(plain_env.lengths.tolist())) > 5 and plain_env.lengths.max() == 12
    augs = build_augmentations(names, {n: dict(setting, window=4) for n in names})
    augmented, env = dream_latents(vae, m, augs, 16, restart=restart, max_steps=12)
    assert torch.equal(augmented, plain)
    assert torch.equal(env.returns, plain_env.returns) and torch.equal(env.lengths, plain_env.lengths)
    assert torch.equal(env.done, plain_env.done)
    # the comparison has teeth: the same augmentations at strength 1 and probability 1 change the dream
    moved, _ = dream_latents(vae, m, build_augmentations(names, {n: dict(probability=1.0, strength=1.0, window=4)
                                                                   for n in names}), 16, restart=restart, max_steps=12)
    assert not torch.equal(moved, plain)


def schedule(aug):
    """The per-member draws of an augmentation, cloned."""
    keys = ["chosen", "at_step"] + [k for k in ("alpha", "target", "sign") if getattr(aug, k, None) is not None]
    return {k: getattr(aug, k).clone() for k in keys}


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_a_restarted_member_draws_a_new_schedule_and_the_others_keep_theirs(models, name):
    """reset_members restarts a third of the members after their first event: each draws a new schedule (like a new
    trajectory) and its new episode is changed at the new event step; the other members keep their draws and their
    trajectories. (Strength 0 with restarts: test_identity_settings_dream_exactly_the_plain_dream.)"""
    vae, m = models[0], never_done(models)
    k, steps = 6, 14  # every first-episode event (window 4) is past when members restart, before step 6
    mask = torch.arange(B) % 3 == 0
    opts = dict(probability=1.0, strength=0.5, window=4)
    plain, _ = dream_latents(vae, m, [], steps, restart=(k, mask))
    kept_aug = AUGMENTATIONS[name](**opts)
    kept, _ = dream_latents(vae, m, [kept_aug], steps)  # the same augmented dream, nobody restarted
    aug, first = AUGMENTATIONS[name](**opts), {}
    env = DreamEnv(vae, m, INITIAL, 1.0, B, "cpu", 50, seed=5, augmentations=[aug])
    zs = [env.reset()[:, :Z]]
    with torch.no_grad():
        for i in range(steps):
            if i == k:
                first = schedule(aug)
                env.reset_members(mask)
            zs.append(env.step(torch.zeros(B, A))[0][:, :Z])
    restarted, now = torch.stack(zs, 1), schedule(aug)

    # The other members: the same draws, the same trajectory as without any restart.
    for key, value in now.items():
        assert torch.equal(value[~mask], first[key][~mask]), key
    assert torch.equal(restarted[~mask], kept[~mask])
    # The restarted members: their first episode as before, then a new one with a schedule of its own...
    assert torch.equal(restarted[mask, :k + 1], kept[mask, :k + 1])
    assert (now["at_step"][mask] != first["at_step"][mask]).any()
    if name == "random_swing":
        assert (now["alpha"][mask] != first["alpha"][mask]).all()
        assert (now["target"][mask] != first["target"][mask]).any(1).all()
    if name == "value_diversification":
        assert (now["sign"][mask] != first["sign"][mask]).any()
    # ...whose event fires (probability 1) at its new step: the new episode equals the plain one up to it.
    new_episode = first_change(restarted[mask, k + 1:], plain[mask, k + 1:])
    assert torch.equal(new_episode, now["at_step"][mask]), (new_episode, now["at_step"][mask])


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_vector_env_autoreset_gives_every_episode_its_own_event(models, name):
    """DreamVectorEnv restarts a member the step after it ended (frozen that step): each of its episodes
    draws its own event step and is changed there, not at the first episode's step, and not never."""
    import numpy as np

    from worldmodels.dream import DreamVectorEnv

    vae, m = models[0], never_done(models)
    T, episodes = 5, 3

    def run(augs):
        venv = DreamVectorEnv(vae, m, INITIAL, B, 1.0, "cpu", max_steps=T, seed=2, augmentations=augs)
        zs, at = [venv.reset(seed=2)[0][:, :Z]], [augs[0].at_step.clone() if augs else None]
        for _ in range(episodes * (T + 1) - 1):
            obs = venv.step(np.zeros((B, A), np.float32))
            zs.append(obs[0][:, :Z])
            at.append(augs[0].at_step.clone() if augs else None)
        return torch.as_tensor(np.stack(zs, 1)), at

    plain, _ = run([])
    augmented, at = run([AUGMENTATIONS[name](probability=1.0, strength=0.5, window=T)])
    draws = []
    for e in range(episodes):
        start = e * (T + 1)  # episode e: its first latent (the reset, or the autoreset step), then T steps
        draws.append(at[start])
        got = first_change(augmented[:, start:start + T + 1], plain[:, start:start + T + 1])
        assert torch.equal(got, at[start] + 1), (e, got, at[start])
    assert not torch.equal(draws[1], draws[0]) and not torch.equal(draws[2], draws[1])


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
