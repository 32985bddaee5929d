"""Real environments: gymnasium API, preprocessing, seeding, ProcGen levels and episode boundaries."""

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from PIL import Image

from worldmodels import envs
from worldmodels.errors import WorldModelsError


@pytest.mark.parametrize("name", ["carracing", "doom-takecover", "procgen:coinrun", "procgen:maze"])
def test_env_checker_and_frames(name):
    env = envs.make(name)
    # Rendering in "human" mode needs a display; our ProcGen env only renders rgb_array, checked fully.
    check_env(env, skip_render_check=envs.env_family(name) != "procgen")
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    obs, info = env.reset(seed=7)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert (info["level"] == -1) == (envs.env_family(name) != "procgen")
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and isinstance(reward, float)
    assert obs.std() > 0  # a real picture, not a blank buffer
    env.close()


def test_action_spaces_are_described_as_json():
    spaces = {name: envs.make(name).action_space for name in ["carracing", "doom-takecover", "procgen:jumper"]}
    descs = {name: json.loads(json.dumps(envs.describe_action_space(s))) for name, s in spaces.items()}
    assert descs["carracing"] == {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}
    assert descs["doom-takecover"] == {"type": "discrete", "n": 3}
    assert descs["procgen:jumper"] == {"type": "discrete", "n": 15}
    assert [envs.action_dim(d) for d in descs.values()] == [3, 3, 15]
    with pytest.raises(WorldModelsError):
        envs.describe_action_space(gym.spaces.MultiBinary(4))


def bilinear_weights(n_in, n_out):
    """(n_out, n_in) weights of a triangle filter widened by the shrink factor (so every source pixel counts),
    centred on each output pixel, normalised per row, in 22-bit fixed point: bilinear shrinking as Pillow does it."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centre = (np.arange(n_out) + 0.5) * scale
    x = np.arange(n_in) + 0.5  # source pixel centres
    w = np.clip(1 - np.abs(x[None, :] - centre[:, None]) / support, 0, None)
    lo = np.floor(centre - support + 0.5)[:, None]  # the filter's window [lo, hi) of source pixels
    hi = np.floor(centre + support + 0.5)[:, None]
    w = np.where((np.arange(n_in) >= lo) & (np.arange(n_in) < hi), w, 0)
    return np.floor(0.5 + w / w.sum(1, keepdims=True) * (1 << 22)).astype(np.int64)


def shrink_bilinear(frame):
    """uint8 (H, W, 3) -> (64, 64, 3) with numpy only: the rows pass, rounded to uint8, then the columns pass."""
    wx, wy = bilinear_weights(frame.shape[1], 64), bilinear_weights(frame.shape[0], 64)
    rows = np.clip((np.einsum("ow,hwc->hoc", wx, frame.astype(np.int64)) + (1 << 21)) >> 22, 0, 255)
    return np.clip((np.einsum("oh,hwc->owc", wy, rows) + (1 << 21)) >> 22, 0, 255).astype(np.uint8)


def test_resize_matches_an_independent_bilinear_shrink_and_keeps_known_values():
    from worldmodels.envs.frames import resize_frame

    frame = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    frame[84:] = (255, 0, 255)  # a "dashboard" that the crop must drop entirely
    out = resize_frame(frame, crop_rows=84)
    np.testing.assert_array_equal(out, shrink_bilinear(frame[:84]))
    assert not (out == (255, 0, 255)).all(-1).any() and abs(out.mean() - frame[:84].mean()) < 2
    flat = np.full((84, 96, 3), (10, 200, 77), np.uint8)  # a flat colour stays exactly itself
    assert (resize_frame(flat) == (10, 200, 77)).all()
    stripes = np.zeros((64, 128, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-pixel stripes halved in width: inside, every output pixel is their average
    assert set(np.unique(resize_frame(stripes)[:, 1:-1])) == {128}


def test_carracing_frame_is_the_paper_crop_of_the_raw_frame():
    env, raw = envs.make("carracing"), gym.make("CarRacing-v3")
    obs, _ = env.reset(seed=3)
    raw_obs, _ = raw.reset(seed=3)
    for _ in range(60):  # past the zoom-in animation, with a steady action on both
        action = np.array([0.3, 0.5, 0.0], np.float32)
        obs, *_ = env.step(action)
        raw_obs, *_ = raw.step(action)
    assert raw_obs.shape == (96, 96, 3)
    np.testing.assert_array_equal(obs, shrink_bilinear(raw_obs[:84]))  # rows 0:84 (no dashboard), bilinear
    full = np.asarray(Image.fromarray(raw_obs).resize((64, 64), Image.BILINEAR))
    assert np.abs(obs.astype(int) - full).mean() > 5  # the dashboard rows really are gone
    env.close(), raw.close()


def rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    frames, rewards, levels, ends = [obs], [], [info["level"]], []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        rewards.append(r)
        if term or trunc:
            ends.append(len(rewards))
            obs, info = env.reset()
            levels.append(info["level"])
        frames.append(obs)
    return np.stack(frames), np.array(rewards), levels, ends


def test_procgen_seeding_is_reproducible_and_seeds_differ():
    env = envs.make("procgen:bigfish")  # short random episodes: boundaries are crossed too
    actions = np.random.default_rng(0).integers(0, 15, size=400)
    a = rollout(env, 11, actions)
    b = rollout(env, 11, actions)
    assert len(a[3]) >= 2, "the rollout should cross episode boundaries"
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    firsts = {}
    for seed in range(6):
        obs, info = env.reset(seed=seed)
        firsts[seed] = (info["level"], obs)
    assert len({lvl for lvl, _ in firsts.values()}) >= 4
    assert not np.array_equal(firsts[0][1], firsts[1][1])
    env.close()


def test_procgen_levels_stay_in_their_split():
    start, n = envs.procgen_levels("test", 5)
    env = envs.make("procgen:coinrun", start_level=start, num_levels=n)
    levels = {env.reset(seed=s)[1]["level"] for s in range(20)}
    assert levels <= set(range(start, start + n)) and len(levels) >= 3
    train, test = envs.procgen_levels("train", 500), envs.procgen_levels("test", 500)
    assert train == (0, 500)
    assert set(range(train[0], sum(train))).isdisjoint(range(test[0], sum(test)))
    # the largest allowed split still does not overlap
    big_train, big_test = envs.procgen_levels("train", 100_000), envs.procgen_levels("test", 100_000)
    assert sum(big_train) <= big_test[0]
    for bad in [("train", 0), ("test", 100_001), ("valid", 10)]:
        with pytest.raises(WorldModelsError):
            envs.procgen_levels(*bad)
    env.close()


def test_procgen_terminal_step_returns_the_finished_episodes_frame():
    env = envs.make("procgen:bigfish")
    obs, info = env.reset(seed=5)
    rng = np.random.default_rng(1)
    for t in range(2000):
        prev = obs
        obs, _, term, trunc, step_info = env.step(int(rng.integers(15)))
        assert step_info["level"] == info["level"]
        if term or trunc:
            break
    assert term and not trunc  # eaten by a bigger fish long before bigfish's 6000-step limit
    np.testing.assert_array_equal(obs, prev)  # not the next episode's first frame
    first, next_info = env.reset()
    assert not np.array_equal(first, obs)
    with pytest.raises(gym.error.ResetNeeded):
        env.reset(seed=5), [env.step(4) for _ in range(10_000)]  # stepping past the end is refused
    env.close()


def test_procgen_timeout_is_a_truncation():
    env = envs.make("procgen:maze")
    env.reset(seed=0)
    for t in range(1, 501):
        _, reward, term, trunc, _ = env.step(4)  # 4 = do nothing: the mouse never reaches the cheese
        if term or trunc:
            break
    assert (t, trunc, term, reward) == (500, True, False, 0.0)
    env.close()


def test_unknown_names_and_options_are_clear_errors():
    with pytest.raises(WorldModelsError) as err:
        envs.make("pong")
    assert "carracing" in str(err.value) and "procgen:coinrun" in str(err.value)
    with pytest.raises(WorldModelsError):
        envs.make("procgen:pacman")
    with pytest.raises(WorldModelsError):
        envs.make("procgen:coinrun", distribution_mode="impossible")
    with pytest.raises(WorldModelsError):
        envs.make("procgen:coinrun", num_levelz=3)
    with pytest.raises(WorldModelsError):
        envs.make("procgen:coinrun", distribution_mode="extreme")  # would abort the process in C++
    with pytest.raises(WorldModelsError):
        envs.make("carracing", not_an_option=1)
    assert len(envs.known_envs()) == 18 and envs.env_family("procgen:ninja") == "procgen"


def test_episode_seeds_are_disjoint_between_purposes():
    ranges = {p: envs.seed_range(p) for p in ("collect", "train", "eval")}
    bounds = sorted(ranges.values())
    assert all(hi <= lo for (_, hi), (lo, _) in zip(bounds, bounds[1:]))
    seen = {}
    for purpose, (lo, hi) in ranges.items():
        for seed in (0, 1, 42, 2**24 - 1):
            for index in (0, 1, 999, 2**32 - 1):
                s = envs.episode_seed(seed, index, purpose)
                assert lo <= s < hi and s not in seen
                seen[s] = (seed, index, purpose)
    assert envs.episode_seed(3, 5, "eval") == envs.episode_seed(3, 5, "eval")
    for bad in [(-1, 0, "collect"), (2**24, 0, "collect"), (0, 2**32, "train"), (0, 0, "test")]:
        with pytest.raises(WorldModelsError):
            envs.episode_seed(*bad)


def test_import_is_cheap():
    code = ("import sys, worldmodels.envs; "
            "print(sorted(m for m in ('vizdoom', 'procgen', 'gym', 'gym3', 'Box2D') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


QUIET_SCRIPT = r"""
import numpy as np, torch  # warnings filters left as a user's interpreter has them
import worldmodels
from worldmodels.envs import make, make_batch
from worldmodels.dream import DreamGymEnv, DreamVectorEnv
from worldmodels.models.mdrnn import MDRNN
from gymnasium.utils.env_checker import check_env

for name, backend in [("carracing", "reference"), ("carracing", "auto"), ("doom-takecover", "reference"),
                      ("procgen:coinrun", "reference")]:
    env = make(name, backend)
    env.reset(seed=1)
    env.step(env.action_space.sample())
    env.close()
batch = make_batch("carracing", "auto")
batch.reset([1, 2])
batch.close()
m = MDRNN(4, 3, 8)
initial = (torch.zeros(2, 4), torch.zeros(2, 4))
for mode in ("zh", "zch"):
    check_env(DreamGymEnv(None, m, initial, 1.0, "cpu", max_steps=5, obs_mode=mode), skip_render_check=True)
vec = DreamVectorEnv(None, m, initial, 3, 1.0, "cpu", max_steps=5)
vec.reset(seed=0)
vec.step(vec.action_space.sample())
import gym  # what stable-baselines3 does on import: the old-gym banner must not appear
"""


def test_importing_and_making_every_env_family_prints_nothing(tmp_path):
    import importlib.util

    script = QUIET_SCRIPT
    if importlib.util.find_spec("envpool") is None:  # auto would say, in one line, that it falls back
        script = script.replace('"auto"', '"reference"')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "" and done.stdout == ""
