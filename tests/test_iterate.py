"""worldmodels iterate: rounds of real collection with C plus noise, M (and V) refit, C warm-started in the dream."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from worldmodels import cli
from worldmodels import config as cfgmod
from worldmodels.checkpoint import load_checkpoint
from worldmodels.data import open_latents, open_rollouts
from worldmodels.envs import seed_range
from worldmodels.errors import WorldModelsError
from worldmodels.stages import iterate

# No V refit in the main run (its ratio is measured and recorded all the same); the refit has its own test.
ARGS = ["--preset", "smoke", "--rounds", "2", "--vae-refit-ratio", "1000", "--env-backend", "reference"]


@pytest.fixture(scope="module")
def base_run(carracing_smoke_run) -> Path:
    """The session's smoke pipeline run (read only: each test iterates on a copy)."""
    return carracing_smoke_run


def _copy(base_run: Path, tmp: Path) -> Path:
    """A copy of the base run (its data files stay where they are: the copy's M points at them)."""
    run = tmp / "run"
    shutil.copytree(base_run, run)
    return run


def _iterate(run: Path, *extra: str) -> dict:
    module, cfg = cli.parse_stage_args("iterate", ARGS + ["--run", str(run), *extra])
    return module.run(cfg)


@pytest.fixture(scope="module")
def iterated(base_run, tmp_path_factory) -> Path:
    """Two rounds, the second continued with --noise 0.2, --eval-noise 0.3, --param-noise 0.5, --dream-penalty 2, --dream-dropout 0.3,
    --dream-return-cap 50, --dream-common, --dream-starts any, --temperature 1.3, --mdrnn-recent-share 0.5 from 3 rounds and
    --mdrnn-low-return-share 0.25 under 0 (settings that may change between rounds)."""
    run = _copy(base_run, tmp_path_factory.mktemp("iterated"))
    _iterate(run, "--rounds", "1")
    _iterate(run, "--noise", "0.2", "--eval-noise", "0.3", "--param-noise", "0.5", "--dream-penalty", "2", "--dream-dropout", "0.3", "--dream-return-cap", "50",
             "--dream-common", "--dream-starts", "any", "--temperature", "1.3", "--mdrnn-recent-share", "0.5", "--mdrnn-recent-rounds", "3",
             "--mdrnn-low-return-share", "0.25", "--mdrnn-low-return", "0")
    return run


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "iterate" / "rounds.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_rounds_grow_the_data_by_exactly_what_they_collect(iterated, base_run):
    rows = _rows(iterated)
    assert [int(r["round"]) for r in rows] == [1, 2]
    with open_rollouts(base_run / "rollouts.h5") as f:
        frames, episodes, original_seeds = f.n_frames, f.n_episodes, set(f.episodes["seed"].tolist())
    controllers = [load_checkpoint(base_run / "controller")["id"], rows[0]["controller_id"]]
    seen = set(original_seeds)
    for r, row in enumerate(rows, 1):
        with open_rollouts(iterated / "iterate" / f"round-{r}" / "rollouts.h5") as f:
            assert f.attrs["round"] == r and f.attrs["policy"] == "controller+noise"
            assert f.attrs["noise"] == float(row["noise"]) == (0.1, 0.2)[r - 1]  # each round at its own
            assert f.attrs["controller_id"] == controllers[r - 1]  # played by the last round's C
            frames, episodes = frames + f.n_frames, episodes + f.n_episodes
            seeds = set(f.episodes["seed"].tolist())
        low, high = seed_range("collect")
        assert f.n_episodes == 2 and all(low <= s < high for s in seeds) and not seeds & seen  # fresh seeds
        seen |= seeds
        assert int(row["real_frames"]) == frames and int(row["real_episodes"]) == episodes
        assert row["vae_refit"] == "False" and float(row["vae_recon_ratio"]) > 0  # measured either way
        assert (iterated / "iterate" / f"round-{r}" / "vae").is_symlink()
        for key in ("dream_score", "real_mean", "mdrnn_val_loss", "seconds_collect", "seconds_evaluate"):
            assert np.isfinite(float(row[key]))
        assert int(row["real_n"]) == 2
    # round 2 was also scored as the noisy policy, on the same reference episodes; round 1 only as C
    assert [r["eval_noise"] for r in rows] == ["", "0.3"] and rows[0]["real_noisy_mean"] == ""
    noisy = json.loads((iterated / "iterate" / "round-2" / "eval-test-noise0.3" / "summary.json").read_text())
    assert noisy["noise"] == 0.3 and noisy["mean"] == float(rows[1]["real_noisy_mean"]) and noisy["episodes"] == 2
    assert noisy["env_backend"] == "reference" and not (iterated / "iterate" / "round-1" / "eval-test-noise0.3").exists()
    with open_rollouts(base_run / "rollouts.h5") as f:  # the original data is never touched
        assert set(f.episodes["seed"].tolist()) == original_seeds
    assert (iterated / "iterate" / "rounds.png").stat().st_size > 1000  # drawn by iterate, not only by report
    report = cli.load_stage("report").run(cli.load_stage("report").Config(run=str(iterated)))
    text = Path(report["path"]).read_text()
    assert "## Rounds" in text and f"| 2 | {rows[1]['real_episodes']} | {rows[1]['real_frames']} |" in text
    assert "iterate/rounds.png" in report["figures"] and "rounds.png)" in text
    base_tau = load_checkpoint(base_run / "controller")["config"]["temperature"]
    assert ("| action noise | parameter noise | dream τ | dream penalty | dream dropout | dream return cap | common dreams "
            "| dream starts | dream score |" in text)
    assert "| 0.2 | 0.5 | 1.3 | 2 | 0.3 | 50 | yes | any |" in text
    assert f"| 0.1 | 0 | {base_tau:g} | 0 | 0 | none | no | first |" in text
    assert "| real score with action noise (σ) |" in text and " (0.3) |" in text and text.count(" | — |") == 1
    base_dropout = float(load_checkpoint(base_run / "controller")["config"].get("dream_dropout") or 0.0)
    assert [float(r["dream_dropout"]) for r in rows] == [base_dropout, 0.3]  # round 1: the run's C's
    assert [r["dream_return_cap"] for r in rows] == ["", "50.0"]  # round 1: the run's C's, no cap
    assert [r["dream_common"] for r in rows] == ["False", "True"]
    assert [r["dream_starts"] for r in rows] == ["first", "any"]
    assert [float(r["temperature"]) for r in rows] == [base_tau, 1.3] and base_tau != 1.3
    for r, dropout, cap, tau in ((1, base_dropout, None, base_tau), (2, 0.3, 50.0, 1.3)):  # each round's C was
        ctl = load_checkpoint(iterated / "iterate" / f"round-{r}" / "controller")  # evolved in the dream it records
        assert ctl["config"]["dream_dropout"] == dropout and ctl["config"]["dream_return_cap"] == cap
        assert ctl["config"]["temperature"] == tau
        assert ctl["identity"]["dream_return_cap"] == cap and ctl["identity"]["dream_common"] == (r == 2)
        own = str(iterated / "iterate" / f"round-{r}" / "latents.h5")  # round 2 dreamt from its own episodes
        assert (ctl["config"]["dream_starts"], ctl["config"]["latents"]) == (("any", own) if r == 2 else ("first", None))


def test_m_and_c_are_warm_started_from_the_last_round(iterated, base_run):
    base_m = load_checkpoint(base_run / "mdrnn")
    m1, m2 = (load_checkpoint(iterated / "iterate" / f"round-{r}" / "mdrnn") for r in (1, 2))
    assert m1["init"]["id"] == base_m["id"] and m2["init"]["id"] == m1["id"]
    assert any(not torch.equal(m1["model"][k], m2["model"][k]) for k in m1["model"])
    files = [f["path"] for f in m2["data"]["files"]]
    assert files[0] == base_m["data"]["path"] and len(files) == 3  # the original latents and every round's
    # each file keeps its own validation split: the episodes held out before stay held out
    n_original, n_round1 = base_m["data"]["n_episodes"], m1["data"]["files"][1]["n_episodes"]
    assert [e for e in m2["data"]["val_episodes"] if e < n_original] == base_m["data"]["val_episodes"]
    assert [e for e in m2["data"]["val_episodes"] if e < n_original + n_round1] == m1["data"]["val_episodes"]
    c2 = load_checkpoint(iterated / "iterate" / "round-2" / "controller")
    assert c2["config"]["init"] == str((iterated / "iterate" / "round-1" / "controller").resolve())
    assert c2["config"]["where"] == "dream" and c2["identity"]["mdrnn_id"] == m2["id"]


def test_rerun_does_no_new_work_and_a_changed_setting_is_refused(iterated, capsys):
    def state():
        out = []
        for r in (1, 2):
            folder = iterated / "iterate" / f"round-{r}"
            with open_rollouts(folder / "rollouts.h5") as f:
                out.append((f.n_episodes, (folder / "rollouts.h5").stat().st_mtime_ns,
                            load_checkpoint(folder / "mdrnn")["id"], load_checkpoint(folder / "controller")["id"],
                            (folder / "controller" / "checkpoint.pt").stat().st_mtime_ns))
        return out

    before, rows = state(), _rows(iterated)
    capsys.readouterr()
    _iterate(iterated)
    assert state() == before and _rows(iterated) == rows
    assert capsys.readouterr().out.count("finished before, kept") == 2
    assert cli.main(["iterate", *ARGS, "--run", str(iterated), "--episodes", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "episodes=2, not 3" in err and "--noise" in err  # may change
    assert cli.main(["iterate", *ARGS, "--run", str(iterated), "--dream-dropout", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dream_dropout must be in [0, 1), got 1.0" in err
    assert cli.main(["iterate", *ARGS, "--run", str(iterated), "--dream-return-cap", "-5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dream_return_cap must be a positive cap or 0 (none), got -5.0" in err
    assert state() == before


def test_rounds_moved_without_their_data_are_played_again_and_continue(base_run, iterated, tmp_path, capsys):
    """Rounds shipped to another machine or path (results/ship.py iterate: the records and slim checkpoints, no
    rollouts, latents or links): continuing plays each round's episodes again with the C that collected them (same
    seeds and noises, parameter noise included: the same episodes on this CPU), encodes them with the round's V, and refits the next round on
    those files. The next round may search longer and refit V at another ratio (--generations and
    --vae-refit-ratio may change on a rerun: the finished rounds keep theirs, and each round records its own)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ship", Path(__file__).resolve().parents[1] / "results" / "ship.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    moved = _copy(base_run, tmp_path)
    ship.iterate(str(iterated / "iterate"), str(moved / "iterate"))
    shipped = sorted(p.relative_to(moved) for p in (moved / "iterate").rglob("*") if p.is_file())
    assert not [p for p in shipped if p.suffix in (".h5", ".gif")] and "es" not in load_checkpoint(
        moved / "iterate" / "round-2" / "controller")
    stamp = (moved / "iterate" / "round-2" / "mdrnn" / "checkpoint.pt").stat().st_mtime_ns
    ship.iterate(str(iterated / "iterate"), str(moved / "iterate"))  # shipped again: unchanged checkpoints stay
    assert (moved / "iterate" / "round-2" / "mdrnn" / "checkpoint.pt").stat().st_mtime_ns == stamp
    first = {}
    for r in (1, 2):
        folder = iterated / "iterate" / f"round-{r}"
        with open_rollouts(folder / "rollouts.h5") as f, open_latents(folder / "latents.h5") as z:
            first[r] = (f.episodes["seed"].tolist(), np.asarray(f.take("action", np.arange(f.n_frames))),
                        np.asarray(z.take("mu", np.arange(z.n_frames))))
    # a lost round can only be played again by the C that played it
    path = moved / "iterate" / "round-1" / "round.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "stages": {**record["stages"], "collect": {
        **record["stages"]["collect"], "controller_id": "0" * 32}}}))
    capsys.readouterr()
    assert cli.main(["iterate", *ARGS, "--run", str(moved), "--rounds", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be played again" in err
    # a round recorded before its noise was: it ran at the iteration's noise, which could not change then
    del record["stages"]["collect"]["noise"]
    path.write_text(json.dumps(record))
    config = moved / "iterate" / "config.yaml"
    config.write_text(config.read_text().replace("noise: 0.2", "noise: 0.1"))

    # a restore killed in round 1's replay left the first of its episodes: the replay resumes from there
    from worldmodels.data import ROLLOUTS, EpisodeWriter
    from worldmodels.data.schema import RESERVED_ATTRS

    with open_rollouts(iterated / "iterate" / "round-1" / "rollouts.h5") as f, EpisodeWriter(
            moved / "iterate" / "round-1" / "rollouts.h5", ROLLOUTS,
            {k: v for k, v in f.attrs.items() if k not in RESERVED_ATTRS}) as part:
        part.append(f.episode(0), seed=int(f.episodes[0]["seed"]), level=int(f.episodes[0]["level"]))

    done = int(_rows(iterated)[0]["generations"])
    _iterate(moved, "--rounds", "3", "--generations", str(done + 2), "--vae-refit-ratio", "0.001")  # V refit
    out = capsys.readouterr().out
    assert out.count("are played again by") == 2 and "rollouts.h5 holds 1 of its episodes: round 1's" in out
    for r in (1, 2):
        folder = moved / "iterate" / f"round-{r}"
        with open_rollouts(folder / "rollouts.h5") as f, open_latents(folder / "latents.h5") as z:
            assert f.episodes["seed"].tolist() == first[r][0]
            # round 1's resumed batch plays its second episode alone: V's convolutions round in another order
            np.testing.assert_allclose(np.asarray(f.take("action", np.arange(f.n_frames))), first[r][1],
                                       atol=1e-5 if r == 1 else 0, rtol=0)
            np.testing.assert_allclose(np.asarray(z.take("mu", np.arange(z.n_frames))), first[r][2], atol=1e-5)
        restored = json.loads((folder / "round.json").read_text())["restored"]
        assert [(n["file"], n["frames"]) for n in restored] == [(f"round-{r}", n["frames_recorded"]) for n in restored]
    assert (moved / "iterate" / "round-2" / "vae").resolve() == (moved / "vae").resolve()
    rows = _rows(moved)
    assert [int(row["round"]) for row in rows] == [1, 2, 3] and rows[:2] == _rows(iterated)
    assert [float(r["param_noise"]) for r in rows] == [0.0, 0.5, 0.0]  # round 2 replayed at its own 0.5
    assert [float(r["noise"]) for r in rows] == [0.1, 0.2, 0.1]  # and at its own action noise
    assert [float(r["dream_penalty"]) for r in rows] == [0.0, 2.0, 0.0]  # round 3: the run's C's own (none)
    assert [int(r["generations"]) for r in rows] == [done, done, done + 2]
    assert [r["vae_refit"] for r in rows] == ["False", "False", "True"]
    record = json.loads((moved / "iterate" / "round-3" / "round.json").read_text())
    assert record["stages"]["vae"]["refit_ratio"] == 0.001
    assert load_checkpoint(moved / "iterate" / "round-3" / "controller")["generation"] == done + 2
    m3 = load_checkpoint(moved / "iterate" / "round-3" / "mdrnn")
    assert [Path(f["path"]).relative_to(moved / "iterate").as_posix() for f in m3["data"]["files"]] == [
        "round-3/latents/original.h5", "round-3/latents/round-1.h5", "round-3/latents/round-2.h5",
        "round-3/latents.h5"]

    # moved again after the V refit: the earlier files' latents are encoded again by round 3's V, where it wrote them
    again = _copy(base_run, tmp_path / "again")
    ship.iterate(str(moved / "iterate"), str(again / "iterate"))
    assert (again / "iterate" / "round-3" / "vae" / "checkpoint.pt").is_file()
    _iterate(again, "--rounds", "4")
    for name in ("original", "round-1", "round-2"):
        with open_latents(moved / "iterate" / "round-3" / "latents" / f"{name}.h5") as a, \
                open_latents(again / "iterate" / "round-3" / "latents" / f"{name}.h5") as b:
            np.testing.assert_allclose(np.asarray(b.take("mu", np.arange(b.n_frames))),
                                       np.asarray(a.take("mu", np.arange(a.n_frames))), atol=1e-5)
    m4 = load_checkpoint(again / "iterate" / "round-4" / "mdrnn")
    assert [Path(f["path"]).relative_to(again / "iterate").as_posix() for f in m4["data"]["files"]] == [
        "round-3/latents/original.h5", "round-3/latents/round-1.h5", "round-3/latents/round-2.h5",
        "round-3/latents.h5", "round-4/latents.h5"]


def test_rounds_refuse_a_base_controller_trained_further(base_run, tmp_path, capsys):
    """Round 1 was collected by the run's C: continuing that C's training (same id, more generations) and then
    iterating again would mix two iterations, so it is refused with one line."""
    from worldmodels.stages import train_controller as tc
    from worldmodels.stages.iterate import _check_base

    run = _copy(base_run, tmp_path)
    (run / "iterate").mkdir()
    _check_base(run, run / "iterate")  # what a first iterate records
    _check_base(run, run / "iterate")  # unchanged: accepted
    saved = load_checkpoint(run / "controller")["config"]
    tc.run(tc.Config(**{**saved, "run": str(run), "generations": saved["generations"] + 1, "workers": 0}))
    capsys.readouterr()
    assert cli.main(["iterate", *ARGS, "--run", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "controller changed since its rounds began" in err


def test_collected_actions_are_cs_without_noise_and_differ_with_it(base_run, tmp_path):
    from worldmodels.agent import load_world
    from worldmodels.models.controller import BatchedController, controller_input
    from worldmodels.play import BatchAgent, noise_keys
    from worldmodels.stages.evaluate import controller_params

    episodes = {}
    for noise in (0.0, 0.5):
        cfg = iterate.Config(run=str(base_run), episodes=1, noise=noise, workers=0, env_backend="reference")
        iterate.collect(cfg, 1, base_run, tmp_path / f"{noise}.h5", seed=0, max_steps=6)
        with open_rollouts(tmp_path / f"{noise}.h5") as f:
            episodes[noise] = f.episode(0)
            seed = int(f.episodes[0]["seed"])
    world = load_world(base_run, "zh")
    params, _ = controller_params(load_checkpoint(base_run / "controller"), "auto")
    agent = BatchAgent(world.vae, world.mdrnn, world.action_map, "zh", world.input_dim)
    ctrl = BatchedController(params[None], world.input_dim, world.action_map.output_dim, world.action_map.bias)
    state = (torch.zeros(1, world.hidden), torch.zeros(1, world.hidden))
    ep = episodes[0.0]
    with torch.no_grad():
        for t in range(2):  # C's own action from V's z and M's h, step by step
            z = agent.encode(ep["obs"][t:t + 1], noise_keys([seed]), torch.tensor([t]))
            action = world.action_map(ctrl(controller_input(z, state, "zh")))
            np.testing.assert_allclose(ep["action"][t], action[0].numpy(), atol=1e-5)
            _, state = world.mdrnn.step(z, action, state)
    noisy = episodes[0.5]
    np.testing.assert_array_equal(noisy["obs"][0], ep["obs"][0])  # the same seed: the same track
    assert not np.allclose(noisy["action"][0], ep["action"][0])
    assert (noisy["action"] >= [-1, 0, 0]).all() and (noisy["action"] <= 1).all()  # clipped to the action space


def test_collection_writes_the_latents_encode_would_and_catches_up_after_a_kill(base_run, tmp_path, capsys):
    """C's V encodes every frame to play it: the collection writes those posteriors as the latents file `encode`
    would write with that V (which then finds nothing to do), after episodes written to the rollouts alone (a
    kill between the two files) it encodes those first, and --fresh starts both over."""
    from worldmodels.envs import episode_seed
    from worldmodels.stages import encode
    from worldmodels.stages.collect import controller_episodes

    seeds = [episode_seed(0, 7_000 + i, "collect") for i in range(4)]
    out, lat, ref = tmp_path / "rollouts.h5", tmp_path / "latents.h5", tmp_path / "encoded.h5"
    args = dict(noise=0.1, max_steps=12, env_backend="reference", env_batch=2, workers=0, attrs={"seed": 0})
    controller_episodes(base_run, out, seeds[:3], **args)  # the rollouts alone, as a kill would leave them
    summary = controller_episodes(base_run, out, seeds, latents=lat, **args)
    assert summary["episodes"] == 4 and summary["new_episodes"] == 1
    encode.run(encode.Config(data=str(out), vae=str(base_run / "vae"), out=str(ref), device="cpu"))
    with open_latents(lat) as a, open_latents(ref) as b, open_rollouts(out) as f:
        assert a.n_episodes == b.n_episodes == 4 and a.n_frames == b.n_frames == f.n_frames
        np.testing.assert_array_equal(a.episodes, b.episodes)
        assert a.attrs == b.attrs
        frames = np.arange(f.n_frames)
        for key in ("action", "reward", "terminated", "truncated"):
            np.testing.assert_array_equal(a.take(key, frames), b.take(key, frames))
        for key in ("mu", "logvar"):  # the collection's V batches 2 frames channels-last, encode's all of them
            np.testing.assert_allclose(a.take(key, frames), b.take(key, frames), atol=1e-4)
        assert np.abs(a.take("mu", frames)).max() > 0.1
    capsys.readouterr()
    encode.run(encode.Config(data=str(out), vae=str(base_run / "vae"), out=str(lat), device="cpu"))
    assert "; 0 new)" in capsys.readouterr().out  # encode accepts the file as its own, with nothing left to do

    controller_episodes(base_run, out, seeds[:1], fresh=True, latents=lat, **args)
    with open_latents(lat) as a, open_rollouts(out) as f:
        assert a.n_episodes == f.n_episodes == 1 and a.n_frames == f.n_frames
    out.unlink()
    with pytest.raises(WorldModelsError, match="exists without"):
        controller_episodes(base_run, out, seeds, latents=lat, **args)


def test_parameter_noise_plays_each_episode_with_its_own_perturbed_c_again_on_a_rerun(base_run, tmp_path):
    """--param-noise: every episode is played by C + s * N(0, I) drawn from its own seed, so the actions differ
    from C's, between episodes' controllers, and not at all between two collections (a replay on a fresh machine);
    an iteration begun before the option existed continues (it ran at the default, 0)."""
    from worldmodels.stages.collect import perturbed

    files = {}
    for name, scale in (("plain", 0.0), ("a", 0.5), ("b", 0.5)):
        cfg = iterate.Config(run=str(base_run), episodes=2, noise=0.0, param_noise=scale, workers=0,
                             env_backend="reference")
        summary = iterate.collect(cfg, 1, base_run, tmp_path / f"{name}.h5", seed=0, max_steps=6)
        assert summary["param_noise"] == scale
        with open_rollouts(tmp_path / f"{name}.h5") as f:
            files[name] = [f.episode(i) for i in range(2)]
            seeds = [int(s) for s in f.episodes["seed"]]
            assert f.attrs.get("param_noise", 0.0) == scale
    for i in range(2):
        np.testing.assert_array_equal(files["a"][i]["action"], files["b"][i]["action"])
        np.testing.assert_array_equal(files["a"][i]["obs"][0], files["plain"][i]["obs"][0])  # the same tracks
        assert not np.allclose(files["a"][i]["action"], files["plain"][i]["action"])
    params = np.zeros(5)
    assert not np.allclose(perturbed(params, seeds[0], 0.5), perturbed(params, seeds[1], 0.5))
    np.testing.assert_array_equal(perturbed(params, seeds[0], 0.5), perturbed(params, seeds[0], 0.5))
    assert perturbed(params, seeds[0], 0.0) is params

    saved = tmp_path / "config.yaml"  # rounds begun before --param-noise: no such key recorded
    old = {k: v for k, v in cfgmod.to_dict(iterate.Config(run="r")).items() if k != "param_noise"}
    saved.write_text(yaml.safe_dump(old))
    iterate._check_config(iterate.Config(run="r"), saved)
    with pytest.raises(WorldModelsError, match="episodes=100, not 3"):
        iterate._check_config(iterate.Config(run="r", episodes=3), saved)


def test_parameter_noise_and_dream_penalty_set_later_apply_to_the_next_rounds(iterated):
    """The fixture's second round ran with --param-noise 0.5 and --dream-penalty 2 (the moved-rounds test replays it
    without the options: a replay plays a round at the noise it recorded); round 2's C was evolved in pessimistic
    dreams, round 1's in plain ones, and each round's row says so."""
    assert [float(r["param_noise"]) for r in _rows(iterated)] == [0.0, 0.5]
    assert [float(r["dream_penalty"]) for r in _rows(iterated)] == [0.0, 2.0]
    penalties = [load_checkpoint(iterated / "iterate" / f"round-{r}" / "controller")["identity"]["dream_penalty"]
                 for r in (1, 2)]
    assert penalties == [0.0, 2.0]
    # M's refit drew half of each batch from the latest rounds: both of them in round 2 (of the 3 asked for)
    assert [float(r["mdrnn_recent_share"]) for r in _rows(iterated)] == [0.0, 0.5]
    m = [load_checkpoint(iterated / "iterate" / f"round-{r}" / "mdrnn")["config"] for r in (1, 2)]
    assert [(c["recent_share"], c["recent_files"]) for c in m] == [(0.0, 1), (0.5, 2)]
    # and a quarter from the episodes returning under 0
    assert [(c["low_return_share"], c["low_return"]) for c in m] == [(0.0, None), (0.25, 0.0)]
    assert [float(r["mdrnn_low_return_share"]) for r in _rows(iterated)] == [0.0, 0.25]
    with open_rollouts(iterated / "iterate" / "round-1" / "rollouts.h5") as f:
        assert "param_noise" not in f.attrs
    with open_rollouts(iterated / "iterate" / "round-2" / "rollouts.h5") as f:
        assert f.attrs["param_noise"] == 0.5


def test_a_collector_plays_round_one_and_c_still_evolves_from_the_runs_own(base_run, tmp_path, capsys):
    """--collector: another run's C (an expert, say) makes round 1's data; the round's C is warm-started from the
    run's own C, so no real-env fitness reaches the dream-trained lineage."""
    from worldmodels.checkpoint import save_checkpoint

    expert = tmp_path / "expert"
    shutil.copytree(base_run, expert)
    state = load_checkpoint(expert / "controller")
    state.update(id="expert0", mean=state["mean"] + 0.5)
    state["best"] = {**state["best"], "params": state["best"]["params"] + 0.5}
    state["best_eval"] = {**(state.get("best_eval") or {}), "generation": -1}  # auto: the best candidate
    save_checkpoint(expert / "controller", "controller", {k: v for k, v in state.items() if k not in ("kind", "meta")})
    run = _copy(base_run, tmp_path)
    _iterate(run, "--rounds", "1", "--collector", str(expert))
    round1 = run / "iterate" / "round-1"
    with open_rollouts(round1 / "rollouts.h5") as f:
        assert f.attrs["controller_id"] == "expert0"
    assert json.loads((round1 / "round.json").read_text())["stages"]["collect"]["controller_id"] == "expert0"
    c1 = load_checkpoint(round1 / "controller")
    assert c1["config"]["init"] == str((run / "controller").resolve())
    capsys.readouterr()
    assert cli.main(["iterate", *ARGS, "--run", str(run), "--rounds", "1"]) == 1  # dropping it: another iteration
    assert "collector=" in capsys.readouterr().err
    assert cli.main(["iterate", *ARGS, "--run", str(_copy(base_run, tmp_path / "b")), "--collector",
                     str(tmp_path / "none")]) == 1
    assert "has no vae/checkpoint.pt" in capsys.readouterr().err


def test_discrete_exploration_swaps_in_random_actions():
    from worldmodels.models.controller import ActionMap
    from worldmodels.play import explore

    amap = ActionMap("argmax", 15, True, 15)
    action = torch.zeros(400, dtype=torch.long)
    rngs = [np.random.default_rng(i) for i in range(400)]
    swapped = explore(action, amap, 0.5, rngs)
    changed = (swapped != 0).float().mean().item()
    assert 0.35 < changed < 0.6 and swapped.max() < 15  # ~half swapped, 1/15 of those to 0 again
    assert torch.equal(explore(action, amap, 0.5, [np.random.default_rng(i) for i in range(400)]), swapped)


def test_init_options_refuse_mismatched_shapes(base_run, tmp_path):
    from worldmodels.stages import train_controller, train_mdrnn, train_vae

    m_cfg = load_checkpoint(base_run / "mdrnn")["config"]
    with pytest.raises(WorldModelsError, match="sizes must match"):
        train_mdrnn.run(train_mdrnn.Config(latents=m_cfg["latents"], out=str(tmp_path / "m"), hidden=5, steps=1,
                                           seq_len=4, batch_size=2, init=str(base_run / "mdrnn")))
    with pytest.raises(WorldModelsError, match="sizes must match"):
        train_vae.run(train_vae.Config(data=str(base_run / "rollouts.h5"), out=str(tmp_path / "v"), z_dim=3,
                                       init=str(base_run / "vae")))
    run = tmp_path / "c"
    run.mkdir()
    for part in ("vae", "mdrnn"):
        (run / part).symlink_to(base_run / part)
    with pytest.raises(WorldModelsError, match="same shape"):  # C on z alone has fewer inputs than on [z, h]
        train_controller.run(train_controller.Config(run=str(run), obs_mode="z", init=str(base_run / "controller"),
                                                     popsize=4, rollouts=1, generations=1, device="cpu"))


def test_vae_refit_fine_tunes_v_and_reencodes_every_file(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    _iterate(run, "--rounds", "1", "--vae-refit-ratio", "0.001", "--vae-frames", "64")
    row = _rows(run)[0]
    assert row["vae_refit"] == "True"
    folder = run / "iterate" / "round-1"
    v = load_checkpoint(folder / "vae")
    assert not (folder / "vae").is_symlink() and v["init"]["id"] == load_checkpoint(base_run / "vae")["id"]
    base_v = load_checkpoint(base_run / "vae")["data"]["files"]
    # fine-tuned on the base V's own frames and the round's, 64 frames (whole chunks) an epoch
    assert [f["path"] for f in v["data"]["files"]] == [f["path"] for f in base_v] + [
        str((folder / "rollouts.h5").resolve())]
    assert v["config"]["epoch_frames"] == 64
    m = load_checkpoint(folder / "mdrnn")
    files = [f["path"] for f in m["data"]["files"]]
    assert files == [str((folder / "latents" / "original.h5").resolve()), str((folder / "latents.h5").resolve())]
    for path in files:
        with open_latents(path) as f:
            assert f.attrs["vae_id"] == v["id"]
    with open_latents(base_run / "latents.h5") as f:  # the original latents are left as they were
        assert f.attrs["vae_id"] == load_checkpoint(base_run / "vae")["id"]


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["iterate", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--run", "--rounds", "--episodes", "--noise", "--generations", "--mdrnn-steps", "--vae-refit-ratio",
                 "--eval-episodes", "--env-backend", "--workers", "--env-batch"):
        assert flag in out
