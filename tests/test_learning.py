"""Slow learning checks on real CarRacing (deselected by default; run with ./run_tests.sh -m slow, 10-20 min).

They assert that the method learns, not only that it runs: V reconstructs real frames better than the mean
frame does, M predicts the next latent better than the unit Gaussian prior, and C evolved with CMA-ES in the
real env beats the random policy on unseen tracks.
"""

import json
import math

import pytest
import yaml

from worldmodels.config import preset_path
from worldmodels.data import open_rollouts
from worldmodels.metrics import read_metrics
from worldmodels.pipeline import run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("learning")
    doc = yaml.safe_load(preset_path("default").read_text())
    doc.update({
        "collect": {"episodes": 16, "max_steps": 300, "workers": 2},
        "train_vae": {"epochs": 6, "batch_size": 32, "workers": 0},
        "train_mdrnn": {"hidden": 64, "n_gaussians": 5, "seq_len": 50, "batch_size": 16, "steps": 400,
                        "eval_every": 100},
        "train_controller": {"where": "real", "popsize": 12, "rollouts": 1, "generations": 15, "max_steps": 250,
                             "eval_every": 0, "workers": 2},
        "evaluate": {"episodes": 6, "max_steps": 250, "workers": 2},
    })
    preset = tmp / "preset.yaml"
    preset.write_text(yaml.safe_dump(doc))
    run = tmp / "run"
    run_pipeline("carracing", str(preset), str(run), log=lambda *_: None)
    return run


def test_vae_reconstructs_real_frames_better_than_the_mean_frame(small_run):
    """V must carry frame-specific information: beat the best constant guess (the mean frame) by a margin."""
    import torch

    from worldmodels.models.vae import frames_to_tensor

    records = [r for r in read_metrics(small_run / "vae" / "metrics.jsonl") if "val/vae/recon" in r]
    assert len(records) == 6
    with open_rollouts(small_run / "rollouts.h5") as f:
        frames = frames_to_tensor(torch.from_numpy(f.read("obs", 0, f.n_frames)))
    mean_frame_error = ((frames - frames.mean(0)) ** 2).sum(dim=(1, 2, 3)).mean().item()
    assert records[-1]["val/vae/recon"] < 0.6 * mean_frame_error
    assert records[-1]["val/vae/recon"] < records[0]["val/vae/recon"]


def test_mdrnn_beats_the_prior(small_run):
    last = [r for r in read_metrics(small_run / "mdrnn" / "metrics.jsonl") if "val/mdrnn/nll" in r][-1]
    prior_nll = 0.5 * math.log(2 * math.pi) + 0.5  # per dimension, z ~ N(0, 1) scored by N(0, 1)
    assert last["val/mdrnn/nll"] < prior_nll - 0.2


def test_real_env_cmaes_beats_the_random_policy(small_run):
    summary = json.loads((small_run / "eval-test" / "summary.json").read_text())
    with open_rollouts(small_run / "rollouts.h5") as f:
        ends = f.episodes["start"] + f.episodes["length"]
        # random brownian driving over the same 250 first steps of each collected episode
        random_returns = [f.read("reward", int(s), int(min(e, s + 250))).sum() for s, e in zip(f.episodes["start"], ends)]
    random_mean = sum(random_returns) / len(random_returns)
    assert summary["mean"] > random_mean + 30, (summary["mean"], random_mean)
