"""The study stage: the smoke preset end to end (table, CSV, figure), resume without recomputation, summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from worldmodels import cli
from worldmodels.errors import WorldModelsError
from worldmodels.stages import study


@pytest.fixture(scope="module")
def one_thread():
    # Batch-of-one convolutions on a busy 2-core machine are ~50x slower with 2 torch threads than with one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("study") / "study"
    assert cli.main(["study", "--preset", "smoke", "--out", str(out)]) == 0
    return out


def test_smoke_study_writes_every_condition_and_level_set(smoke):
    conditions = study.default_conditions()
    assert conditions == ["offline", "dream", "dream+random_swing", "dream+deepdream", "dream+value_diversification",
                          "dream+all"]
    lines = (smoke / "results.md").read_text().splitlines()
    assert lines[0] == "| game | condition | seeds | train levels | test levels | gap (train - test) |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("| coinrun")]
    assert [r[1] for r in rows] == conditions
    csv_rows = [line.split(",") for line in (smoke / "results.csv").read_text().splitlines()[1:]]
    assert sorted((r[2], r[3]) for r in csv_rows) == sorted((c, lv) for c in conditions for lv in ("train", "test"))
    for r, cond in zip(rows, conditions):
        cell = json.loads((smoke / "cells" / f"coinrun__seed0__{cond}.json").read_text())
        train, test = cell["train"]["mean"], cell["test"]["mean"]
        assert r[3] == f"{train:.2f} ± 0.00" and r[4] == f"{test:.2f} ± 0.00" and r[5] == f"{train - test:.2f} ± 0.00"
        assert cell["train"]["episodes"] == cell["test"]["episodes"] == 2
    assert (smoke / "results.png").stat().st_size > 1000
    # Each condition trained its own controller; the offline one says so, the augmented ones record their settings.
    ckpts = {c: torch.load(smoke / "coinrun" / "seed0" / c / "controller" / "checkpoint.pt", weights_only=False)
             for c in conditions}
    assert len({c["id"] for c in ckpts.values()}) == len(conditions)
    assert ckpts["offline"]["config"]["where"] == "offline"
    assert [a["name"] for a in ckpts["dream+all"]["identity"]["augment"]] == ["random_swing", "deepdream",
                                                                            "value_diversification"]
    assert ckpts["dream"]["identity"]["augment"] == []
    assert ckpts["dream+deepdream"]["identity"]["augment"][0]["steps"] == 2  # the preset's options reached it


def test_rerun_recomputes_nothing_and_a_lost_cell_only_itself(smoke, monkeypatch):
    from worldmodels.stages import collect, evaluate, train_controller

    cells = sorted((smoke / "cells").glob("*.json"))
    before = {p: p.read_text() for p in cells}

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(collect, "run", forbidden)
    monkeypatch.setattr(train_controller, "evolve", forbidden)
    monkeypatch.setattr(evaluate, "run", forbidden)
    summary = study.run(study.Config(**{**_smoke_config(), "out": str(smoke)}))
    assert summary["computed"] == 0 and summary["cells"] == 6
    assert {p: p.read_text() for p in cells} == before

    # A cell whose record is lost is the only one redone (the world is kept, its controller resumes).
    lost = smoke / "cells" / "coinrun__seed0__dream+random_swing.json"
    lost.unlink()
    evaluated = []
    monkeypatch.undo()
    real_evaluate = evaluate.run
    monkeypatch.setattr(collect, "run", forbidden)
    monkeypatch.setattr(evaluate, "run", lambda cfg: evaluated.append(cfg.levels) or real_evaluate(cfg))
    summary = study.run(study.Config(**{**_smoke_config(), "out": str(smoke)}))
    assert summary["computed"] == 1 and evaluated == ["train", "test"]
    assert json.loads(lost.read_text())["condition"] == "dream+random_swing"


def _smoke_config():
    from worldmodels import config as cfgmod

    return cfgmod.to_dict(cfgmod.load(study.Config, "study", preset="smoke"))


def test_summary_statistics_and_gap():
    cells = [{"game": "maze", "seed": s, "condition": "dream", "train": {"mean": tr, "std": 0, "episodes": 5},
              "test": {"mean": te, "std": 0, "episodes": 5}} for s, (tr, te) in enumerate([(4, 1), (6, 2), (8, 6)])]
    (row,) = study.summarise(cells, ["maze"], ["offline", "dream"])
    assert row["seeds"] == 3 and row["train_mean"] == 6 and np.isclose(row["train_std"], 2.0)
    assert np.isclose(row["test_mean"], 3) and np.isclose(row["gap_mean"], 3) and np.isclose(row["gap_std"], 1.0)


def test_bad_study_configs_are_clear_errors(tmp_path):
    with pytest.raises(WorldModelsError, match="unknown study condition 'dream\\+magic'"):
        study.run(study.Config(out=str(tmp_path), conditions=["dream+magic"]))
    with pytest.raises(WorldModelsError, match="unknown augmentation 'deep_dream'"):
        study.run(study.Config(out=str(tmp_path), augment={"deep_dream": {}}))
    with pytest.raises(WorldModelsError, match="study.train_vae: unknown key zdim; valid keys: .*z_dim"):
        study.run(study.Config(out=str(tmp_path), train_vae={"zdim": 3}))
    assert cli.main(["study", "--out", str(tmp_path), "--conditions", "offline,real"]) == 1
    assert not (tmp_path / "coinrun").exists()  # nothing started


def test_full_study_config_is_valid():
    from pathlib import Path

    from worldmodels import config as cfgmod

    cfg = cfgmod.load(study.Config, "study", config_file=str(Path(__file__).parents[1] / "studies" / "procgen.yaml"))
    assert cfg.games == ["coinrun", "maze", "bigfish", "chaser"] and len(cfg.seeds) >= 3
    assert cfg.conditions == study.default_conditions() and cfg.evaluate["episodes"] >= 100
    assert cfg.env_kwargs == {"num_levels": 200, "start_level": 0, "distribution_mode": "easy"}
    for module, section in (("collect", "collect"), ("train_vae", "train_vae"), ("encode", "encode"),
                            ("train_mdrnn", "train_mdrnn"), ("train_controller", "train_controller"),
                            ("evaluate", "evaluate")):
        import importlib

        study._stage_cfg(importlib.import_module(f"worldmodels.stages.{module}"), section, getattr(cfg, section), {})


def test_a_changed_config_is_refused_unless_fresh_cells_and_an_unchanged_rerun_computes_nothing(smoke, tmp_path,
                                                                                                   monkeypatch):
    """Cells and worlds record the config that made them. A rerun with another world setting, or another setting of
    some cells, is refused before anything runs, with the first differing key (it would otherwise mix old cells
    with new ones in results.md); --fresh-cells recomputes exactly the cells whose config changed."""
    import shutil

    from worldmodels.stages import collect, evaluate, train_controller

    out = tmp_path / "study"
    shutil.copytree(smoke, out, symlinks=True)  # the conditions' vae/ and mdrnn/ stay links to their world
    base = _smoke_config()
    cfg = lambda **kw: study.Config(**{**base, "out": str(out), **kw})  # noqa: E731
    world = json.loads((out / "coinrun" / "seed0" / "world.json").read_text())
    assert world["config"] == study.world_config(cfg())
    cells = {p.name: p.read_text() for p in (out / "cells").glob("*.json")}
    swing = json.loads(cells["coinrun__seed0__dream+random_swing.json"])["config"]
    assert swing == study.cell_config(cfg(), "dream+random_swing") and set(swing["augment"]) == {"random_swing"}
    assert swing["world"]["collect"] == base["collect"]

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(collect, "run", forbidden)
    monkeypatch.setattr(train_controller, "run", forbidden)
    monkeypatch.setattr(evaluate, "run", forbidden)
    config_yaml = (out / "config.yaml").read_text()
    refused = [
        (dict(collect={**base["collect"], "episodes": 5}), "world.json was made with collect.episodes=4, not 5"),
        (dict(env_kwargs={**base["env_kwargs"], "num_levels": 7}), "world.json was made with env_kwargs.num_levels="),
        (dict(train_controller={**base["train_controller"], "generations": 3}),
         "coinrun__seed0__offline.json was made with train_controller.generations=2, not 3"),
        (dict(evaluate={**base["evaluate"], "episodes": 3}),
         "coinrun__seed0__offline.json was made with evaluate.episodes=2, not 3"),
        # Only the cells using deepdream depend on its options: the first of them is named.
        (dict(augment={**base["augment"], "deepdream": {**base["augment"]["deepdream"], "strength": 0.25}}),
         "coinrun__seed0__dream+deepdream.json was made with augment.deepdream.strength=0.5, not 0.25"),
    ]
    for changed, message in refused:
        with pytest.raises(WorldModelsError, match="--fresh-cells") as err:
            study.run(cfg(**changed))
        assert message in str(err.value) and "\n" not in str(err.value)
    assert {p.name: p.read_text() for p in (out / "cells").glob("*.json")} == cells  # nothing touched
    assert (out / "config.yaml").read_text() == config_yaml

    # The same config again: nothing is computed, nothing rewritten.
    summary = study.run(cfg())
    assert summary["computed"] == 0 and {p.name: p.read_text() for p in (out / "cells").glob("*.json")} == cells

    # --fresh-cells with other deepdream options recomputes exactly the two cells that use it.
    monkeypatch.undo()
    monkeypatch.setattr(collect, "run", forbidden)
    trained = []
    real_train = train_controller.run
    monkeypatch.setattr(train_controller, "run", lambda c: trained.append(c.augment) or real_train(c))
    deep = {**base["augment"], "deepdream": {**base["augment"]["deepdream"], "strength": 0.25}}
    summary = study.run(cfg(augment=deep, fresh_cells=True))
    assert summary["computed"] == 2 and sorted(map(tuple, trained)) == [
        ("deepdream",), ("random_swing", "deepdream", "value_diversification")]
    after = {p.name: p.read_text() for p in (out / "cells").glob("*.json")}
    assert {k for k in cells if after[k] != cells[k]} == {"coinrun__seed0__dream+deepdream.json",
                                                          "coinrun__seed0__dream+all.json"}
    assert json.loads(after["coinrun__seed0__dream+all.json"])["config"]["augment"]["deepdream"]["strength"] == 0.25
    assert study.run(cfg(augment=deep))["computed"] == 0


def test_dream_dropout_condition_trains_in_a_dream_ensemble_and_records_its_rate(tmp_path):
    """dream-dropout: the dream condition with --dream-dropout at study.dream_dropout in the fitness dreams, recorded
    in its cell config; the other conditions' configs and records stay as they were."""
    cfg = study.Config(out=str(tmp_path), dream_dropout=0.2, augment={"random_swing": {"strength": 0.3}})
    tc = study.controller_cfg(cfg, tmp_path / "run", 1, "dream-dropout")
    assert (tc.where, tc.dream_dropout, tc.augment) == ("dream", 0.2, [])
    assert study.cell_config(cfg, "dream-dropout")["dream_dropout"] == 0.2
    both = study.controller_cfg(cfg, tmp_path / "run", 1, "dream-dropout+random_swing")
    assert (both.dream_dropout, both.augment) == (0.2, ["random_swing"])
    for cond in study.default_conditions():
        assert "dream_dropout" not in study.cell_config(cfg, cond)
        if cond != "offline":
            assert study.controller_cfg(cfg, tmp_path / "run", 1, cond).dream_dropout == 0.0
    with pytest.raises(WorldModelsError, match=r"study.dream_dropout must be in \[0, 1\)"):
        study.run(study.Config(out=str(tmp_path), conditions=["dream-dropout"], dream_dropout=1.0))
    with pytest.raises(WorldModelsError, match="unknown study condition 'dream-dropout\\+magic'"):
        study.run(study.Config(out=str(tmp_path), conditions=["dream-dropout+magic"]))
    assert not (tmp_path / "coinrun").exists()
