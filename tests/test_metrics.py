"""metrics.jsonl and its TensorBoard mirror: same names, same steps, pictures, resume and fresh starts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from worldmodels.errors import WorldModelsError
from worldmodels.metrics import MetricsLogger, read_metrics

pytest.importorskip("tensorboard", reason="pip install worldmodels[tensorboard]")


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def test_tensorboard_mirrors_metrics_and_resumes(tmp_path):
    png = tmp_path / "picture.png"
    Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(png)
    with MetricsLogger(tmp_path / "m" / "metrics.jsonl", step_key="step", tensorboard=True) as log:
        for step in (1, 2, 3):
            log.log(step, **{"mdrnn/nll": 1.0 / step, "mdrnn/flag": True})
        log.image("mdrnn/dream_vs_real", png, 3)
    scalars, images = read_events(tmp_path / "m" / "tensorboard")
    assert [s for s, _ in scalars["mdrnn/nll"]] == [1, 2, 3]
    assert np.allclose([v for _, v in scalars["mdrnn/nll"]], [r["mdrnn/nll"] for r in read_metrics(tmp_path / "m" / "metrics.jsonl")])
    assert images == {"mdrnn/dream_vs_real": [3]} and "mdrnn/flag" not in scalars
    # resumed from step 2: steps >= 2 are rewritten in both places, never doubled
    with MetricsLogger(tmp_path / "m" / "metrics.jsonl", step_key="step", resume_from=2, tensorboard=True) as log:
        log.log(2, **{"mdrnn/nll": 7.0})
    scalars, _ = read_events(tmp_path / "m" / "tensorboard")
    assert scalars["mdrnn/nll"] == [(1, 1.0), (2, 7.0)]
    # a fresh start clears the old curves
    with MetricsLogger(tmp_path / "m" / "metrics.jsonl", step_key="step", tensorboard=True) as log:
        log.log(1, **{"mdrnn/nll": 5.0})
    assert read_events(tmp_path / "m" / "tensorboard")[0]["mdrnn/nll"] == [(1, 5.0)]


def test_tensorboard_off_writes_nothing_and_on_without_the_package_is_one_error(tmp_path, monkeypatch):
    import worldmodels.metrics as metrics

    with MetricsLogger(tmp_path / "metrics.jsonl", tensorboard=False) as log:
        log.log(1, x=1.0)
    assert not (tmp_path / "tensorboard").exists()
    monkeypatch.setattr(metrics, "tensorboard_available", lambda: False)
    with MetricsLogger(tmp_path / "metrics.jsonl") as log:  # auto: off without the package
        assert log.tb is None
    with pytest.raises(WorldModelsError, match="pip install worldmodels\\[tensorboard\\]"):
        MetricsLogger(tmp_path / "metrics.jsonl", tensorboard=True)


def test_controller_stage_logs_its_curve_to_tensorboard(tmp_path):
    from test_controller import make_tiny_run, stage_cfg
    from worldmodels.stages import train_controller as tc

    run = make_tiny_run(tmp_path)
    tc.run(stage_cfg(run, generations=3, eval_every=1, tensorboard=True))
    scalars, images = read_events(run / "controller" / "tensorboard")
    records = read_metrics(run / "controller" / "metrics.jsonl")
    assert [s for s, _ in scalars["cmaes/mean"]] == [0, 1, 2]
    assert np.allclose([v for _, v in scalars["cmaes/mean"]], [r["cmaes/mean"] for r in records])
    assert "eval/mean" in scalars and images["cmaes/learning_curve"] == [1, 2, 3]
