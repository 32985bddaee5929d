"""The trained models that results ship (results/<name>/{vae,mdrnn,controller}): they load, match the
controller's recorded V and M, and play real steps. No scoring here: `worldmodels evaluate --run <folder>`
reproduces a folder's eval-test/returns.csv (docs in README, "Use a trained model")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worldmodels.checkpoint import load_checkpoint

RESULTS = Path(__file__).resolve().parents[1] / "results"
SHIPPED = sorted(p.parent.parent for p in RESULTS.rglob("controller/checkpoint.pt")
                 if (p.parent.parent / "vae").exists() and (p.parent.parent / "mdrnn").exists())


def test_there_is_a_shipped_model():
    assert SHIPPED, "results/ ships no trained model"


@pytest.mark.parametrize("run", SHIPPED, ids=[str(p.relative_to(RESULTS)) for p in SHIPPED])
def test_shipped_model_loads_matches_and_plays(run):
    from worldmodels.agent import load_world
    from worldmodels.envs import episode_seed, make_batch
    from worldmodels.play import BatchAgent
    from worldmodels.stages.evaluate import controller_params

    state = load_checkpoint(run / "controller", kind="controller")
    identity = state["identity"]
    world = load_world(run, identity["obs_mode"])  # no latents or rollouts on this machine: M's record suffices
    assert (world.vae_id, world.mdrnn_id, world.input_dim) == (identity["vae_id"], identity["mdrnn_id"],
                                                                identity["input_dim"])
    assert not any(k in state for k in ("es", "np_rng")), "ship slim checkpoints (results/ship.py)"
    params, _ = controller_params(state, "auto")
    agent = BatchAgent(world.vae, world.mdrnn, world.action_map, world.obs_mode, world.input_dim)
    results = agent.play(make_batch(world.env), np.stack([params, params]),
                         [episode_seed(0, i, "eval") for i in range(2)], max_steps=5)
    assert [r["length"] for r in results] == [5, 5] and all(np.isfinite(r["return"]) for r in results)
    assert (run / "eval-test" / "returns.csv").is_file() and (run / "eval-test" / "summary.json").is_file()


RECORD = {"vae": ("config.yaml", "metrics.jsonl", "reconstructions.png"),
          "mdrnn": ("config.yaml", "metrics.jsonl", "dream_vs_real.png"),
          "controller": ("config.yaml", "metrics.jsonl", "learning_curve.png")}


@pytest.mark.parametrize("run", SHIPPED, ids=[str(p.relative_to(RESULTS)) for p in SHIPPED])
def test_shipped_model_carries_its_record_and_report(run):
    """Each stage's config, metrics and figures ship with it, and the folder's committed report.md shows them:
    every link it holds resolves, and no V, M or C figure is listed as missing."""
    import re

    for part, names in RECORD.items():
        for name in names:
            assert (run / part / name).is_file(), f"{run / part / name} (ship with results/ship.py slim)"
    text = (run / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    # an iterate round's M ships as a record without its 2 MB GIF (results/ship.py iterate): its picture shows
    round_m = (run / "mdrnn").is_symlink() and "iterate/round-" in str((run / "mdrnn").readlink())
    assert any(link.endswith("dream_vs_real.png" if round_m else "dream_vs_real.gif") for link in links)
    assert all((run / link).is_file() for link in links), [link for link in links if not (run / link).is_file()]
    missing = re.findall(r"missing: `((?:vae|mdrnn|controller)/[^`]+)`", text)
    assert missing == (["mdrnn/dream_vs_real.gif"] if round_m else []), missing


def test_half_shipping_loads_float32_models_with_rounded_weights(tmp_path):
    """results/ship.py slim --half: V and M stored as float16 load into float32 models whose weights are the
    originals rounded to float16, with the training run's id kept."""
    import importlib.util

    import torch
    from test_controller import make_tiny_run
    from worldmodels.models.mdrnn import load_mdrnn
    from worldmodels.models.vae import load_vae

    spec = importlib.util.spec_from_file_location("ship", RESULTS / "ship.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    run = make_tiny_run(tmp_path)
    for part in ("vae", "mdrnn"):  # a stage's record, which ships with it
        (run / part / "config.yaml").write_text(f"{part}: 1\n")
    for part, load in (("vae", load_vae), ("mdrnn", load_mdrnn)):
        ship.slim(str(run / part), str(tmp_path / "half" / part), half=True)
        full, half = load(run / part), load(tmp_path / "half" / part)
        assert half.checkpoint_id == full.checkpoint_id
        assert (tmp_path / "half" / part / "config.yaml").read_text() == (run / part / "config.yaml").read_text()
        assert (tmp_path / "half" / part / "checkpoint.pt").stat().st_size < (run / part / "checkpoint.pt").stat().st_size
        for (name, a), b in zip(full.state_dict().items(), half.state_dict().values()):
            assert b.dtype == torch.float32, name
            torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0)


def test_starts_file_holds_every_episodes_first_frame(tmp_path):
    """results/ship.py starts: a valid latents file of one-frame episodes, the source's first frames, repacked."""
    import importlib.util

    from test_controller import make_tiny_run
    from worldmodels.data import open_latents

    spec = importlib.util.spec_from_file_location("ship", RESULTS / "ship.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    make_tiny_run(tmp_path)
    src = tmp_path / "latents.h5"
    ship.starts(str(src), str(tmp_path / "starts.h5"))
    with open_latents(src) as a, open_latents(tmp_path / "starts.h5") as b:
        assert b.n_episodes == b.n_frames == a.n_episodes and b.attrs["env"] == a.attrs["env"]
        np.testing.assert_array_equal(b.read("mu", 0, b.n_frames), a.take("mu", np.asarray(a.episodes["start"])))
        np.testing.assert_array_equal(b.episodes["seed"], a.episodes["seed"])
    assert not (tmp_path / "starts.unpacked.h5").exists()
