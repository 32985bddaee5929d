"""Controller shapes and action mappings; the CMA-ES loop on a toy dream; checkpoint, resume and CLI runs."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from worldmodels.checkpoint import load_checkpoint
from worldmodels.errors import WorldModelsError
from worldmodels.metrics import read_metrics
from worldmodels.models.controller import (DOOM_LEFT, DOOM_RIGHT, DOOM_STAY, BatchedController, Controller,
                                           controller_input_dim, make_action_map, rollout_dream)
from worldmodels.stages import train_controller as tc

CAR = {"type": "box", "shape": [3], "low": [-1, 0, 0], "high": [1, 1, 1]}


def test_paper_parameter_counts():
    car = make_action_map("carracing", CAR)
    assert Controller(controller_input_dim(32, 256, "zh"), car.output_dim, car.bias).n_params == 867
    doom = make_action_map("doom", {"type": "discrete", "n": 3})
    assert Controller(controller_input_dim(64, 512, "zch"), doom.output_dim, doom.bias).n_params == 1088
    procgen = make_action_map("procgen", {"type": "discrete", "n": 15})
    assert procgen.output_dim == 15 and Controller(32 + 256, 15).n_params == 15 * 289
    assert controller_input_dim(32, 256, "z") == 32


def test_flat_round_trip_and_batched_matches_single():
    ctrl = Controller(10, 3)
    vec = np.random.default_rng(0).normal(size=ctrl.n_params)
    assert np.allclose(ctrl.set_flat(vec).get_flat(), vec, atol=1e-6)
    with pytest.raises(WorldModelsError, match="33 parameters"):
        ctrl.set_flat(vec[:-1])
    params = np.random.default_rng(1).normal(size=(4, ctrl.n_params))
    batched = BatchedController(params, 10, 3, True, rollouts=2)
    x = torch.randn(8, 10)
    raw = batched(x)  # member p * 2 + r runs candidate p
    for b in range(8):
        ctrl.set_flat(params[b // 2])
        assert torch.allclose(raw[b], ctrl(x[b:b + 1])[0], atol=1e-5)


def test_action_ranges():
    raw = torch.linspace(-50, 50, 301)[:, None].repeat(1, 3)
    a = make_action_map("carracing", CAR)(raw)
    assert a.shape == (301, 3)
    assert a[:, 0].min() >= -1 and a[:, 0].max() <= 1 and a[:, 0].min() < -0.99 and a[:, 0].max() > 0.99
    assert a[:, 1].min() >= 0 and a[:, 1].max() <= 1 and a[:, 1].min() < 0.01 and a[:, 1].max() > 0.99
    assert a[:, 2].min() == 0 and a[:, 2].max() <= 1 and (a[:, 2] == 0).sum() > 100
    doom = make_action_map("doom", {"type": "discrete", "n": 3})
    acts = doom(torch.tensor([[-3.0], [-0.2], [0.0], [0.2], [3.0]]))
    assert acts.tolist() == [DOOM_LEFT, DOOM_STAY, DOOM_STAY, DOOM_STAY, DOOM_RIGHT]
    assert doom.model_input(acts).shape == (5, 3)
    procgen = make_action_map("procgen", {"type": "discrete", "n": 15})
    logits = torch.zeros(2, 15)
    logits[0, 7], logits[1, 14] = 1.0, 2.0
    assert procgen(logits).tolist() == [7, 14]
    with pytest.raises(WorldModelsError):
        make_action_map("carracing", {"type": "discrete", "n": 5})


class ToyDream:
    """A fake M: constant features, reward highest (zero) when the action equals ``target``."""

    def __init__(self, batch: int, target=(0.6, 0.9, 0.0), steps: int = 5, dim: int = 4):
        self.batch, self.target, self.steps, self.dim = batch, torch.tensor(target), steps, dim
        self.returns = torch.zeros(batch)

    def reset(self, seed=None):
        g = torch.Generator().manual_seed(int(seed or 0) % 2**31)
        self.t, self.returns = 0, torch.zeros(self.batch)
        self.obs = torch.ones(self.batch, self.dim) + 0.1 * torch.randn(self.batch, self.dim, generator=g)
        return self.obs

    def step(self, actions):
        self.t += 1
        reward = -((actions - self.target) ** 2).sum(-1)  # (B,)
        self.returns += reward
        return self.obs, reward, torch.full((self.batch,), self.t >= self.steps), {}


def toy_problem(cfg: tc.Config):
    amap = make_action_map("carracing", CAR)
    dim = 4

    def returns(params, rollouts, seed):
        ctrl = BatchedController(params, dim, 3, True, rollouts)
        return rollout_dream(ToyDream(ctrl.batch_size, dim=dim), ctrl, amap, seed).reshape(len(params), rollouts)

    fitness = lambda params, gen: returns(params, cfg.rollouts, tc.dream_seed(cfg.seed, gen, 0))  # noqa: E731
    scorer = lambda mean, gen: returns(mean[None], cfg.eval_episodes, tc.dream_seed(cfg.seed, gen, 1))[0]  # noqa: E731
    return 3 * (dim + 1), fitness, {"eval": scorer}


def toy_cfg(tmp_path, **kw):
    base = dict(run=str(tmp_path), popsize=12, rollouts=2, generations=20, sigma0=0.1, eval_every=5,
                eval_episodes=4, seed=3)
    return tc.Config(**{**base, **kw})


class RecordingDream(ToyDream):
    """A ToyDream that keeps every action it was stepped with."""

    def reset(self, seed=None):
        self.actions = []
        return super().reset(seed)

    def step(self, actions):
        self.actions.append(actions.clone())
        return super().step(actions)


def test_dream_action_noise_explores_like_the_real_env_and_is_seeded():
    """rollout_dream(noise=σ) steps the dream with C's actions plus clipped Gaussian noise of std σ (discrete: a random
    action with probability σ), drawn from the dream's seed: the same seed plays the same episodes."""
    amap = make_action_map("carracing", CAR)
    ctrl = BatchedController(np.zeros((1, 3 * 5)), 4, 3, True, 4000)  # raw 0: steer 0, gas 0.5, brake 0

    def play(noise, seed):
        dream = RecordingDream(ctrl.batch_size)
        returns = rollout_dream(dream, ctrl, amap, seed, noise=noise)
        return returns, torch.cat(dream.actions)

    plain_returns, plain = play(0.0, 1)
    assert torch.equal(plain, torch.tensor([[0.0, 0.5, 0.0]]).expand_as(plain))
    returns, noisy = play(0.1, 1)
    assert np.array_equal(returns, play(0.1, 1)[0]) and not np.array_equal(returns, play(0.1, 2)[0])
    delta = noisy - plain
    assert abs(delta[:, 0].std().item() - 0.1) < 0.005 and abs(delta[:, 1].mean().item()) < 0.005  # unclipped
    brake = noisy[:, 2]  # clipped at 0: half the steps brake, by |noise|
    assert brake.min() == 0 and abs((brake > 0).float().mean().item() - 0.5) < 0.02
    assert abs(brake.mean().item() - 0.1 / np.sqrt(2 * np.pi)) < 0.003
    discrete = make_action_map("procgen", {"type": "discrete", "n": 15})
    weights = np.zeros((1, 15 * 5))
    weights[0, 15 * 4 + 7] = 1.0  # bias: always action 7
    dctrl = BatchedController(weights, 4, 15, True, 2000)
    dream = RecordingDream(dctrl.batch_size, target=7.0)
    rollout_dream(dream, dctrl, discrete, 3, noise=0.3)
    swapped = (torch.cat(dream.actions) != 7).float().mean().item()
    assert abs(swapped - 0.3 * 14 / 15) < 0.02  # a random action is 7 one time in 15


def test_cmaes_solves_toy_dream(tmp_path):
    cfg = toy_cfg(tmp_path)
    n, fitness, scorers = toy_problem(cfg)
    summary = tc.evolve(cfg, tmp_path, n, fitness, scorers, {"env": "toy"})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["generation"] for r in records] == list(range(20))
    # x0 = 0 gives actions (0, 0.5, 0): return -0.52 per step * 5 steps = -2.6; the optimum is 0.
    assert records[0]["cmaes/mean"] < -2.0
    evals = [r["eval/mean"] for r in records if "eval/mean" in r]
    assert len(evals) == 4 and evals[-1] > -0.05 and summary["best_eval"] == max(evals)
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    state = load_checkpoint(tmp_path / "checkpoint.pt", kind="controller")
    assert state["generation"] == 20 and state["best"]["fitness"] == max(r["cmaes/best"] for r in records)
    # the mean solution acts close to the rewarded action
    ctrl = BatchedController(state["mean"], 4, 3, True)
    act = make_action_map("carracing", CAR)(ctrl(torch.ones(1, 4)))[0]
    assert torch.allclose(act, torch.tensor([0.6, 0.9, 0.0]), atol=0.15)


def record_fitness(monkeypatch):
    """Make ``tc.run`` call ``tc.evolve`` with a fitness that records every (solutions, generation, returns)."""
    seen, real_evolve = [], tc.evolve

    def recording(cfg, out_dir, n_params, fitness, *args, **kw):
        def recorded(params, gen):
            returns = fitness(params, gen)
            seen.append((np.array(params), gen, np.array(returns)))
            return returns
        return real_evolve(cfg, out_dir, n_params, recorded, *args, **kw)

    monkeypatch.setattr(tc, "evolve", recording)
    return seen


def test_cmaes_fitness_is_the_mean_over_rollouts(tmp_path):
    """Rollouts of a candidate that differ (so their max, first and mean differ): the recorded best, mean and worst
    are those of the per-candidate means, and CMA-ES was told exactly -mean (a replay of it lands on the same mean)."""
    import cma

    cfg = toy_cfg(tmp_path, generations=3, rollouts=3, eval_every=0)
    n, seen = 7, []

    def fitness(params, gen):
        noise = np.random.default_rng(gen).normal(0, 3.0, (len(params), cfg.rollouts))
        returns = -(params ** 2).sum(1, keepdims=True) * np.array([1.0, 2.0, 4.0]) + noise  # (P, R)
        seen.append((params.copy(), returns))
        return returns

    tc.evolve(cfg, tmp_path, n, fitness, {}, {"env": "toy"}, plot=False)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == len(seen) == 3
    for record, (_, returns) in zip(records, seen):
        fit = returns.mean(1)
        assert (record["cmaes/best"], record["cmaes/mean"], record["cmaes/worst"]) == (fit.max(), fit.mean(), fit.min())
        for other in (returns.max(1), returns[:, 0]):  # what a fitness of the best or the first rollout would give
            assert not np.isclose(other.max(), fit.max()) and not np.isclose(other.mean(), fit.mean())
    best = max(range(3), key=lambda g: seen[g][1].mean(1).max())
    state = load_checkpoint(tmp_path / "checkpoint.pt", kind="controller")
    assert state["best"]["fitness"] == seen[best][1].mean(1).max() == max(r["cmaes/best_ever"] for r in records)
    assert np.array_equal(state["best"]["params"], seen[best][0][seen[best][1].mean(1).argmax()])
    es = cma.CMAEvolutionStrategy(np.zeros(n), cfg.sigma0, {"popsize": cfg.popsize, "seed": cfg.seed + 1,
                                                             "verbose": -9})
    for (params, returns), record in zip(seen, records):
        assert np.array_equal(np.asarray(es.ask()), params)
        es.tell(list(params), list(-returns.mean(1)))
        assert record["cmaes/sigma"] == es.sigma
    assert np.array_equal(es.mean, state["mean"])


def test_resume_gives_same_next_generation(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    for folder, gens in ((full, 4), (part, 2), (part, 4)):
        cfg = toy_cfg(folder, generations=gens, eval_every=2)
        n, fitness, scorers = toy_problem(cfg)
        tc.evolve(cfg, folder, n, fitness, scorers, {"env": "toy"}, plot=False)
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    drop = lambda r: {k: v for k, v in r.items() if k != "cmaes/seconds"}  # noqa: E731
    assert [drop(r) for r in a] == [drop(r) for r in b] and len(a) == 4
    sa, sb = (load_checkpoint(f / "checkpoint.pt") for f in (full, part))
    assert np.array_equal(sa["mean"], sb["mean"]) and sa["id"] != sb["id"]
    assert np.array_equal(pickle.loads(sa["es"]).ask(), pickle.loads(sb["es"]).ask())


def test_a_search_continues_across_machines_from_its_snapshot(tmp_path):
    """results/ship.py snapshot keeps a search's mean and step size (kilobytes, no CMA-ES state), and a search warm
    started from it (results/carracing/run.sh on a fresh machine) counts on from its generations."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ship", Path(__file__).resolve().parents[1] / "results" / "ship.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    first, init = tmp_path / "first" / "controller", tmp_path / "init"
    cfg = toy_cfg(first, generations=3, eval_every=0)
    n, fitness, scorers = toy_problem(cfg)
    tc.evolve(cfg, first, n, fitness, scorers, {"env": "toy"}, plot=False)
    state = load_checkpoint(first, kind="controller")
    ship.snapshot(str(first), str(init))
    assert not first.exists() and (tmp_path / "first" / "controller.before-init-3").is_dir()  # its resume is void
    snap = load_checkpoint(init, kind="controller")
    assert "es" not in snap and snap["generation"] == 3 and np.array_equal(snap["mean"], state["mean"])
    assert float((init / "sigma").read_text()) == pickle.loads(state["es"]).sigma != cfg.sigma0
    second = tmp_path / "second" / "controller"
    cont = toy_cfg(second, generations=2, eval_every=0, init=str(init), sigma0=float((init / "sigma").read_text()))
    tc.evolve(cont, second, n, fitness, scorers, {"env": "toy"}, plot=False)
    later = load_checkpoint(second, kind="controller")
    ship.snapshot(str(second), str(init), str(tmp_path / "state"))  # elsewhere: the search stays resumable
    assert second.is_dir() and (init / "generations").read_text() == "3\n"
    snap = tmp_path / "state"
    assert (snap / "generations").read_text() == "5\n" and load_checkpoint(snap)["generation"] == 5
    assert json.loads((snap / "segments.json").read_text()) == {state["id"]: 0, later["id"]: 3}
    rows = read_metrics(snap / "metrics.jsonl")
    assert [r["generation"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["cmaes/best"] for r in rows[3:]] == [r["cmaes/best"] for r in read_metrics(second / "metrics.jsonl")]
    # a campaign's rerun skips the evaluation of a C it already scored, and only of that C
    scores = tmp_path / "second" / "eval-test"
    assert not ship.scored(str(tmp_path / "second"))
    scores.mkdir()
    (scores / "summary.json").write_text(json.dumps({"controller_id": later["id"], "generation": later["generation"]}))
    assert ship.scored(str(tmp_path / "second"))
    tc.evolve(dataclasses.replace(cont, generations=3), second, n, fitness, scorers, {"env": "toy"}, plot=False)
    assert not ship.scored(str(tmp_path / "second"))


def test_resume_refuses_changed_settings(tmp_path):
    cfg = toy_cfg(tmp_path, generations=1, eval_every=0)
    n, fitness, scorers = toy_problem(cfg)
    tc.evolve(cfg, tmp_path, n, fitness, scorers, {"env": "toy"}, plot=False)
    with pytest.raises(WorldModelsError, match="popsize=12"):
        tc.evolve(dataclasses.replace(cfg, popsize=8, generations=2), tmp_path, n, fitness, scorers, {"env": "toy"})
    with pytest.raises(WorldModelsError, match="different env"):
        tc.evolve(dataclasses.replace(cfg, generations=2), tmp_path, n, fitness, scorers, {"env": "other"})
    tc.evolve(dataclasses.replace(cfg, generations=2, fresh=True, popsize=8), tmp_path, n, fitness, scorers,
              {"env": "other"}, plot=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["popsize"] == 8


# ------------------------------------------------------------------------------------------ stages on tiny models
def make_tiny_run(root, env="carracing", z_dim=4, hidden=8):
    """A run folder with random-init V and M checkpoints and a tiny latents file (3 episodes)."""
    from worldmodels.checkpoint import save_checkpoint
    from worldmodels.data import LATENTS, EpisodeWriter
    from worldmodels.envs import action_dim, describe_action_space, make
    from worldmodels.models.mdrnn import MDRNN
    from worldmodels.models.vae import ConvVAE

    torch.manual_seed(0)
    run = root / "run"
    probe = make(env)
    space = describe_action_space(probe.action_space)
    probe.close()
    vae_ckpt = save_checkpoint(run / "vae", "vae", {"model": ConvVAE(z_dim).state_dict(), "z_dim": z_dim,
                                                   "config": {"z_dim": z_dim}})
    vae_id = load_checkpoint(vae_ckpt)["id"]
    latents = root / "latents.h5"
    attrs = {"env": env, "action_space": space, "z_dim": z_dim, "vae_checkpoint": str(vae_ckpt), "vae_id": vae_id,
             "rollouts": str(root / "missing-rollouts.h5")}
    rng = np.random.default_rng(0)
    with EpisodeWriter(latents, LATENTS, attrs) as writer:
        for ep in range(3):
            n = 5
            action = (rng.uniform(-1, 1, (n, 3)).astype(np.float32) if space["type"] == "box"
                      else rng.integers(0, space["n"], n))
            writer.append({"mu": rng.normal(size=(n, z_dim)).astype(np.float32),
                           "logvar": np.full((n, z_dim), -2.0, np.float32), "action": action,
                           "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, bool),
                           "truncated": np.arange(n) == n - 1}, seed=ep)  # cut at 5 frames (--max-steps)
    mdrnn = MDRNN(z_dim, action_dim(space), hidden)
    save_checkpoint(run / "mdrnn", "mdrnn", {"model": mdrnn.state_dict(), "model_args": mdrnn.config,
                                             "config": {"latents": str(latents), "env": env}})
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tiny"))


def stage_cfg(run, **kw):
    base = dict(run=str(run), popsize=4, rollouts=2, generations=2, eval_every=1, eval_episodes=2, max_steps=8,
                workers=0, device="cpu")
    return tc.Config(**{**base, **kw})


def test_dream_run_completes_and_checkpoints(tiny_run):
    summary = tc.run(stage_cfg(tiny_run, fresh=True))
    out = tiny_run / "controller"
    state = load_checkpoint(out, kind="controller")
    assert summary["generation"] == state["generation"] == 2
    assert state["identity"]["input_dim"] == 4 + 8 and len(state["mean"]) == 3 * 13
    records = read_metrics(out / "metrics.jsonl")
    assert [r["generation"] for r in records] == [0, 1]
    best_ever = np.maximum.accumulate([r["cmaes/best"] for r in records])
    assert [r["cmaes/best_ever"] for r in records] == best_ever.tolist()
    assert state["best"]["fitness"] == best_ever[-1]
    assert records[-1]["cmaes/sigma"] == pickle.loads(state["es"]).sigma  # the ES the checkpoint resumes
    assert records[0]["cmaes/sigma"] != records[1]["cmaes/sigma"]  # the step size adapts each generation
    assert all("eval/mean" in r and np.isfinite(r["eval/mean"]) for r in records)
    assert (out / "learning_curve.png").exists() and (out / "config.yaml").exists()
    # a rerun with more generations continues from generation 2
    tc.run(stage_cfg(tiny_run, generations=3))
    assert [r["generation"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2]


def test_dream_fitness_is_the_mean_of_independent_single_dreams(tiny_run, tmp_path, monkeypatch):
    """Population x rollouts is one DreamEnv batch whose member p * R + r is candidate p's rollout r: its return
    equals a single dream of candidate p with random stream p * R + r, and the fitness the stage records
    (cmaes/best, mean, worst) is each candidate's mean over its rollouts."""
    from worldmodels.agent import load_world
    from worldmodels.dream import DreamEnv

    world = load_world(tiny_run, "zh", "cpu")
    initial = world.initial_latents()

    def single(params, stream, seed, temperature=1.15, max_steps=8):
        dream = DreamEnv(world.vae, world.mdrnn, initial, temperature, 1, "cpu", max_steps, reward="predicted",
                         obs_mode="zh", seed=123, stream_ids=[stream])
        return world.dream_returns(dream, params[None], 1, seed=seed)[0, 0]

    P, R = 3, 2
    params = np.random.default_rng(0).normal(0, 0.5, (P, world.n_params))
    returns = world.dream_returns(world.dream_factory(1.15, 8, 0)(P * R), params, R, seed=5)
    expected = np.array([[single(params[p], p * R + r, 5) for r in range(R)] for p in range(P)])
    assert returns.shape == (P, R) and np.allclose(returns, expected, atol=1e-4)
    assert len(np.unique(expected.round(3))) == P * R  # all differ: a member mixed up would show

    seen = record_fitness(monkeypatch)
    run = _copy_run(tiny_run, tmp_path)
    cfg = stage_cfg(run, generations=1, eval_every=0, fresh=True)
    tc.run(cfg)
    [(solutions, gen, _)] = seen
    per_rollout = np.array([[single(sol, p * cfg.rollouts + r, tc.dream_seed(cfg.seed, gen, 0), cfg.temperature,
                                    cfg.max_steps) for r in range(cfg.rollouts)] for p, sol in enumerate(solutions)])
    # every candidate's rollouts differ, so a fitness of the best or the first rollout would not match
    assert np.abs(per_rollout[:, 0] - per_rollout[:, 1]).min() > 0.05
    fit = per_rollout.mean(1)
    record = read_metrics(run / "controller" / "metrics.jsonl")[0]
    assert np.allclose([record["cmaes/best"], record["cmaes/mean"], record["cmaes/worst"]],
                       [fit.max(), fit.mean(), fit.min()], atol=1e-4)


def test_real_run_completes_and_checkpoints(tiny_run, tmp_path, monkeypatch):
    """The fitness of a real run is each candidate's return on the generation's train seeds: replayed here one
    candidate and one seed at a time, inline, it gives the same numbers as the run's batched workers, and the
    recorded best, mean and worst are those of the per-candidate means."""
    from worldmodels.agent import load_world
    from worldmodels.parallel import WorkerPool
    from worldmodels.play import init_worker, play_members

    run = _copy_run(tiny_run, tmp_path)
    seen = record_fitness(monkeypatch)
    cfg = stage_cfg(run, where="real", workers=2, max_steps=60, popsize=3, rollouts=2, generations=2, eval_every=1,
                    sigma0=5.0)
    summary = tc.run(cfg)
    state = load_checkpoint(run / "controller", kind="controller")
    assert summary["generation"] == state["generation"] == 2 and state["config"]["where"] == "real"
    records = read_metrics(run / "controller" / "metrics.jsonl")
    assert len(records) == len(seen) == 2 and all(np.isfinite(r["eval/mean"]) for r in records)
    assert [r["cmaes/env_steps"] for r in records] == [3 * 2 * 60] * 2  # every rollout ran its 60 steps
    spec = load_world(run, "zh", "cpu").worker_spec(cfg.max_steps, "train", state["identity"]["env_backend"])
    with WorkerPool(0, init_worker, (spec,), what="replay") as pool:
        for (solutions, gen, returns), record in zip(seen, records):
            seeds = tc.population_seeds(cfg.seed, gen, cfg.rollouts)
            replay = np.array([[play_members(pool, sol[None], [s], 1)[0][0] for s in seeds] for sol in solutions])
            np.testing.assert_allclose(replay, returns, atol=1e-4)
            assert len(np.unique(replay.round(3), axis=0)) > 1  # candidates differ (60 steps): a mix-up would show
            fit = replay.mean(1)
            assert np.allclose([record["cmaes/best"], record["cmaes/mean"], record["cmaes/worst"]],
                               [fit.max(), fit.mean(), fit.min()], atol=1e-4)


def _descendants(pid: int) -> list[int]:
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_dead_real_env_worker_gives_clear_error(tiny_run, tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("controller"))
    proc = subprocess.Popen([sys.executable, "-m", "worldmodels", "train-controller", "--run", str(run),
                             "--where", "real", "--workers", "2", "--popsize", "4", "--rollouts", "2",
                             "--generations", "1000", "--max-steps", "50", "--eval-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / "controller" / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.2)  # the pool is up and a generation is done
        assert proc.poll() is None, proc.communicate()
        workers = [p for p in _descendants(proc.pid)]
        assert workers, "no worker processes found"
        os.kill(workers[-1], signal.SIGKILL)
        killed_at = time.time()
        out, err = proc.communicate(timeout=30)
        assert time.time() - killed_at < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "worker process died" in err and "Traceback" not in err
    assert load_checkpoint(run / "controller")["generation"] >= 1  # completed generations kept


# ------------------------------------------------------------------------------------------ augment, offline, backend
def _copy_run(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("controller"))
    return run


SWING = {"random_swing": {"probability": 1.0, "strength": 1.0, "window": 2}}


def test_augmented_dream_run_records_its_augmentations_and_resumes_only_with_them(tiny_run, tmp_path):
    import yaml

    from worldmodels import cli

    run = _copy_run(tiny_run, tmp_path)
    plain = tc.run(stage_cfg(run, generations=1, eval_every=0, fresh=True))
    plain_fit = read_metrics(run / "controller" / "metrics.jsonl")[0]["cmaes/mean"]
    assert load_checkpoint(run / "controller")["identity"]["augment"] == []
    assert cli.main(["train-controller", "--run", str(run), "--popsize", "4", "--rollouts", "2", "--generations", "1",
                     "--eval-every", "0", "--max-steps", "8", "--device", "cpu", "--fresh",
                     "--augment", "random_swing", "--augment-options", str(SWING)]) == 0
    state = load_checkpoint(run / "controller")
    assert [(a["name"], a["probability"], a["strength"]) for a in state["identity"]["augment"]] == [
        ("random_swing", 1.0, 1.0)]
    saved = yaml.safe_load((run / "controller" / "config.yaml").read_text())
    assert saved["augment"] == ["random_swing"] and saved["augment_options"] == SWING
    # Same seed, same CMA-ES samples: only the swung fitness dreams can change the population's fitness.
    assert read_metrics(run / "controller" / "metrics.jsonl")[0]["cmaes/mean"] != plain_fit
    assert plain["generation"] == 1
    other = {"random_swing": {**SWING["random_swing"], "strength": 0.5}}
    for changed in (dict(augment_options=other), dict(augment=[])):
        with pytest.raises(WorldModelsError, match="different augment"):
            tc.run(stage_cfg(run, generations=2, eval_every=0, **{"augment": ["random_swing"],
                                                                  "augment_options": SWING, **changed}))
    tc.run(stage_cfg(run, generations=2, eval_every=0, augment=["random_swing"], augment_options=SWING))
    assert load_checkpoint(run / "controller")["generation"] == 2


def _interrupt_then_resume(cfg, monkeypatch, after: int):
    """``tc.run(cfg)`` stopped by a KeyboardInterrupt while generation ``after`` is being logged (its fitness,
    scores and augmentation draws done, its checkpoint not yet written), then the same command again."""
    real_logger = tc.MetricsLogger

    class Interrupting(real_logger):
        def log(self, step, **values):
            if step == after:
                raise KeyboardInterrupt
            super().log(step, **values)

    with monkeypatch.context() as patch:
        patch.setattr(tc, "MetricsLogger", Interrupting)
        with pytest.raises(KeyboardInterrupt):
            tc.run(cfg)
    state = load_checkpoint(cfg.run + "/controller", kind="controller")
    assert state["generation"] == after
    assert [r["generation"] for r in read_metrics(f"{cfg.run}/controller/metrics.jsonl")] == list(range(after))
    return tc.run(cfg)


def _assert_same_run(a, b):
    """Two controller folders hold the same search: checkpoint (mean, best, best_eval, sigma, the ES's next
    samples) and metrics (all but the wall-clock seconds)."""
    sa, sb = (load_checkpoint(f / "checkpoint.pt", kind="controller") for f in (a, b))
    assert sa["generation"] == sb["generation"]
    assert np.array_equal(sa["mean"], sb["mean"])
    assert sa["best"]["fitness"] == sb["best"]["fitness"] and np.array_equal(sa["best"]["params"], sb["best"]["params"])
    assert sa["best_eval"]["score"] == sb["best_eval"]["score"]
    assert sa["best_eval"]["generation"] == sb["best_eval"]["generation"]
    assert np.array_equal(sa["best_eval"]["params"], sb["best_eval"]["params"])
    ea, eb = pickle.loads(sa["es"]), pickle.loads(sb["es"])
    assert ea.sigma == eb.sigma and np.array_equal(np.asarray(ea.ask()), np.asarray(eb.ask()))
    drop = lambda r: {k: v for k, v in r.items() if k != "cmaes/seconds"}  # noqa: E731
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [drop(r) for r in ra] == [drop(r) for r in rb]
    return ra


AUGMENTED = {"random_swing": {"probability": 0.5, "strength": 1.0, "window": 4},
             "deepdream": {"probability": 0.5, "strength": 2.0, "steps": 1, "window": 4}}


def test_interrupted_augmented_dream_run_resumes_to_the_uninterrupted_result(tiny_run, tmp_path, monkeypatch):
    """Stopped after generation 1 (its augmented fitness dreams and its score already drawn), the same command
    resumes to exactly the checkpoint and metrics of an uninterrupted run: the CMA-ES state, numpy's global RNG
    and the dreams' (and augmentations') random draws all restart where the checkpoint says, not where the
    interrupted process had got to."""
    import shutil

    runs = {}
    for name in ("straight", "resumed", "plain"):
        runs[name] = tmp_path / name
        shutil.copytree(tiny_run, runs[name], ignore=shutil.ignore_patterns("controller"))
    def cfg(run, **kw):
        return stage_cfg(run, **{"generations": 3, "eval_every": 2, "augment": list(AUGMENTED),
                                 "augment_options": AUGMENTED, **kw})
    tc.run(cfg(runs["straight"]))
    _interrupt_then_resume(cfg(runs["resumed"]), monkeypatch, after=1)
    records = _assert_same_run(runs["straight"] / "controller", runs["resumed"] / "controller")
    assert [r["generation"] for r in records] == [0, 1, 2] and "eval/mean" in records[1]
    # The augmentations are live in these dreams (else their draws could not matter): without them the same
    # seed and CMA-ES samples give another fitness.
    tc.run(cfg(runs["plain"], augment=[], augment_options={}, generations=1))
    assert read_metrics(runs["plain"] / "controller" / "metrics.jsonl")[0]["cmaes/mean"] != records[0]["cmaes/mean"]


def test_interrupted_real_run_resumes_to_the_uninterrupted_result(tiny_run, tmp_path, monkeypatch):
    """The same for a real-env run (inline workers, batches of 2 episodes): the generation's env seeds and z's
    noise streams follow the generation, so the resumed run replays exactly what the uninterrupted one played."""
    import shutil

    runs = {}
    for name in ("straight", "resumed"):
        runs[name] = tmp_path / name
        shutil.copytree(tiny_run, runs[name], ignore=shutil.ignore_patterns("controller"))
    cfg = lambda run: stage_cfg(run, where="real", workers=0, env_batch=2, max_steps=60, popsize=3,  # noqa: E731
                                rollouts=2, generations=3, eval_every=2, sigma0=5.0)
    tc.run(cfg(runs["straight"]))
    _interrupt_then_resume(cfg(runs["resumed"]), monkeypatch, after=1)
    records = _assert_same_run(runs["straight"] / "controller", runs["resumed"] / "controller")
    assert [r["generation"] for r in records] == [0, 1, 2] and "eval/mean" in records[1]
    assert all(r["cmaes/best"] != r["cmaes/worst"] for r in records)  # candidates differ: a mix-up would show


def test_a_checkpoint_too_slow_to_write_every_generation_is_written_less_often_and_resumes_exactly(
        tiny_run, tmp_path, monkeypatch):
    """When writing the checkpoint takes more than CHECKPOINT_OVERHEAD of the time since the last write, the
    generations in between are not checkpointed (here: only the first and the last); a run killed after such a
    generation resumes from the last checkpoint, drops the metrics past it, and ends as an uninterrupted run."""
    import shutil

    runs = {name: tmp_path / name for name in ("straight", "resumed")}
    for run in runs.values():
        shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("controller"))
    monkeypatch.setattr(tc, "CHECKPOINT_OVERHEAD", 1e-12)  # any write is "slow": after the first, only the last
    saved = []
    real_save = tc._save
    monkeypatch.setattr(tc, "_save", lambda path, cfg, state, es, identity: (
        saved.append(state["generation"]), real_save(path, cfg, state, es, identity)))
    tc.run(stage_cfg(runs["straight"], generations=4, eval_every=2))
    assert saved == [1, 4]
    real_logger = tc.MetricsLogger

    class Interrupting(real_logger):
        def log(self, step, **values):
            if step == 3:
                raise KeyboardInterrupt
            super().log(step, **values)

    with monkeypatch.context() as patch:
        patch.setattr(tc, "MetricsLogger", Interrupting)
        with pytest.raises(KeyboardInterrupt):
            tc.run(stage_cfg(runs["resumed"], generations=4, eval_every=2))
    assert load_checkpoint(runs["resumed"] / "controller")["generation"] == 1
    assert [r["generation"] for r in read_metrics(runs["resumed"] / "controller" / "metrics.jsonl")] == [0, 1, 2]
    tc.run(stage_cfg(runs["resumed"], generations=4, eval_every=2))
    records = _assert_same_run(runs["straight"] / "controller", runs["resumed"] / "controller")
    assert [r["generation"] for r in records] == [0, 1, 2, 3]


def test_a_slimmed_checkpoint_is_final_and_refused_for_more_generations_in_one_line(tiny_run, tmp_path):
    from worldmodels.stages.study import slim_controller

    run = _copy_run(tiny_run, tmp_path)
    tc.run(stage_cfg(run, generations=1, eval_every=0))
    before = load_checkpoint(run / "controller")
    slim_controller(run / "controller")
    after = load_checkpoint(run / "controller")
    assert "es" not in after and "np_rng" not in after and after["id"] == before["id"]
    assert np.array_equal(after["mean"], before["mean"])
    assert tc.run(stage_cfg(run, generations=1, eval_every=0))["generation"] == 1  # finished: nothing to do
    assert load_checkpoint(run / "controller")["id"] == before["id"]
    with pytest.raises(WorldModelsError, match="without its CMA-ES state"):
        tc.run(stage_cfg(run, generations=2, eval_every=0))


def test_augment_and_backend_misuse_are_clear_errors(tiny_run):
    for where in ("real", "offline"):
        with pytest.raises(WorldModelsError, match=f"needs --where dream, not {where}"):
            tc.run(stage_cfg(tiny_run, where=where, augment=["deepdream"]))
    with pytest.raises(WorldModelsError, match="unknown augmentation 'swing'"):
        tc.run(stage_cfg(tiny_run, augment=["swing"], fresh=True, generations=1))
    with pytest.raises(WorldModelsError, match="--ray-address needs --backend ray"):
        tc.run(stage_cfg(tiny_run, where="real", ray_address="auto"))
    for where in ("dream", "offline"):  # no real-env workers to put on ray
        with pytest.raises(WorldModelsError, match=f"--where {where} without --eval-real has none"):
            tc.run(stage_cfg(tiny_run, where=where, backend="ray"))


def test_offline_fit_is_kept_on_rerun_and_refused_with_other_settings(tiny_run, tmp_path, capsys):
    from worldmodels import cli
    from worldmodels.stages import evaluate as ev

    run = _copy_run(tiny_run, tmp_path)
    args = ["train-controller", "--run", str(run), "--where", "offline", "--offline-weighting", "minmax",
            "--offline-ridge", "0.01", "--device", "cpu"]
    assert cli.main(args) == 0
    state = load_checkpoint(run / "controller", kind="controller")
    assert state["config"]["where"] == "offline" and state["offline"]["weighting"] == "minmax"
    assert state["offline"]["ridge"] == 0.01 and state["offline"]["episodes"] == 3
    assert cli.main(args) == 0 and "kept" in capsys.readouterr().out
    assert load_checkpoint(run / "controller")["id"] == state["id"]
    assert cli.main(args[:-4] + ["--offline-ridge", "0.1"]) == 1
    assert "offline_ridge=0.01" in capsys.readouterr().err
    summary = ev.run(ev.Config(run=str(run), episodes=1, workers=0, max_steps=4, gif=False, levels="train"))
    assert summary["trained_where"] == "offline" and summary["controller_id"] == state["id"]
    # A dream run on top of an offline fit is refused too (it would overwrite the fit).
    with pytest.raises(WorldModelsError, match="where='offline'"):
        tc.run(stage_cfg(run, generations=1))


def test_backend_options_reach_the_worker_pool(tiny_run, tmp_path, monkeypatch):
    import worldmodels.parallel as parallel

    seen, real_pool = [], parallel.WorkerPool

    def recording_pool(*args, backend="local", ray_address=None, **kw):
        seen.append((backend, ray_address))
        return real_pool(*args, **kw)  # run locally: only the wiring is under test here

    monkeypatch.setattr(parallel, "WorkerPool", recording_pool)
    run = _copy_run(tiny_run, tmp_path)
    tc.run(stage_cfg(run, where="real", workers=0, max_steps=3, popsize=2, rollouts=1, generations=1,
                     eval_every=0, backend="ray", ray_address="HOST:1234"))
    assert seen == [("ray", "HOST:1234")]


def _extra_m(run, folder, seed, hidden=8, env="carracing", latents=None):
    """Another M for a dream ensemble of ``run``: M's sizes (or ``hidden``), fresh weights, the same latents."""
    from worldmodels.checkpoint import save_checkpoint
    from worldmodels.models.mdrnn import MDRNN, load_mdrnn

    base = load_mdrnn(run / "mdrnn")
    recorded = load_checkpoint(run / "mdrnn")["config"]
    torch.manual_seed(seed)
    m = MDRNN(base.z_dim, base.action_dim, hidden, base.n_gaussians)
    save_checkpoint(folder, "mdrnn", {"model": m.state_dict(), "model_args": m.config,
                                      "config": {"latents": latents or recorded["latents"], "env": env}})
    return load_checkpoint(folder)["id"]


def test_dream_ensemble_run_records_its_settings_and_resumes_only_with_them(tiny_run, tmp_path, monkeypatch):
    """--dream-dropout and --dream-models make the fitness dreams a dream ensemble and the mean-solution score stays
    in the plain dream of the run's M; both are in the checkpoint's identity, so a resume with others is refused,
    and a checkpoint from before them resumes with the defaults."""
    import yaml

    from worldmodels import agent, cli
    from worldmodels.checkpoint import save_checkpoint

    run = _copy_run(tiny_run, tmp_path)
    ids = [_extra_m(run, tmp_path / f"m{i}", seed=i) for i in (2, 3)]
    _, cfg = cli.parse_stage_args("train-controller", ["--dream-dropout", "0.1", "--dream-models", "a,b"])
    assert cfg.dream_dropout == 0.1 and cfg.dream_models == ["a", "b"]
    tc.run(stage_cfg(run, generations=1, eval_every=0, fresh=True))
    plain_fit = read_metrics(run / "controller" / "metrics.jsonl")[0]["cmaes/mean"]

    factories, real_factory = [], agent.World.dream_factory

    def recording(self, *args, **kw):
        factories.append(kw)
        return real_factory(self, *args, **kw)
    monkeypatch.setattr(agent.World, "dream_factory", recording)
    flags = ["train-controller", "--run", str(run), "--popsize", "4", "--rollouts", "2", "--generations", "1",
             "--eval-every", "1", "--max-steps", "8", "--device", "cpu", "--dream-dropout", "0.5",
             "--dream-models", f"{tmp_path / 'm2'},{tmp_path / 'm3'}"]
    assert cli.main(flags + ["--fresh"]) == 0
    fitness_kw, plain_kw = factories
    assert fitness_kw["dropout"] == 0.5 and [m.checkpoint_id for m in fitness_kw["models"]] == ids
    assert plain_kw.get("dropout", 0.0) == 0.0 and not plain_kw.get("models")  # the score: the run's M alone
    state = load_checkpoint(run / "controller")
    assert state["identity"]["dream_dropout"] == 0.5 and state["identity"]["dream_models"] == ids
    saved = yaml.safe_load((run / "controller" / "config.yaml").read_text())
    assert saved["dream_dropout"] == 0.5 and len(saved["dream_models"]) == 2
    # Same seed, same CMA-ES samples: only the ensemble's fitness dreams can change the population's fitness.
    assert read_metrics(run / "controller" / "metrics.jsonl")[0]["cmaes/mean"] != plain_fit
    same = dict(dream_dropout=0.5, dream_models=[str(tmp_path / "m2"), str(tmp_path / "m3")])
    for key, changed in (("dream_dropout", dict(dream_dropout=0.1)), ("dream_models", dict(dream_models=[]))):
        with pytest.raises(WorldModelsError, match=f"different {key}"):
            tc.run(stage_cfg(run, generations=2, eval_every=0, **{**same, **changed}))
    tc.run(stage_cfg(run, generations=2, eval_every=0, **same))
    assert load_checkpoint(run / "controller")["generation"] == 2
    # a checkpoint from before the options resumes without them
    tc.run(stage_cfg(run, generations=1, eval_every=0, fresh=True))
    state = load_checkpoint(run / "controller")
    for key in ("dream_dropout", "dream_models"):
        del state["identity"][key]
    save_checkpoint(run / "controller" / "checkpoint.pt", "controller", state)
    assert tc.run(stage_cfg(run, generations=2, eval_every=0))["generation"] == 2


def _resumes_from_a_checkpoint_without(run, key):
    """A checkpoint from before identity entry ``key`` existed resumes (as IDENTITY_DEFAULTS says it ran)."""
    from worldmodels.checkpoint import save_checkpoint

    tc.run(stage_cfg(run, generations=1, eval_every=0, fresh=True))
    state = load_checkpoint(run / "controller")
    del state["identity"][key]
    save_checkpoint(run / "controller" / "checkpoint.pt", "controller", state)
    assert tc.run(stage_cfg(run, generations=2, eval_every=0))["generation"] == 2


def test_dream_penalty_reaches_the_fitness_dreams_only_and_resumes_only_with_it(tiny_run, tmp_path, monkeypatch):
    """--dream-penalty makes the fitness dreams pessimistic (lower fitness on the same CMA-ES samples, as the
    penalty only takes away) while the mean-solution score stays plain; it is in the identity (a resume with
    another is refused, one from before it resumes at 0) and needs --where dream."""
    from worldmodels import agent, cli

    run = _copy_run(tiny_run, tmp_path)
    assert cli.parse_stage_args("train-controller", ["--dream-penalty", "3"])[1].dream_penalty == 3.0
    tc.run(stage_cfg(run, generations=1, eval_every=1, fresh=True))
    plain = read_metrics(run / "controller" / "metrics.jsonl")[0]
    factories, real_factory = [], agent.World.dream_factory

    def recording(self, *args, **kw):
        factories.append(kw)
        return real_factory(self, *args, **kw)
    monkeypatch.setattr(agent.World, "dream_factory", recording)
    tc.run(stage_cfg(run, generations=1, eval_every=1, fresh=True, dream_penalty=3.0))
    fitness_kw, plain_kw = factories
    assert fitness_kw["penalty"] == 3.0 and plain_kw.get("penalty", 0.0) == 0.0
    pess = read_metrics(run / "controller" / "metrics.jsonl")[0]
    assert pess["cmaes/best"] < plain["cmaes/best"] and pess["cmaes/mean"] < plain["cmaes/mean"]
    assert pess["eval/mean"] == plain["eval/mean"]  # the score: the plain dream, the same mean (generation 0)
    assert load_checkpoint(run / "controller")["identity"]["dream_penalty"] == 3.0
    with pytest.raises(WorldModelsError, match="different dream_penalty"):
        tc.run(stage_cfg(run, generations=2, eval_every=0, dream_penalty=1.0))
    _resumes_from_a_checkpoint_without(run, "dream_penalty")
    with pytest.raises(WorldModelsError, match="need --where dream, not real"):
        tc.run(stage_cfg(run, where="real", dream_penalty=1.0))
    with pytest.raises(WorldModelsError, match="dream_penalty must be >= 0"):
        tc.run(stage_cfg(run, dream_penalty=-1.0))


def test_dream_starts_and_reward_are_recorded_and_resume_only_with_them(tiny_run, tmp_path):
    """--dream-starts any and --dream-reward nearest reach the fitness dreams (the tiny data's only reward is 0,
    so every snapped fitness is exactly 0), are in the checkpoint's identity (a resume with others is refused),
    and a checkpoint from before them resumes with the defaults."""
    from worldmodels import cli
    from worldmodels.checkpoint import save_checkpoint

    run = _copy_run(tiny_run, tmp_path)
    _, cfg = cli.parse_stage_args("train-controller", ["--dream-starts", "any", "--dream-reward", "nearest"])
    assert (cfg.dream_starts, cfg.dream_reward) == ("any", "nearest")
    tc.run(stage_cfg(run, generations=1, eval_every=1, fresh=True, dream_starts="any", dream_reward="nearest"))
    first = read_metrics(run / "controller" / "metrics.jsonl")[0]
    assert first["cmaes/best"] == first["cmaes/worst"] == first["eval/mean"] == 0.0
    identity = load_checkpoint(run / "controller")["identity"]
    assert (identity["dream_starts"], identity["dream_reward"]) == ("any", "nearest")
    for key, changed in (("dream_starts", dict(dream_starts="first", dream_reward="nearest")),
                         ("dream_reward", dict(dream_starts="any"))):
        with pytest.raises(WorldModelsError, match=f"different {key}"):
            tc.run(stage_cfg(run, generations=2, eval_every=0, **changed))
    tc.run(stage_cfg(run, generations=1, eval_every=0, fresh=True))
    assert read_metrics(run / "controller" / "metrics.jsonl")[0]["cmaes/best"] != 0.0  # M's own rewards
    state = load_checkpoint(run / "controller")
    for key in ("dream_starts", "dream_reward"):
        del state["identity"][key]
    save_checkpoint(run / "controller" / "checkpoint.pt", "controller", state)
    assert tc.run(stage_cfg(run, generations=2, eval_every=0))["generation"] == 2
    with pytest.raises(WorldModelsError, match="dream starts must be one of"):
        tc.run(stage_cfg(run, generations=1, fresh=True, dream_starts="middle"))


def test_dream_ensemble_misuse_is_a_clear_error(tiny_run, tmp_path):
    from worldmodels.data import LATENTS, EpisodeWriter, open_latents
    from worldmodels.data.schema import RESERVED_ATTRS

    run = _copy_run(tiny_run, tmp_path)
    for where in ("real", "offline"):
        with pytest.raises(WorldModelsError, match=f"need --where dream, not {where}"):
            tc.run(stage_cfg(run, where=where, dream_dropout=0.1))
    with pytest.raises(WorldModelsError, match=r"dream_dropout must be in \[0, 1\)"):
        tc.run(stage_cfg(run, dream_dropout=1.0))
    _extra_m(run, tmp_path / "wide", seed=1, hidden=9)
    _extra_m(run, tmp_path / "doom", seed=1, env="doom-takecover")
    recorded = load_checkpoint(run / "mdrnn")["config"]["latents"]
    with open_latents(recorded) as src:  # the same episodes, encoded by another V
        attrs = {k: v for k, v in src.attrs.items() if k not in RESERVED_ATTRS}
        with EpisodeWriter(tmp_path / "other.h5", LATENTS, {**attrs, "vae_id": "another"}) as writer:
            writer.append(src.episode(0), seed=0)
    _extra_m(run, tmp_path / "other", seed=1, latents=str(tmp_path / "other.h5"))
    for folder, why in (("wide", "sizes"), ("doom", "models doom-takecover"), ("other", "another V")):
        with pytest.raises(WorldModelsError, match=f"--dream-models .*{folder}: .*{why}"):
            tc.run(stage_cfg(run, dream_models=[str(tmp_path / folder)], fresh=True))


def test_dream_return_cap_reaches_the_fitness_and_score_dreams_and_resumes_only_with_it(tiny_run, tmp_path,
                                                                                       monkeypatch):
    """--dream-return-cap ends every dream (fitness and the mean-solution score) at the cap: no fitness or score
    exceeds it where the plain dream's did; it is in the identity (a resume with another is refused, one from
    before it resumes without a cap) and needs --where dream."""
    from worldmodels import agent, cli

    run = _copy_run(tiny_run, tmp_path)
    assert cli.parse_stage_args("train-controller", ["--dream-return-cap", "9"])[1].dream_return_cap == 9.0
    tc.run(stage_cfg(run, generations=1, eval_every=1, fresh=True))
    plain = read_metrics(run / "controller" / "metrics.jsonl")[0]
    cap = (plain["cmaes/best"] + plain["cmaes/worst"]) / 2  # the best candidates' dreams pass it, the worst's not
    factories, real_factory = [], agent.World.dream_factory

    def recording(self, *args, **kw):
        factories.append(kw)
        return real_factory(self, *args, **kw)
    monkeypatch.setattr(agent.World, "dream_factory", recording)
    tc.run(stage_cfg(run, generations=1, eval_every=1, fresh=True, dream_return_cap=cap))
    assert [kw["return_cap"] for kw in factories] == [cap]  # no variation: the score dreams are the fitness's
    capped = read_metrics(run / "controller" / "metrics.jsonl")[0]
    top = cap + 1e-6 * abs(cap)  # the dream's float32 return, at the cap
    assert capped["cmaes/best"] <= top and cap < plain["cmaes/best"] and capped["cmaes/worst"] == plain["cmaes/worst"]
    assert capped["eval/mean"] <= min(plain["eval/mean"], top)
    assert load_checkpoint(run / "controller")["identity"]["dream_return_cap"] == cap
    with pytest.raises(WorldModelsError, match="different dream_return_cap"):
        tc.run(stage_cfg(run, generations=2, eval_every=0, dream_return_cap=cap + 1))
    _resumes_from_a_checkpoint_without(run, "dream_return_cap")
    with pytest.raises(WorldModelsError, match="need --where dream, not real"):
        tc.run(stage_cfg(run, where="real", dream_return_cap=5.0))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(WorldModelsError, match="dream_return_cap must be a positive number"):
            tc.run(stage_cfg(run, dream_return_cap=bad))


def test_dream_common_plays_every_candidate_in_the_same_dreams_and_resumes_only_with_it(tiny_run, tmp_path,
                                                                                        monkeypatch):
    """--dream-common gives candidate p's rollout r the random stream r (not p * R + r): equal candidates get equal
    fitness (they differ without it), each candidate's fitness is its mean over the same R single dreams, the
    mean-solution score still dreams eval_episodes distinct episodes; it is in the identity (a resume with the
    other is refused, one from before it resumes without) and needs --where dream."""
    from worldmodels import agent, cli
    from worldmodels.agent import load_world
    from worldmodels.dream import DreamEnv

    world = load_world(tiny_run, "zh", "cpu")
    P, R = 3, 2
    same = np.repeat(np.random.default_rng(0).normal(0, 0.5, (1, world.n_params)), P, axis=0)
    common = world.dream_returns(world.dream_factory(1.15, 8, 0, streams=R)(P * R), same, R, seed=5)
    own = world.dream_returns(world.dream_factory(1.15, 8, 0)(P * R), same, R, seed=5)
    assert np.allclose(common, common[:1]) and np.abs(common[:, 0] - common[:, 1]).max() > 0.05
    assert np.ptp(own, axis=0).min() > 0.05  # without: the same candidate dreams other episodes

    assert cli.parse_stage_args("train-controller", ["--dream-common"])[1].dream_common is True
    seen = record_fitness(monkeypatch)
    factories, real_factory = [], agent.World.dream_factory

    def recording(self, *args, **kw):
        factories.append(kw)
        return real_factory(self, *args, **kw)
    monkeypatch.setattr(agent.World, "dream_factory", recording)
    run = _copy_run(tiny_run, tmp_path)
    cfg = stage_cfg(run, generations=1, eval_every=1, eval_episodes=4, fresh=True, dream_common=True)
    tc.run(cfg)
    assert [kw.get("streams") for kw in factories] == [cfg.rollouts, None]  # the score dreams stay distinct
    [(solutions, gen, returns)] = seen
    initial = world.initial_latents()

    def single(params, stream):
        dream = DreamEnv(world.vae, world.mdrnn, initial, cfg.temperature, 1, "cpu", cfg.max_steps,
                         reward="predicted", obs_mode="zh", seed=cfg.seed, stream_ids=[stream])
        return world.dream_returns(dream, params[None], 1, seed=tc.dream_seed(cfg.seed, gen, 0))[0, 0]
    expected = np.array([[single(sol, r) for r in range(cfg.rollouts)] for sol in solutions])
    assert np.allclose(np.asarray(returns).reshape(expected.shape), expected, atol=1e-4)
    assert load_checkpoint(run / "controller")["identity"]["dream_common"] is True
    with pytest.raises(WorldModelsError, match="different dream_common"):
        tc.run(stage_cfg(run, generations=2, eval_every=0))
    _resumes_from_a_checkpoint_without(run, "dream_common")
    with pytest.raises(WorldModelsError, match="need --where dream, not real"):
        tc.run(stage_cfg(run, where="real", dream_common=True))


def test_action_noise_reaches_every_dream_and_resumes_only_with_it(tiny_run, tmp_path):
    """--action-noise evolves C as the stochastic policy collect and evaluate --noise play: the fitness and score
    dreams step noisy actions (other returns on the same CMA-ES samples), it is in the identity (a resume with another
    is refused, one from before it resumes without noise), evaluate --where dream scores C with it, and it needs
    --where dream."""
    from worldmodels import cli
    from worldmodels.stages import evaluate as ev

    run = _copy_run(tiny_run, tmp_path)
    assert cli.parse_stage_args("train-controller", ["--action-noise", "0.1"])[1].action_noise == 0.1
    tc.run(stage_cfg(run, generations=1, eval_every=1, fresh=True))
    plain = read_metrics(run / "controller" / "metrics.jsonl")[0]
    tc.run(stage_cfg(run, generations=1, eval_every=1, fresh=True, action_noise=0.5))
    noisy = read_metrics(run / "controller" / "metrics.jsonl")[0]
    assert noisy["cmaes/mean"] != plain["cmaes/mean"] and noisy["eval/mean"] != plain["eval/mean"]
    assert load_checkpoint(run / "controller")["identity"]["action_noise"] == 0.5
    scored = ev.run(ev.Config(run=str(run), where="dream", episodes=4))
    assert scored["action_noise"] == 0.5
    with pytest.raises(WorldModelsError, match="different action_noise"):
        tc.run(stage_cfg(run, generations=2, eval_every=0, action_noise=0.2))
    _resumes_from_a_checkpoint_without(run, "action_noise")
    with pytest.raises(WorldModelsError, match="--action-noise .* needs --where dream, not real"):
        tc.run(stage_cfg(run, where="real", action_noise=0.1))
    for bad in (-0.1, float("nan")):
        with pytest.raises(WorldModelsError, match="--action-noise must be >= 0"):
            tc.run(stage_cfg(run, action_noise=bad, fresh=True))
