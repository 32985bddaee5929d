"""`worldmodels collect`: policies, episode semantics, determinism across workers, kill -9 resume, errors."""

import os
import random
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest

from worldmodels import cli
from worldmodels.data import ROLLOUTS, EpisodeWriter, open_rollouts
from worldmodels.errors import WorldModelsError
from worldmodels.policies import BROWNIAN_DT, MAX_HOLD, make_policy, resolve_policy
from worldmodels.stages import collect

BOX = {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}
DISCRETE = {"type": "discrete", "n": 5}


def test_policies_follow_their_definitions():
    rng = np.random.default_rng(0)
    brownian = make_policy("brownian", BOX, rng)
    brownian.reset()
    a = np.array([brownian.act() for _ in range(4000)])  # (T, 3)
    assert a.dtype == np.float32 and (a >= [-1, 0, 0]).all() and (a <= 1).all()
    steps = np.diff(a, axis=0)
    inside = ((a[:-1] > [-0.8, 0.2, 0.2]) & (a[:-1] < 0.8)).all(axis=1)  # far from the clip: pure Gaussian steps
    assert abs(steps[inside].std() / np.sqrt(BROWNIAN_DT) - 1) < 0.1
    repeat = make_policy("repeat", DISCRETE, np.random.default_rng(1))
    repeat.reset()
    assert set(repeat.act() for _ in range(300)) == set(range(5))
    repeat = make_policy("repeat", BOX, np.random.default_rng(1))  # Box: consecutive holds never tie
    repeat.reset()
    acts = np.array([repeat.act()[0] for _ in range(3000)])
    holds = np.diff(np.flatnonzero(np.r_[True, np.diff(acts) != 0]))  # lengths of the finished holds
    assert holds.min() == 1 and holds.max() == MAX_HOLD and abs(holds.mean() - (1 + MAX_HOLD) / 2) < 0.4
    random_acts = [make_policy("random", DISCRETE, np.random.default_rng(2)).act() for _ in range(1)]
    assert random_acts[0] in range(5)
    again = make_policy("brownian", BOX, np.random.default_rng(0))
    again.reset()
    assert np.array_equal([again.act() for _ in range(4000)], a)  # fixed by the generator alone
    assert resolve_policy("auto", BOX) == "brownian" and resolve_policy("auto", DISCRETE) == "repeat"
    with pytest.raises(WorldModelsError, match="needs continuous"):
        resolve_policy("brownian", DISCRETE)


class CountingEnv(gym.Env):
    """Frame t is filled with t; reward = 10 t + action; terminates after 7 steps."""

    observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    action_space = gym.spaces.Discrete(5)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {"level": 42}

    def _frame(self):
        return np.full((64, 64, 3), self.t, np.uint8)

    def step(self, action):
        reward = 10 * self.t + int(action)
        self.t += 1
        return self._frame(), float(reward), self.t == 7, False, {}


@pytest.mark.parametrize("max_steps", [None, 4])
def test_rollout_aligns_obs_action_reward(max_steps):
    ep = collect.rollout(CountingEnv(), "repeat", DISCRETE, max_steps, seed=5)
    arrays = ep["arrays"]
    n = 7 if max_steps is None else max_steps
    assert ep["level"] == 42 and len(arrays["obs"]) == n
    np.testing.assert_array_equal(arrays["obs"][:, 0, 0, 0], np.arange(n))  # obs[t]: seen before action[t]
    np.testing.assert_array_equal(arrays["reward"], 10 * np.arange(n) + arrays["action"])  # reward[t] follows it
    assert arrays["terminated"].tolist() == [False] * (n - 1) + [max_steps is None]
    assert arrays["truncated"].tolist() == [False] * (n - 1) + [max_steps is not None]
    again = collect.rollout(CountingEnv(), "repeat", DISCRETE, max_steps, seed=5)["arrays"]
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)


def contents(path):
    with open_rollouts(path) as f:
        return f.episodes.copy(), {k: f.read(k, 0, f.n_frames) for k in f.fields}, f.attrs


def assert_same_file(a, b):
    (table_a, data_a, attrs_a), (table_b, data_b, attrs_b) = contents(a), contents(b)
    assert np.array_equal(table_a, table_b) and attrs_a == attrs_b
    for key in data_a:
        np.testing.assert_array_equal(data_a[key], data_b[key], err_msg=key)


def test_same_seed_same_file_for_any_worker_count(tmp_path):
    runs = {}
    for workers in (1, 2):
        cfg = collect.Config(env="carracing", episodes=3, workers=workers, seed=7, max_steps=20,
                             out=str(tmp_path / f"w{workers}.h5"))
        runs[workers] = collect.run(cfg)
    assert runs[1]["episodes"] == runs[2]["episodes"] == 3 and runs[1]["frames"] == 60
    assert_same_file(tmp_path / "w1.h5", tmp_path / "w2.h5")
    _, data, attrs = contents(tmp_path / "w1.h5")
    assert attrs["policy"] == "brownian" and attrs["max_steps"] == 20 and data["action"].shape == (60, 3)
    assert data["obs"].std() > 10  # real frames, not a blank screen
    # a rerun of the finished command is a no-op, and a different request is refused
    assert collect.run(cfg)["new_episodes"] == 0
    with pytest.raises(WorldModelsError, match="holds other data"):
        collect.run(collect.Config(env="carracing", episodes=3, workers=0, seed=8, max_steps=20, out=cfg.out))


def test_kill_9_then_rerun_completes_identically(tmp_path):
    path, n = tmp_path / "r.h5", 300  # a kill lands 0.0-0.15 s after an episode: mid-run at ~150 episodes/s
    args = ["--env", "procgen:coinrun", "--episodes", str(n), "--max-steps", "20", "--seed", "3", "--out", str(path)]
    rng = random.Random(1)
    counts = []
    for workers in ("1", "0"):  # killed with workers, then killed again while resuming without
        proc = subprocess.Popen([sys.executable, "-m", "worldmodels", "collect", *args, "--workers", workers],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:  # wait for this run's first new episode
            try:
                with open_rollouts(path) as f:
                    if f.n_episodes > (counts[-1] if counts else 0):
                        break
            except WorldModelsError:
                pass
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.15))
        proc.send_signal(signal.SIGKILL)  # the collector itself, as `kill -9 <pid>` would
        proc.wait()
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL) if _group_alive(proc.pid) else None  # its orphaned workers, if any
        with open_rollouts(path) as f:  # opens, validates, and holds only whole episodes
            counts.append(f.n_episodes)
            assert (f.episodes["length"] == 20).all() and f.n_frames == 20 * f.n_episodes
    print("committed after each kill:", counts)
    assert 0 < counts[0] <= counts[-1] < n, counts
    done = subprocess.run([sys.executable, "-m", "worldmodels", "collect", *args, "--workers", "2"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = collect.run(collect.Config(env="procgen:coinrun", episodes=n, workers=0, seed=3, max_steps=20,
                                           out=str(tmp_path / "ref.h5")))
    assert reference["episodes"] == n
    assert_same_file(path, tmp_path / "ref.h5")


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def cli_error(capsys, *argv):
    code = cli.main(["collect", *argv])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "x.h5"), "--workers", "0"]
    assert "unknown env 'pong'" in cli_error(capsys, "--env", "pong", *out)
    assert "--episodes must be at least 1" in cli_error(capsys, "--episodes", "-3", *out)
    assert "--workers must be 0 or more" in cli_error(capsys, "--workers", "-1", "--out", str(tmp_path / "x.h5"))
    assert "expected int" in cli_error(capsys, "--episodes", "many", *out)
    (tmp_path / "c.yaml").write_text("collect: {episodez: 3}\n")
    assert "unknown key episodez" in cli_error(capsys, "--config", str(tmp_path / "c.yaml"), *out)
    assert "procgen" in cli_error(capsys, "--env", "procgen:coinrun", "--env-kwargs", "{bogus: 1}", *out)
    assert "needs continuous" in cli_error(capsys, "--env", "procgen:coinrun", "--policy", "brownian", *out)
    (tmp_path / "notes.h5").write_text("precious")
    assert "not an HDF5 file" in cli_error(capsys, "--env", "procgen:coinrun", "--out", str(tmp_path / "notes.h5"))
    assert (tmp_path / "notes.h5").read_text() == "precious"
    busy = tmp_path / "busy.h5"
    attrs = dict(env="procgen:coinrun", env_kwargs={}, action_space={"type": "discrete", "n": 15},
                 policy="repeat", seed=0, max_steps=None)
    with EpisodeWriter(busy, ROLLOUTS, attrs):
        assert "already being written" in cli_error(capsys, "--env", "procgen:coinrun", "--out", str(busy))
    assert not list(tmp_path.glob("x.h5"))


def test_entry_point_reports_errors_with_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "worldmodels", "collect", "--env", "nope", "--out",
                           str(tmp_path / "x.h5")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "known envs" in proc.stderr


def test_ray_backend_writes_the_same_file_as_local(tmp_path):
    """Issue 8: the ray backend (a private local ray instance) gives byte-identical dataset contents."""
    pytest.importorskip("ray", reason="ray is not installed (pip install worldmodels[distributed])")
    paths = {}
    for backend in ("local", "ray"):
        paths[backend] = tmp_path / f"{backend}.h5"
        summary = collect.run(collect.Config(env="procgen:coinrun", episodes=6, workers=2, seed=11, max_steps=25,
                                             out=str(paths[backend]), backend=backend))
        assert summary["episodes"] == 6
    assert_same_file(paths["local"], paths["ray"])


def test_doom_workers_leave_no_game_process_behind(tmp_path):
    # Pool workers exit through os._exit; ViZDoom's game subprocess used to outlive them, holding the
    # caller's stdout open, so a piped `worldmodels collect | tail` never returned.
    cmd = [sys.executable, "-m", "worldmodels", "collect", "--env", "doom-takecover", "--episodes", "2",
           "--workers", "2", "--max-steps", "30", "--out", str(tmp_path / "doom.h5")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=120)  # returns only when every holder of the pipe has closed it
    finally:
        proc.kill()
    assert proc.returncode == 0, out.decode()
    assert open_rollouts(tmp_path / "doom.h5").n_episodes == 2


class TimeLimitedDeath(CountingEnv):
    """Dies on the very step its time limit truncates it, as gymnasium's TimeLimit reports it: both flags."""

    def step(self, action):
        obs, reward, terminated, _, info = super().step(action)
        return obs, reward, terminated, terminated, info


def test_an_end_at_the_time_limit_is_stored_as_a_termination_only():
    arrays = collect.rollout(TimeLimitedDeath(), "repeat", DISCRETE, None, seed=5)["arrays"]
    assert arrays["terminated"][-1] and not arrays["truncated"].any()


def test_a_controller_collects_with_noise_and_resumes(tmp_path, capsys):
    """collect --controller RUN: RUN's C drives (e.g. an expert making M's data); the file records which C, and a
    rerun resumes where it stopped."""
    from test_controller import make_tiny_run, stage_cfg
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.stages import train_controller as tc

    run = make_tiny_run(tmp_path / "expert")
    tc.run(stage_cfg(run, generations=1, eval_every=0))
    out = tmp_path / "expert.h5"
    args = ["collect", "--controller", str(run), "--max-steps", "6", "--workers", "0", "--env-backend", "reference",
            "--out", str(out), "--env-batch", "1"]
    assert cli.main(args + ["--episodes", "1"]) == 0
    assert cli.main(args + ["--episodes", "2"]) == 0  # resumes: plays the second episode only
    assert "1 new, driven by controller" in capsys.readouterr().out
    with open_rollouts(out) as f:
        assert f.n_episodes == 2 and f.attrs["policy"] == "controller+noise" and f.attrs["noise"] == 0.1
        assert f.attrs["controller_id"] == load_checkpoint(run / "controller")["id"]
        episodes = [f.episode(i) for i in range(2)]
    assert all(len(e["obs"]) == 6 for e in episodes) and not np.array_equal(episodes[0]["obs"], episodes[1]["obs"])
    for e in episodes:
        assert (e["action"] >= [-1, 0, 0]).all() and (e["action"] <= 1).all()
    for bad, message in ((["--env", "procgen:coinrun"], "plays carracing, not --env procgen:coinrun"),
                         (["--policy", "random"], "both choose the actions"),
                         (["--controller", str(tmp_path)], "has no vae/checkpoint.pt")):
        assert cli.main(args + ["--episodes", "3", "--fresh"] + bad) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert cli.main(["collect", "--env", "carracing", "--episodes", "1", "--param-noise", "0.1",
                     "--out", str(tmp_path / "random.h5")]) == 1
    assert "--param-noise perturbs a controller's parameters; it needs --controller" in capsys.readouterr().err
    with open_rollouts(out) as f:  # a refused command never touched the file
        assert f.n_episodes == 2
