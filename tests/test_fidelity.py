"""worldmodels fidelity: rank correlation, output files and seeds, M's heads on a real episode, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from test_controller import make_tiny_run, stage_cfg
from worldmodels import cli
from worldmodels.checkpoint import save_checkpoint
from worldmodels.envs import episode_seed, seed_range
from worldmodels.errors import WorldModelsError
from worldmodels.stages import evaluate as ev
from worldmodels.stages import fidelity as fd
from worldmodels.stages import train_controller as tc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = make_tiny_run(tmp_path_factory.mktemp("fidelity"))
    tc.run(stage_cfg(run, generations=2, eval_every=1, sigma0=0.5))
    return run


@pytest.fixture
def tiny_run_copy(trained_run, tmp_path):
    import shutil

    shutil.copytree(trained_run.parent, tmp_path / "root", symlinks=True)  # the run and its latents beside it
    run = tmp_path / "root" / "run"
    shutil.rmtree(run / "controller")
    shutil.rmtree(run / "fidelity", ignore_errors=True)
    return run


def fid_cfg(run, **kw):
    base = dict(run=str(run), perturbations=2, scales=[0.1, 0.5], real_episodes=2, dream_episodes=3, max_steps=6,
                workers=0, device="cpu")
    return fd.Config(**{**base, **kw})


def test_rank_correlation_matches_hand_computed_values_with_ties():
    assert fd.average_ranks([10, 20, 20, 5]).tolist() == [2, 3.5, 3.5, 1]
    assert fd.average_ranks([3, 3, 3]).tolist() == [2, 2, 2]
    assert fd.spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert fd.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x (1, 2.5, 2.5, 4), y (1, 3, 2, 4): covariance sum 4.5, squares 4.5 and 5 -> 4.5 / sqrt(22.5)
    assert fd.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / np.sqrt(10))
    # deviations (-1, 0, 1) and (-7, -1, 8) / 3: 5 / sqrt(2 * 114 / 9)
    assert fd.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / np.sqrt(228))
    assert np.isnan(fd.spearman([1, 2, 3], [5, 5, 5]))  # a constant side ranks nothing


def test_fidelity_writes_a_row_per_controller_and_setting_on_fresh_train_seeds(trained_run, capsys, monkeypatch):
    import worldmodels.play as play

    cfg = fid_cfg(trained_run, temperatures=[1.0, 1.5], dream_dropout=[0.0, 0.2],
                  dream_models=[str(trained_run / "mdrnn")], controllers=[str(trained_run)])
    summary = fd.run(cfg)
    out = trained_run / "fidelity"
    with open(out / "fidelity.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = ["mean", "p00", "p01", str(trained_run)]
    settings = [(t, p, k) for t in (1.0, 1.5) for p in (0.0, 0.2) for k in (1, 2)]  # the ensemble: M twice
    assert list(rows[0]) == list(fd.CSV_COLUMNS) and len(rows) == len(names) * len(settings) == 32
    assert [(float(r["tau"]), float(r["dropout"]), int(r["models"])) for r in rows[::4]] == settings
    assert [r["controller"] for r in rows[:4]] == names and [r["scale"] for r in rows[:4]] == ["0.0", "0.1", "0.5", ""]
    assert all(int(r["dream_n"]) == 3 and int(r["real_n"]) == 2 for r in rows)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary and len(saved["settings"]) == 8 and (out / "scatter.png").exists()
    assert all(s["controllers"] == 4 and "spearman" in s and "pearson" in s for s in saved["settings"])
    # the run itself given as a controller is the run's C: common random numbers give it the same returns
    for setting in range(8):
        mean, same = rows[4 * setting], rows[4 * setting + 3]
        assert [mean[k] for k in fd.CSV_COLUMNS[5:]] == [same[k] for k in fd.CSV_COLUMNS[5:]]
    assert saved["reward_head"]["episodes"] == 2 and saved["reward_head"]["steps"] == 12
    assert sum(line.startswith("fidelity: tau") for line in capsys.readouterr().out.splitlines()) == 8

    seeds = saved["seeds"]
    assert seeds["real_purpose"] == "train" and seeds["dream_purpose"] == fd.DREAM_PURPOSE
    real = seeds["real_seeds"]
    played = [json.loads(line) for line in (out / "real_episodes.jsonl").read_text().splitlines()[1:]]
    assert sorted({p["seed"] for p in played}) == sorted(real) and len(played) == 4 * 2
    low, high = seed_range("train")
    assert all(low <= s < high for s in real)
    eval_low, eval_high = seed_range("eval")
    assert not any(eval_low <= s < eval_high for s in real)
    assert not set(real) & {episode_seed(0, i, "eval") for i in range(100)}  # evaluate's tracks
    trained = stage_cfg(trained_run, generations=2)  # what the fixture trained with
    training = {s for g in range(trained.generations)
                for s in tc.population_seeds(trained.seed, g, trained.rollouts)
                + tc.population_seeds(trained.seed, g, trained.eval_episodes, offset=10**7)}
    assert not set(real) & training
    training_dreams = {tc.dream_seed(trained.seed, g, p) for g in range(trained.generations) for p in (0, 1)}
    assert seeds["dream_seed"] not in training_dreams | {tc.dream_seed(0, 0, ev.DREAM_EVAL_PURPOSE)}

    # a rerun with one more perturbation plays only its episodes, and keeps everyone else's
    seen, real_batch = [], play.worker_batch
    monkeypatch.setattr(play, "worker_batch", lambda task: seen.append(len(task[1])) or real_batch(task))
    again = fd.run(fid_cfg(trained_run, perturbations=3))
    assert sum(seen) == 2 and again["reward_head"] == summary["reward_head"]


def test_fidelity_compares_pessimistic_dreams_on_the_same_trajectories(tiny_run_copy):
    """--dream-penalty adds settings whose dreams follow the plain ones (the same streams) and pay exactly the
    plain return less the penalty times each controller's summed reward spread (the csv's uncertainty); each
    also ranks the controllers by their spread alone. A C evolved with a penalty is measured at it and at 0."""
    run = tiny_run_copy
    tc.run(stage_cfg(run, generations=1, eval_every=0))
    summary = fd.run(fid_cfg(run, dream_penalty=[0.0, 2.0]))
    with open(run / "fidelity" / "fidelity.csv") as fh:
        rows = list(csv.DictReader(fh))
    plain, pess = rows[:3], rows[3:]
    assert [float(r["penalty"]) for r in rows] == [0.0] * 3 + [2.0] * 3 and all(r["uncertainty"] == "" for r in plain)
    for a, b in zip(plain, pess):
        assert float(b["uncertainty"]) > 0
        assert float(b["dream_mean"]) == pytest.approx(float(a["dream_mean"]) - 2 * float(b["uncertainty"]))
    assert [s["penalty"] for s in summary["settings"]] == [0.0, 2.0]
    assert summary["settings"][0]["spread_spearman"] is None  # no spread without a penalty
    by_spread = fd.spearman([-float(r["uncertainty"]) for r in pess], [float(r["real_mean"]) for r in pess])
    assert summary["settings"][1]["spread_spearman"] == (None if np.isnan(by_spread) else pytest.approx(by_spread))
    tc.run(stage_cfg(run, generations=1, eval_every=0, fresh=True, dream_penalty=1.5))
    assert [s["penalty"] for s in fd.run(fid_cfg(run))["settings"]] == [0.0, 1.5]
    with pytest.raises(WorldModelsError, match="dream_penalty weights must be >= 0"):
        fd.run(fid_cfg(run, dream_penalty=[-1.0]))


def test_fidelity_compares_return_caps_on_the_same_dreams(tiny_run_copy):
    """--dream-return-cap adds settings whose dreams pay the plain ones' capped (each controller's dream mean at
    most the cap, and under the plain one where that passed it); a C evolved with a cap is measured at it and
    without one."""
    run = tiny_run_copy
    tc.run(stage_cfg(run, generations=1, eval_every=0))
    plain = fd.run(fid_cfg(run))
    with open(run / "fidelity" / "fidelity.csv") as fh:
        means = [float(r["dream_mean"]) for r in csv.DictReader(fh)]
    cap = float(np.median(means)) + 1e-3
    summary = fd.run(fid_cfg(run, dream_return_cap=[0.0, cap]))
    with open(run / "fidelity" / "fidelity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["return_cap"]) for r in rows] == [0.0] * 3 + [cap] * 3
    assert [float(r["dream_mean"]) for r in rows[:3]] == means and plain["settings"][0]["return_cap"] == 0.0
    for a, b in zip(rows[:3], rows[3:]):
        assert float(b["dream_mean"]) <= min(float(a["dream_mean"]), cap) + 1e-9
    assert any(float(b["dream_mean"]) < float(a["dream_mean"]) for a, b in zip(rows[:3], rows[3:]))
    assert [s["return_cap"] for s in summary["settings"]] == [0.0, cap]
    tc.run(stage_cfg(run, generations=1, eval_every=0, fresh=True, dream_return_cap=cap))
    summary = fd.run(fid_cfg(run))
    assert [s["return_cap"] for s in summary["settings"]] == [0.0, cap] and summary["trained_dream"]["return_cap"] == cap
    with pytest.raises(WorldModelsError, match="dream_return_cap values must be positive caps or 0"):
        fd.run(fid_cfg(run, dream_return_cap=[-1.0]))


def test_horizons_real_episodes_play_whole_for_a_c_trained_on_pieces_of_episodes():
    # a C trained on whole-episode dreams: real and first-frame dreams share its limit, or --max-steps
    assert fd.horizons(fd.Config(), "first", 300, 1000) == (300, {"first": 300, "any": 300})
    assert fd.horizons(fd.Config(max_steps=50), "first", 300, 1000) == (50, {"first": 50, "any": 300})
    # a C trained on 100-step dreams from any frame: real episodes play whole (the env's own limit)
    assert fd.horizons(fd.Config(), "any", 100, 2100) == (None, {"first": 2100, "any": 100})
    assert fd.horizons(fd.Config(max_steps=500, dream_max_steps=40), "any", 100, 1000) == (500, {"first": 500,
                                                                                                "any": 40})


def test_fidelity_dreams_as_c_was_trained_and_compares_dream_kinds(tiny_run_copy, monkeypatch):
    """A C evolved on dreams from any frame that pay the nearest seen reward is measured in that dream by default
    (the tiny data's only reward is 0, so every such dream returns exactly 0); --dream-starts and --dream-reward
    compare kinds, each at its horizon."""
    from worldmodels.agent import World

    run = tiny_run_copy
    tc.run(stage_cfg(run, generations=1, eval_every=0, dream_starts="any", dream_reward="nearest", max_steps=8))
    asked, factory = [], World.dream_factory
    monkeypatch.setattr(World, "dream_factory", lambda self, tau, steps, seed, **kw: asked.append(
        (steps, kw["starts"], kw["reward"])) or factory(self, tau, steps, seed, **kw))

    summary = fd.run(fid_cfg(run, perturbations=1))
    assert asked == [(8, "any", "nearest")]
    assert summary["trained_dream"] == {"starts": "any", "reward": "nearest", "max_steps": 8, "return_cap": None}
    assert [(s["starts"], s["reward"], s["max_steps"]) for s in summary["settings"]] == [("any", "nearest", 8)]
    with open(run / "fidelity" / "fidelity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["dream_mean"]) for r in rows] == [0.0, 0.0]

    asked.clear()
    summary = fd.run(fid_cfg(run, perturbations=1, dream_starts=["first", "any"], dream_reward=["auto", "nearest"],
                             dream_max_steps=5))
    kinds = [("first", "predicted", 6), ("first", "nearest", 6), ("any", "predicted", 5), ("any", "nearest", 5)]
    assert asked == [(steps, starts, reward) for starts, reward, steps in kinds]
    assert [(s["starts"], s["reward"], s["max_steps"]) for s in summary["settings"]] == kinds
    with open(run / "fidelity" / "fidelity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["starts"], r["reward"]) for r in rows[::2]] == [k[:2] for k in kinds]
    dream = {(r["starts"], r["reward"]): float(r["dream_mean"]) for r in rows if r["controller"] == "mean"}
    assert dream[("first", "nearest")] == dream[("any", "nearest")] == 0.0
    assert dream[("first", "predicted")] != 0.0 and dream[("any", "predicted")] != 0.0


def test_latents_option_starts_the_dreams_from_other_frames(tiny_run_copy):
    """--latents: dreams from any frame branch off that file's frames (here the same episodes, every mu moved by
    +3), not the ones C was trained from; the summary names the file, and the real side is unchanged."""
    from worldmodels.data import LATENTS, EpisodeWriter, open_latents

    run = tiny_run_copy
    tc.run(stage_cfg(run, generations=1, eval_every=0, dream_starts="any", max_steps=6))
    own = fd.run(fid_cfg(run, perturbations=1))
    moved = run.parent / "moved-latents.h5"
    from worldmodels.data.writer import RESERVED_ATTRS

    with open_latents(run.parent / "latents.h5") as src, EpisodeWriter(
            moved, LATENTS, {k: v for k, v in src.attrs.items() if k not in RESERVED_ATTRS}) as writer:
        for ep in range(src.n_episodes):
            episode = src.episode(ep)
            writer.append({**episode, "mu": episode["mu"] + 3.0}, seed=int(src.episodes["seed"][ep]))
    other = fd.run(fid_cfg(run, perturbations=1, latents=str(moved)))
    assert own["dream_starts_from"].endswith("/latents.h5") and other["dream_starts_from"] == str(moved)  # M's file
    with open(run / "fidelity" / "fidelity.csv") as fh:
        rows = list(csv.DictReader(fh))
    dream = [float(r["dream_mean"]) for r in rows]
    assert other["real_episodes"] == own["real_episodes"] and [s["starts"] for s in other["settings"]] == ["any"]
    assert all(np.isfinite(dream)) and dream != [0.0, 0.0]
    assert other["settings"][0]["gap"] != own["settings"][0]["gap"]  # other starting frames, other dream returns


def test_reward_head_error_is_m_teacher_forced_on_the_recorded_episode(trained_run):
    from worldmodels.agent import load_world
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.envs import make_batch
    from worldmodels.models.vae import frames_to_tensor
    from worldmodels.play import BatchAgent

    world = load_world(trained_run, "zh", "cpu")
    params = np.asarray(load_checkpoint(trained_run / "controller")["mean"])
    agent = BatchAgent(world.vae, world.mdrnn, world.action_map, world.obs_mode, world.input_dim)
    envs = make_batch("carracing", "reference")
    try:
        episode = agent.play(envs, params[None], [episode_seed(0, 5, "train")], max_steps=7, record=[True])[0]
    finally:
        envs.close()
    episode["terminated"] = np.arange(7) == 6  # pretend the car died at the last step: the done head's recall
    stats = fd.episode_head_stats(world.vae, world.mdrnn, world.action_desc, episode)

    with torch.no_grad():
        mu, _ = world.vae.encode(frames_to_tensor(episode["frames"][:7], "cpu"))  # the frames C acted on
        out, _ = world.mdrnn(mu[None], torch.as_tensor(np.stack(episode["actions"]), dtype=torch.float32)[None])
    reward, logit = out.reward[0].double().numpy(), out.done_logit[0].numpy()
    rewards = np.asarray(episode["rewards"], np.float64)
    assert stats["steps"] == 7
    assert stats["reward_sq"] / 7 == pytest.approx(np.mean((reward - rewards) ** 2), rel=1e-5)
    assert stats["predicted_return"] == pytest.approx(reward.sum(), rel=1e-5)
    assert stats["return"] == pytest.approx(rewards.sum())
    assert (stats["hits"], stats["deaths"]) == (float(logit[6] > 0), 1.0)
    assert (stats["false_alarms"], stats["other_steps"]) == ((logit[:6] > 0).sum(), 6)
    fired = np.flatnonzero(logit > 0)
    assert stats["predicted_end"] == (fired[0] + 1 if len(fired) else 7)

    pooled = fd.head_summary([stats, {**stats, "steps": 3, "reward_sq": 1.0, "return": 0.0}])
    assert pooled["reward_mse"] == pytest.approx((stats["reward_sq"] + 1.0) / 10)
    assert pooled["return_gap"] == pytest.approx(np.mean([stats["predicted_return"] - stats["return"],
                                                          stats["predicted_return"]]))


def test_bad_input_is_one_line(trained_run, tmp_path, capsys):
    other = save_checkpoint(tmp_path / "small" / "controller", "controller",
                            {"mean": np.zeros(5), "identity": {"obs_mode": "zh"}})
    with pytest.raises(WorldModelsError, match="only controllers of the same shape"):
        fd.run(fid_cfg(trained_run, controllers=[str(other)]))
    for args in (["--controllers", str(tmp_path / "small")], ["--temperatures", "1,0"], ["--dream-dropout", "1"],
                 ["--perturbations", "0"], ["--dream-starts", "middle"], ["--dream-reward", "first,bonus"]):
        assert cli.main(["fidelity", "--run", str(trained_run), "--workers", "0", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("worldmodels fidelity: error:") and err.count("\n") == 1
    assert cli.main(["fidelity", "--run", str(tmp_path / "nothing")]) == 1
    assert "train the controller stage first" in capsys.readouterr().err
