"""The evaluate stage: output format, seeds disjoint from training, determinism across worker counts."""

from __future__ import annotations

import csv
import json

import imageio.v2 as imageio
import numpy as np
import pytest

from test_controller import make_tiny_run, stage_cfg
from worldmodels import cli
from worldmodels.envs import episode_seed, seed_range
from worldmodels.errors import WorldModelsError
from worldmodels.stages import evaluate as ev
from worldmodels.stages import train_controller as tc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = make_tiny_run(tmp_path_factory.mktemp("eval"))
    tc.run(stage_cfg(run, generations=2, eval_every=1, sigma0=0.5))
    return run


def read_rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_evaluate_writes_csv_summary_and_gif(trained_run):
    summary = ev.run(ev.Config(run=str(trained_run), episodes=3, workers=0, max_steps=12))
    out = trained_run / "eval-test"
    rows = read_rows(out / "returns.csv")
    assert list(rows[0]) == list(ev.CSV_COLUMNS) and [int(r["episode"]) for r in rows] == [0, 1, 2]
    returns = np.array([float(r["return"]) for r in rows])
    assert all(int(r["length"]) == 12 for r in rows)
    low, high = seed_range("eval")
    assert all(low <= int(r["seed"]) < high for r in rows)  # never a collection or training seed
    assert int(rows[1]["seed"]) == episode_seed(0, 1, "eval")
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    for key in ("env", "levels", "episodes", "mean", "std", "min", "max", "controller_id", "generation"):
        assert key in saved
    assert saved["episodes"] == 3 and saved["env"] == "carracing" and saved["generation"] == 2
    assert np.isclose(saved["mean"], returns.mean()) and np.isclose(saved["std"], returns.std())
    gif = imageio.mimread(out / "episode.gif")
    assert len(gif) == 13 and gif[0].shape[:2] == (128, 128)  # reset frame + 12 steps, upscaled x2
    # another evaluation in the folder (here: other tracks) without a GIF leaves none of the last one's behind
    ev.run(ev.Config(run=str(trained_run), episodes=1, workers=0, max_steps=12, seed=3, gif=False))
    assert not (out / "episode.gif").exists() and len(read_rows(out / "returns.csv")) == 1


def test_per_episode_results_do_not_depend_on_worker_count(trained_run):
    results = {}
    for workers in (1, 2):
        ev.run(ev.Config(run=str(trained_run), episodes=4, workers=workers, max_steps=10, levels="train",
                         seed=7, gif=False))
        results[workers] = read_rows(trained_run / "eval-train" / "returns.csv")
    assert results[1] == results[2]
    assert len({r["return"] for r in results[1]}) > 1  # different tracks, different returns


def test_evaluate_cli_and_missing_controller(trained_run, tmp_path, capsys):
    assert cli.main(["evaluate", "--run", str(trained_run), "--episodes", "1", "--workers", "0",
                     "--max-steps", "3", "--params", "mean", "--no-gif"]) == 0
    assert "1 episodes" in capsys.readouterr().out
    with pytest.raises(WorldModelsError, match="no checkpoint"):
        ev.run(ev.Config(run=str(tmp_path / "nothing"), episodes=1))
    assert cli.main(["evaluate", "--run", str(tmp_path / "nothing")]) == 1
    assert "train the controller stage first" in capsys.readouterr().err


def test_killed_evaluation_resumes_with_the_missing_episodes(trained_run, monkeypatch):
    import worldmodels.play as agent

    cfg = ev.Config(run=str(trained_run), episodes=3, workers=0, max_steps=6, seed=3, levels="train", env_batch=1)
    full = ev.run(cfg)
    expected = read_rows(trained_run / "eval-train" / "returns.csv")
    (trained_run / "eval-train" / "returns.csv").unlink()
    played, real_episode = [], agent.worker_batch

    def dies_after_two(task):
        if len(played) == 2:
            raise KeyboardInterrupt
        played.extend(task[1])
        return real_episode(task)

    monkeypatch.setattr(agent, "worker_batch", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        ev.run(cfg)
    assert not (trained_run / "eval-train" / "returns.csv").exists()
    played.clear()
    monkeypatch.setattr(agent, "worker_batch", lambda task: played.extend(task[1]) or real_episode(task))
    assert ev.run(cfg) == full
    assert played == [episode_seed(3, 2, "eval")]  # only the episode the killed run had not finished
    assert read_rows(trained_run / "eval-train" / "returns.csv") == expected
    assert not (trained_run / "eval-train" / "returns.partial.jsonl").exists()


def test_ray_backend_gives_the_local_returns(trained_run):
    pytest.importorskip("ray", reason="the ray backend needs ray (pip install worldmodels[distributed])")
    results = {}
    for backend, workers in (("local", 0), ("ray", 2)):  # ray: a private local instance, num_cpus=2
        ev.run(ev.Config(run=str(trained_run), episodes=3, workers=workers, max_steps=8, levels="train",
                         seed=11, gif=False, backend=backend))
        results[backend] = read_rows(trained_run / "eval-train" / "returns.csv")
        (trained_run / "eval-train" / "returns.csv").unlink()
    assert results["ray"] == results["local"] and len(results["local"]) == 3
    assert len({r["return"] for r in results["local"]}) > 1  # different tracks: a real comparison


def test_inline_episodes_run_on_one_torch_thread_and_restore_it(trained_run, monkeypatch):
    import torch

    from worldmodels.play import BatchAgent

    seen, real_play = [], BatchAgent.play
    monkeypatch.setattr(BatchAgent, "play", lambda *a, **kw: seen.append(torch.get_num_threads()) or real_play(*a, **kw))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ev.run(ev.Config(run=str(trained_run), episodes=2, workers=0, max_steps=3, seed=5, gif=False, env_batch=1))
        assert seen == [1, 1] and torch.get_num_threads() == 2  # the caller's setting is back afterwards
    finally:
        torch.set_num_threads(before)


def test_dream_evaluation_plays_members_like_separate_dreams(trained_run, capsys):
    first = ev.run(ev.Config(run=str(trained_run), where="dream", episodes=6))
    assert first["temperature"] == 1.15 and first["max_steps"] == 8  # C's training settings by default
    assert (first["dream_starts"], first["dream_reward"]) == ("first", "auto")
    out = trained_run / "eval-dream-1.15"
    rows = read_rows(out / "returns.csv")
    returns = np.array([float(r["return"]) for r in rows])
    assert len(rows) == 6 and all(1 <= int(r["length"]) <= 8 for r in rows)
    assert np.isclose(first["mean"], returns.mean()) and len(set(returns)) > 1
    assert json.loads((out / "summary.json").read_text()) == first
    # Member i of the batched dream is episode i whatever the batch: the first two episodes of a
    # 2-episode evaluation are those of the 6-episode one (up to float32 rounding of another batch size).
    two = ev.run(ev.Config(run=str(trained_run), where="dream", episodes=2))
    rows2 = read_rows(out / "returns.csv")
    assert two["episodes"] == 2 and [r["length"] for r in rows2] == [r["length"] for r in rows[:2]]
    assert np.allclose([float(r["return"]) for r in rows2], returns[:2], rtol=1e-5)
    cold = ev.run(ev.Config(run=str(trained_run), where="dream", episodes=6, temperature=0.1))
    cold_rows = read_rows(trained_run / "eval-dream-0.1" / "returns.csv")
    assert cold["temperature"] == 0.1 and [r["return"] for r in cold_rows] != [r["return"] for r in rows]
    assert cli.main(["evaluate", "--run", str(trained_run), "--where", "dream", "--temperature", "-1"]) == 1
    assert "temperature must be positive" in capsys.readouterr().err
    on_cpu = ev.run(ev.Config(run=str(trained_run), where="dream", episodes=6, device="cpu"))
    assert on_cpu["mean"] == first["mean"]
    assert cli.main(["evaluate", "--run", str(trained_run), "--where", "dream", "--device", "tpu:7"]) == 1
    assert "unknown device 'tpu:7'" in capsys.readouterr().err



def test_dream_evaluation_uses_the_dream_c_was_trained_in(trained_run, tmp_path):
    """A C trained with --dream-starts any is scored in dreams that start at drawn real frames, with M's state."""
    import shutil

    from worldmodels.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval-*"))
    plain = ev.run(ev.Config(run=str(run), where="dream", episodes=6))
    state = load_checkpoint(run / "controller")
    state["config"]["dream_starts"] = "any"
    save_checkpoint(run / "controller" / "checkpoint.pt", "controller", state)
    anywhere = ev.run(ev.Config(run=str(run), where="dream", episodes=6))
    assert anywhere["dream_starts"] == "any" and anywhere["mean"] != plain["mean"]


def test_action_noise_plays_a_stochastic_policy_around_c_apart_from_its_own_scores(trained_run, monkeypatch):
    """--noise explores C's actions from each episode's own stream (the same episodes for any batching), and
    writes eval-<levels>-noise<std>/, never C's own eval-<levels>/."""
    import worldmodels.play as agent

    own = ev.run(ev.Config(run=str(trained_run), episodes=2, workers=0, max_steps=40, seed=5, levels="train",
                           gif=False))
    sent, real_batch = [], agent.worker_batch
    monkeypatch.setattr(agent, "worker_batch", lambda task: sent.append(task[4]) or real_batch(task))
    noisy = ev.run(ev.Config(run=str(trained_run), episodes=2, workers=0, max_steps=40, seed=5, levels="train",
                             gif=False, noise=0.5))
    assert sent == [0.5]
    out = trained_run / "eval-train-noise0.5"
    assert json.loads((out / "summary.json").read_text())["noise"] == 0.5 and own["noise"] == 0.0
    assert json.loads((trained_run / "eval-train" / "summary.json").read_text()) == own  # untouched
    rows = read_rows(out / "returns.csv")
    assert [r["seed"] for r in rows] == [r["seed"] for r in read_rows(trained_run / "eval-train" / "returns.csv")]
    assert noisy["mean"] != own["mean"]  # the noise reached the car (gas clipped at 0 becomes some gas)
    one_by_one = ev.run(ev.Config(run=str(trained_run), episodes=2, workers=0, max_steps=40, seed=5,
                                  levels="train", gif=False, noise=0.5, env_batch=1))
    assert one_by_one["mean"] == noisy["mean"] and read_rows(out / "returns.csv") == rows
    for bad, where in ((-0.1, "real"), (float("nan"), "real"), (0.1, "dream")):
        with pytest.raises(WorldModelsError, match="--noise"):
            ev.run(ev.Config(run=str(trained_run), episodes=1, workers=0, noise=bad, where=where))
