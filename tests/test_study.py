"""The study stage: the smoke preset end to end (table, CSV, figure), resume without recomputation, summaries,
the random baseline, bootstrap intervals, paired differences and the reading."""

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
    assert conditions == ["random", "offline", "dream", "dream+random_swing", "dream+deepdream",
                          "dream+value_diversification", "dream+all"]
    lines = (smoke / "results.md").read_text().splitlines()
    assert lines[0] == "# Study results" and "## coinrun (sparse reward)" in lines
    header = lines.index(study.MD_HEADER)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[header + 2:header + 2 + len(conditions)]]
    assert [r[0] for r in rows] == conditions
    csv_rows = [line.split(",") for line in (smoke / "results.csv").read_text().splitlines()[1:]]
    assert sorted((r[2], r[3]) for r in csv_rows) == sorted((c, lv) for c in conditions for lv in ("train", "test"))
    cells = {c: json.loads((smoke / "cells" / f"coinrun__seed0__{c}.json").read_text()) for c in conditions}
    for r, cond in zip(rows, conditions):
        train, test = cells[cond]["train"]["mean"], cells[cond]["test"]["mean"]
        # One seed: every interval is the value itself; the paired columns are blank for dream itself.
        assert r[2] == f"{train:.2f} [{train:.2f}, {train:.2f}]" and r[3] == f"{test:.2f} [{test:.2f}, {test:.2f}]"
        diffs = [cells[cond][lv]["mean"] - cells["dream"][lv]["mean"] for lv in ("train", "test")]
        assert r[5:] == (["", ""] if cond == "dream" else [f"{d:+.2f} [{d:+.2f}, {d:+.2f}]" for d in diffs])
        assert cells[cond]["train"]["episodes"] == cells[cond]["test"]["episodes"] == 2
    reading = lines[lines.index("Reading:") + 1:]
    assert reading[0].startswith("- dream vs random on training levels: dream - random = ")
    # each dream cell records the search's signal: its population's mean fitness over the last generations
    from worldmodels.metrics import read_metrics

    metrics = read_metrics(smoke / "coinrun" / "seed0" / "dream" / "controller" / "metrics.jsonl")
    means = [r["cmaes/mean"] for r in metrics if "cmaes/mean" in r]
    assert cells["dream"]["dream_fitness"] == pytest.approx(np.mean(means[-study.FITNESS_GENERATIONS:]))
    assert all("dream_fitness" in cells[c] for c in conditions if c.startswith("dream"))
    assert not any("dream_fitness" in cells[c] for c in ("random", "offline"))
    assert reading[1] == (f"- dream's fitness signal: the population's mean dream return over C's last "
                          f"{study.FITNESS_GENERATIONS} generations was {cells['dream']['dream_fitness']:.3g} "
                          "(mean over 1 seeds)")
    assert all("1 paired seed, too few for an interval; no claim" in line for line in reading[:1] + reading[2:])
    summary = json.loads((smoke / "results_summary.json").read_text())
    assert [r["condition"] for r in summary["rows"]] == conditions and summary["reading"]["coinrun"] == [
        line[2:] for line in reading]
    assert (smoke / "results_summary.csv").read_text().splitlines()[0].startswith("game,condition,seeds,train_mean,")
    assert (smoke / "results.png").stat().st_size > 1000
    # The random baseline trained nothing; each other condition trained its own controller; the offline one says
    # so, the augmented ones record their settings.
    assert cells["random"]["train"]["controller_id"] is None and cells["random"]["config"] == {
        "world": cells["dream"]["config"]["world"], "evaluate": cells["dream"]["config"]["evaluate"]}
    assert not (smoke / "coinrun" / "seed0" / "random").exists()
    ckpts = {c: torch.load(smoke / "coinrun" / "seed0" / c / "controller" / "checkpoint.pt", weights_only=False)
             for c in conditions if c != "random"}
    assert len({c["id"] for c in ckpts.values()}) == len(conditions) - 1
    assert ckpts["offline"]["config"]["where"] == "offline"
    assert [a["name"] for a in ckpts["dream+all"]["identity"]["augment"]] == ["random_swing", "deepdream",
                                                                            "value_diversification"]
    assert ckpts["dream"]["identity"]["augment"] == []
    assert ckpts["dream+deepdream"]["identity"]["augment"][0]["steps"] == 2  # the preset's options reached it
    # finished cells keep C, not its CMA-ES state (hundreds of MB at ProcGen's sizes); their ids are the records'
    assert not any("es" in c or "np_rng" in c for c in ckpts.values())
    assert all(ckpts[c]["id"] == cells[c]["train"]["controller_id"] for c in ckpts)


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
    assert summary["computed"] == 0 and summary["cells"] == 7
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
         "coinrun__seed0__random.json was made with evaluate.episodes=2, not 3"),
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
        if cond not in ("offline", "random"):
            assert study.controller_cfg(cfg, tmp_path / "run", 1, cond).dream_dropout == 0.0
    with pytest.raises(WorldModelsError, match=r"study.dream_dropout must be in \[0, 1\)"):
        study.run(study.Config(out=str(tmp_path), conditions=["dream-dropout"], dream_dropout=1.0))
    with pytest.raises(WorldModelsError, match="unknown study condition 'dream-dropout\\+magic'"):
        study.run(study.Config(out=str(tmp_path), conditions=["dream-dropout+magic"]))
    assert not (tmp_path / "coinrun").exists()


def test_random_baseline_plays_the_controllers_episodes(smoke):
    """The random condition plays exactly the episodes (eval seeds, levels, count, max_steps) every controller of
    that seed plays in evaluate, so it is a fair, paired baseline."""
    import csv

    cfg = study.Config(**{**_smoke_config(), "out": str(smoke)})
    for levels in ("train", "test"):
        with open(smoke / "coinrun" / "seed0" / "dream" / f"eval-{levels}" / "returns.csv") as f:
            played = [(int(r["seed"]), int(r["level"])) for r in csv.DictReader(f)]
        episodes = study.random_episodes(cfg, "coinrun", 0, levels)
        assert [(s, lv) for s, lv, _, _ in episodes] == played
        assert all(length <= cfg.evaluate["max_steps"] for *_, length in episodes)
        assert all((lv >= 100_000) == (levels == "test") for _, lv, _, _ in episodes)


def test_random_alone_builds_no_world_and_other_conditions_stay_refused(tmp_path, one_thread):
    cfg = study.Config(out=str(tmp_path), games=["bigfish"], seeds=[0, 1], conditions=["random"],
                       evaluate={"episodes": 2, "max_steps": 5, "workers": 0})
    summary = study.run(cfg)
    assert summary["computed"] == 2 and not (tmp_path / "bigfish").exists()
    record = json.loads((tmp_path / "cells" / "bigfish__seed1__random.json").read_text())
    for levels in ("train", "test"):
        assert set(record[levels]) == {"mean", "std", "episodes", "mean_length", "controller_id"}
        assert record[levels]["episodes"] == 2 and record[levels]["mean_length"] <= 5
    assert record["config"] == study.cell_config(cfg, "random")
    assert (tmp_path / "results.md").read_text().count("no dream condition") == 1
    for bad in ("random+deepdream", "dream+random"):
        with pytest.raises(WorldModelsError, match="unknown study condition"):
            study.run(study.Config(out=str(tmp_path), conditions=["random", bad]))


def test_bootstrap_ci():
    assert study.bootstrap_ci([2.0] * 5) == (2.0, 2.0)
    assert study.bootstrap_ci([3.5]) == (3.5, 3.5)
    values = np.random.default_rng(1).normal(1.0, 2.0, 20)
    low, high = study.bootstrap_ci(values)
    assert values.min() < low < values.mean() < high < values.max()
    assert study.bootstrap_ci(values, seed=7) == study.bootstrap_ci(values, seed=7) != (low, high)
    narrow = study.bootstrap_ci(values, level=0.5)
    assert low < narrow[0] < narrow[1] < high
    with pytest.raises(ValueError):
        study.bootstrap_ci([])


def _cell(game, seed, condition, train, test):
    return {"game": game, "seed": seed, "condition": condition, "train": {"mean": train, "std": 0.0, "episodes": 5},
            "test": {"mean": test, "std": 0.0, "episodes": 5}}


def test_paired_differences_pair_by_seed(tmp_path):
    """offline lacks seed 1 and dream seed 3: offline's differences use seeds 0 and 2 only, each against dream's
    same seed."""
    cells = [_cell("maze", s, "dream", tr, te) for s, tr, te in ((0, 1.0, 0.5), (1, 9.0, 9.0), (2, 3.0, 1.0))]
    cells += [_cell("maze", s, "offline", tr, te) for s, tr, te in ((0, 2.0, 1.5), (2, 5.0, 2.0), (3, 7.0, 7.0))]
    diff = study.paired_difference(cells, "maze", "offline", "test")
    assert diff["seeds"] == 2 and diff["mean"] == 1.0 and diff["low"] == diff["high"] == 1.0
    assert study.paired_difference(cells, "maze", "offline", "train")["mean"] == 1.5
    assert study.paired_difference(cells, "chaser", "offline", "test") is None
    rows = study.summarise(cells, ["maze"], ["dream", "offline"])
    assert [r["condition"] for r in rows] == ["dream", "offline"] and rows[0]["test_vs_dream_mean"] is None
    assert rows[1]["seeds"] == 3 and rows[1]["test_vs_dream_seeds"] == 2 and rows[1]["test_vs_dream_mean"] == 1.0
    study.write_results(tmp_path, cells, ["maze"], ["dream", "offline"])
    md = (tmp_path / "results.md").read_text()
    assert "| +1.50 [+1.00, +2.00] (2 seeds) | +1.00 [+1.00, +1.00] (2 seeds) |" in md
    assert "| dream | 3 | 4.33 [" in md and "no random baseline paired with dream" in md


def _row(condition, train=None, test=None):
    """A summary row with only what reading() reads: the paired (n, mean, low, high) per level set."""
    row = {"game": "coinrun", "condition": condition}
    for levels, diff in (("train", train), ("test", test)):
        for stat, value in zip(("seeds", "mean", "low", "high"), diff or (None,) * 4):
            row[f"{levels}_vs_dream_{stat}"] = value
    return row


def test_reading_names_a_direction_only_when_the_interval_excludes_zero():
    rows = [_row("random", train=(3, -1.0, -1.5, -0.5), test=(3, -0.8, -1.2, -0.4)), _row("dream"),
            _row("offline", train=(3, 0.2, -0.1, 0.5), test=(3, 0.1, -0.2, 0.4)),
            _row("dream+all", test=(3, 0.5, 0.2, 0.8)), _row("dream+deepdream", test=(3, -0.5, -0.8, -0.2)),
            _row("dream+random_swing", test=(1, 0.9, 0.9, 0.9)), _row("dream-dropout")]
    assert study.reading(rows) == [
        "dream beats random on training levels: dream - random = +1.00 [+0.50, +1.50] over 3 seeds; the world model "
        "is good enough to test generalisation",
        "random is worse than dream on test levels: random - dream = -0.80 [-1.20, -0.40] over 3 seeds",
        "offline vs dream on test levels: within noise, offline - dream = +0.10 [-0.20, +0.40] over 3 seeds",
        "dream+all beats dream on test levels: dream+all - dream = +0.50 [+0.20, +0.80] over 3 seeds",
        "dream+deepdream is worse than dream on test levels: dream+deepdream - dream = -0.50 [-0.80, -0.20] over 3 "
        "seeds",
        "dream+random_swing vs dream on test levels: dream+random_swing - dream = +0.90 on 1 paired seed, too few for "
        "an interval; no claim",
        "dream-dropout: no seed shared with dream; no claim"]
    straddles = study.reading([_row("random", train=(3, -0.2, -0.6, 0.3), test=(3, 0.0, -0.1, 0.1)), _row("dream")])
    assert straddles[0] == ("dream vs random on training levels: within noise, dream - random = +0.20 [-0.30, +0.60] "
                            "over 3 seeds; until dream beats random, the study cannot show generalisation")
    below = study.reading([_row("random", train=(2, 0.4, 0.1, 0.7)), _row("dream")])[0]
    assert below.startswith("dream is worse than random on training levels: dream - random = -0.40 [-0.70, -0.10]")
    assert study.reading([_row("offline", test=(3, 1.0, 0.5, 1.5))]) == [
        "no dream condition: nothing is paired with it, so nothing can be read"]
