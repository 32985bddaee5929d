"""run_pipeline.sh / worldmodels.pipeline on the smoke preset: end to end, skip, redo on change, resume."""

import subprocess
from pathlib import Path

import pytest
import yaml

from worldmodels.config import preset_path
from worldmodels.errors import WorldModelsError
from worldmodels.pipeline import STAGES, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def quiet(*_args):
    pass


def smoke_preset(tmp_path, name="preset.yaml", **changes):
    """A copy of the smoke preset with some stage sections changed (stage -> dict of keys)."""
    doc = yaml.safe_load(preset_path("smoke").read_text())
    for section, values in changes.items():
        doc.setdefault(section, {}).update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(scope="module")
def car_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    preset = smoke_preset(tmp)
    outcome = run_pipeline("carracing", preset, str(tmp / "run"), log=quiet)
    return tmp, preset, tmp / "run", outcome


def test_smoke_pipeline_runs_every_stage_and_writes_report(car_run):
    _, _, run, outcome = car_run
    assert outcome == {stage: "ran" for stage in STAGES}
    for path in ["rollouts.h5", "latents.h5", "vae/checkpoint.pt", "mdrnn/checkpoint.pt",
                 "controller/checkpoint.pt", "report.md"]:
        assert (run / path).is_file(), path
    assert list(run.glob("eval-*/summary.json")), "evaluate wrote no summary"
    assert "missing" not in (run / "report.md").read_text().split("## Evaluation")[0].lower()


def test_rerun_skips_everything(car_run):
    _, preset, run, _ = car_run
    before = (run / "controller" / "checkpoint.pt").stat().st_mtime_ns
    assert run_pipeline("carracing", preset, str(run), log=quiet) == {stage: "skipped" for stage in STAGES}
    assert (run / "controller" / "checkpoint.pt").stat().st_mtime_ns == before


def test_a_run_made_before_an_option_existed_is_still_up_to_date(car_run):
    """An option added to a stage since it ran (absent from its record) counts as unchanged at its default;
    at another value it is a change."""
    tmp, preset, run, _ = car_run
    path = run / "pipeline" / "train-controller.done.yaml"
    saved = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({k: v for k, v in saved.items() if k != "stall_steps"} | {"gone": 1}))
    assert run_pipeline("carracing", preset, str(run), log=quiet) == {stage: "skipped" for stage in STAGES}
    for kind in ("done", "started"):  # as if the stage had finished with another value
        (run / "pipeline" / f"train-controller.{kind}.yaml").write_text(
            yaml.safe_dump({**saved, "eval_every": saved["eval_every"] + 1}))
    outcome = run_pipeline("carracing", preset, str(run), log=quiet)
    assert [outcome[s] for s in STAGES] == ["skipped"] * 4 + ["ran"] * 3


def test_config_change_redoes_that_stage_and_later_only(car_run):
    tmp, _, run, _ = car_run
    vae_mtime = (run / "vae" / "checkpoint.pt").stat().st_mtime_ns
    changed = smoke_preset(tmp, "changed.yaml", train_controller={"sigma0": 0.05})
    outcome = run_pipeline("carracing", changed, str(run), log=quiet)
    assert [outcome[s] for s in STAGES] == ["skipped"] * 4 + ["ran"] * 3
    assert (run / "vae" / "checkpoint.pt").stat().st_mtime_ns == vae_mtime
    saved = yaml.safe_load((run / "pipeline" / "train-controller.done.yaml").read_text())
    assert saved["sigma0"] == 0.05


def test_unknown_stage_and_bad_preset_fail_cleanly(tmp_path):
    with pytest.raises(WorldModelsError, match="unknown stage"):
        run_pipeline("carracing", "smoke", str(tmp_path / "r"), from_stage="nonesuch", log=quiet)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_vae: {epochz: 1}\n")
    with pytest.raises(WorldModelsError, match="epochz"):
        run_pipeline("carracing", str(bad), str(tmp_path / "r"), log=quiet)
    assert not (tmp_path / "r").exists(), "a bad config must fail before anything runs"


def test_interrupted_pipeline_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """Interrupt the pipeline in-process after generation 3 of train-controller (no timing race); the rerun
    skips the finished stages, resumes C and ends exactly where an uninterrupted pipeline does."""
    from worldmodels.metrics import MetricsLogger, read_metrics
    from worldmodels.stages import train_controller as tc

    preset = smoke_preset(tmp_path, train_controller={"generations": 6, "eval_every": 0})
    straight, run = tmp_path / "straight", tmp_path / "run"
    run_pipeline("procgen:coinrun", preset, str(straight), log=quiet)

    class InterruptAfterThree(MetricsLogger):
        def log(self, step, **values):
            super().log(step, **values)
            if self.step_key == "generation" and step == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(tc, "MetricsLogger", InterruptAfterThree)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline("procgen:coinrun", preset, str(run), log=quiet)
    monkeypatch.undo()
    assert not (run / "pipeline" / "train-controller.done.yaml").exists()
    outcome = run_pipeline("procgen:coinrun", preset, str(run), log=quiet)
    assert [outcome[s] for s in STAGES] == ["skipped"] * 4 + ["resumed", "ran", "ran"]

    def result(folder):
        import torch

        state = torch.load(folder / "controller" / "checkpoint.pt", weights_only=False)
        records = [{k: v for k, v in r.items() if k != "cmaes/seconds"}
                   for r in read_metrics(folder / "controller" / "metrics.jsonl")]
        return state["mean"].tolist(), state["best"]["fitness"], records, (folder / "eval-test" / "returns.csv").read_text()

    assert [r["generation"] for r in result(run)[2]] == list(range(6))
    assert result(run) == result(straight)


def test_run_pipeline_script_help():
    proc = subprocess.run([str(ROOT / "run_pipeline.sh"), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "--preset" in proc.stdout and "--from" in proc.stdout


def test_readme_python_snippets_run(car_run):
    """The README's Python examples work as written (paths pointed at the smoke run)."""
    import re

    import numpy as np

    _, _, run, _ = car_run
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    for code in blocks:
        code = code.replace("data/carracing/rollouts.h5", str(run / "rollouts.h5")).replace("runs/car", str(run))
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        if "envs" in namespace:  # the dream as a gymnasium vector env: step it once
            envs = namespace["envs"]
            actions = envs.action_space.sample()
            obs, reward, terminated, truncated, _ = envs.step(actions)
            assert obs.shape[0] == 256 and np.isfinite(reward).all()
