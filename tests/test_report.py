"""report: on a real smoke pipeline run, the numbers, links and missing stages it writes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from worldmodels import cli
from worldmodels.checkpoint import save_checkpoint
from worldmodels.errors import WorldModelsError
from worldmodels.stages import report


@pytest.fixture(scope="module")
def run_dir(carracing_smoke_run) -> Path:
    return carracing_smoke_run


def _links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_report_holds_eval_mean_and_only_existing_figures(run_dir: Path) -> None:
    text = (run_dir / "report.md").read_text()  # written by the pipeline's own report step
    summary = json.loads((run_dir / "eval-test" / "summary.json").read_text())
    assert f"{summary['mean']:.2f} ± {summary['std']:.2f}" in text
    assert "906 ± 21" in text  # the paper's CarRacing number beside ours
    links = _links(text)
    for needed in ("vae/reconstructions.png", "vae/traversal.png", "mdrnn/dream_vs_real.png",
                   "controller/learning_curve.png", "eval-test/episode.gif"):
        assert needed in links
    assert all(not Path(link).is_absolute() and (run_dir / link).is_file() for link in links)
    assert "missing" not in text.split("## Evaluation")[0]  # every stage ran
    vae_last = json.loads((run_dir / "vae" / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"`vae/recon` {vae_last['vae/recon']:.4g}" in text


def test_removed_stage_is_listed_missing_and_its_figures_unlinked(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "controller")
    (copy / "report.md").unlink()
    result = report.run(report.Config(run=str(copy)))
    text = Path(result["path"]).read_text()
    assert result["missing"] == ["train-controller"]
    assert "| train-controller | **missing** |" in text
    assert "controller/learning_curve.png" not in _links(text)
    assert all((copy / link).is_file() for link in _links(text))


def test_learning_curve_is_redrawn_and_links_are_relative_to_out(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "controller" / "learning_curve.png").unlink()
    out = tmp_path / "elsewhere" / "r.md"
    report.run(report.Config(run=str(copy), out=str(out)))
    assert (copy / "controller" / "learning_curve.png").stat().st_size > 1000
    links = _links(out.read_text())
    assert "../run/controller/learning_curve.png" in links
    assert all((out.parent / link).is_file() for link in links)


def test_missing_or_empty_run_dir_is_a_clear_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(WorldModelsError, match="does not exist"):
        report.run(report.Config(run=str(tmp_path / "nope")))
    with pytest.raises(WorldModelsError, match="holds no stage output"):
        report.run(report.Config(run=str(tmp_path)))
    assert cli.main(["report", "--run", str(tmp_path / "nope")]) == 1
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("env,temperature,expected", [
    ("doom-takecover", 1.15, "1092 ± 556"), ("doom-takecover", 1.0, "868 ± 511"),
    ("procgen:coinrun", None, "no ProcGen result"), ("carracing", None, "906 ± 21")])
def test_paper_score_per_env(env: str, temperature: float | None, expected: str) -> None:
    assert expected in report.paper_score(env, temperature)


def test_a_v_only_carracing_run_is_compared_with_the_papers_v_only_row() -> None:
    assert "632 ± 251" in report.paper_score("carracing", None, "z")
    assert "906 ± 21" in report.paper_score("carracing", None, "zh")


def test_sizes_say_how_far_a_search_ran_and_tau_only_for_a_dream() -> None:
    configs = {"train-vae": {"z_dim": 32}, "train-controller": {"generations": 30, "popsize": 64, "rollouts": 4,
                                                                 "where": "real", "temperature": 1.15}}
    assert report._sizes(configs, 29) == "This run: z 32, 29 of 30 generations of 64 × 4 rollouts (real)."
    dream = {"train-controller": {**configs["train-controller"], "where": "dream"}}
    assert report._sizes(dream, 30) == "This run: 30 generations of 64 × 4 rollouts (dream, τ 1.15)."


def test_sizes_name_a_warm_start_and_how_far_its_search_had_run(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "init", "controller", {"id": "x", "generation": 29, "mean": np.zeros(3)})
    c = {"generations": 31, "popsize": 64, "rollouts": 4, "where": "real", "init": str(tmp_path / "init")}
    assert report._sizes({"train-controller": c}).endswith(
        f"(real), warm-started from `{tmp_path / 'init'}` (a search of 29 generations).")
    gone = {**c, "init": str(tmp_path / "missing")}  # a record whose init is not here still names it
    assert report._sizes({"train-controller": gone}).endswith(f"warm-started from `{tmp_path / 'missing'}`.")


def test_paper_dream_score_only_where_the_paper_has_one() -> None:
    assert "918 ± 546" in report.paper_dream_score("doom-takecover", 1.15, 1.15)
    assert "2086 ± 140" in report.paper_dream_score("doom-takecover", 0.1, 0.1)
    for env, trained, dreamed in (("doom-takecover", 1.15, 0.1), ("doom-takecover", 2.0, 2.0), ("carracing", 1.15, 1.15)):
        assert report.paper_dream_score(env, trained, dreamed).startswith("none")


def test_report_says_where_the_run_falls_against_its_presets_spread(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import yaml

    import worldmodels.config as config

    assert yaml.safe_load((run_dir / "pipeline" / "run.yaml").read_text()) == {
        "preset": "smoke", "env": "carracing", "seed": None}  # the pipeline records what the report compares
    mean = json.loads((run_dir / "eval-test" / "summary.json").read_text())["mean"]
    presets = tmp_path / "presets"
    presets.mkdir()
    monkeypatch.setattr(config, "PRESET_DIR", presets)
    for centre, word in ((mean, "within"), (mean + 100, "below"), (mean - 100, "above")):
        (presets / "expected.json").write_text(json.dumps({"smoke": {"carracing": {
            "mean": centre, "std": 10.0, "runs": [centre - 10, centre, centre + 10], "machine": "a test CPU"}}}))
        report.run(report.Config(run=str(run_dir), out=str(tmp_path / f"{word}.md")))
        text = (tmp_path / f"{word}.md").read_text()
        assert f"is **{word}** the range" in text and f"{centre - 20:.1f} .. {centre + 20:.1f}" in text
    (presets / "expected.json").write_text(json.dumps({"default": {}}))  # nothing measured for smoke
    report.run(report.Config(run=str(run_dir), out=str(tmp_path / "none.md")))
    assert "healthy" not in (tmp_path / "none.md").read_text()


def test_a_warm_started_run_s_evaluations_count_generations_over_the_whole_search(tmp_path: Path) -> None:
    """A search continued across machines numbers each segment from 1: the report names the generation of this run
    and of the whole search for the evaluations of this run's C, and leaves another C's as recorded."""
    run = tmp_path / "run"
    save_checkpoint(tmp_path / "init", "controller", {"id": "before", "generation": 48, "mean": np.zeros(3)})
    save_checkpoint(run / "controller", "controller", {"id": "this", "generation": 52, "mean": np.zeros(3)})
    (run / "controller" / "config.yaml").write_text(yaml.safe_dump(
        {"generations": 52, "popsize": 64, "rollouts": 4, "where": "real", "init": str(tmp_path / "init")}))
    for name, cid, which in (("eval-test", "this", "mean solution of generation 32 (periodic score 788.68)"),
                             ("eval-test-old", "other", "mean solution of generation 10 (periodic score 634.55)"),
                             ("eval-train", "this", "the search's best candidate"),
                             ("eval-test-noise0.1", "other", "mean solution of generation 10 (periodic score 634.55)")):
        (run / name).mkdir()
        (run / name / "summary.json").write_text(json.dumps(
            {"env": "carracing", "episodes": 2, "mean": 1.0, "std": 0.0, "generation": 52, "controller_id": cid,
             "controller": which, "noise": 0.1 if "noise" in name else 0.0}))
    text, _ = report.build_report(run, run / "report.md")
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `eval")}
    assert "mean solution of generation 80 of the search (32 of this run; periodic score 788.68)" in rows["eval-test"]
    assert "mean solution of generation 10 (periodic score 634.55)" in rows["eval-test-old"]
    assert "the search's best candidate" in rows["eval-train"]
    assert "periodic score 634.55), with action noise 0.1" in rows["eval-test-noise0.1"]  # a stochastic policy
    assert "action noise" not in rows["eval-test-old"]
