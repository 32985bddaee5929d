"""Config merging, type checking, unknown-key errors, and the CLI's one-line errors."""

import subprocess
import sys
from typing import Literal, Optional

import dataclasses
import pytest

from worldmodels import cli
from worldmodels import config as cfgmod
from worldmodels.errors import WorldModelsError
from worldmodels.metrics import MetricsLogger, read_metrics
from worldmodels.utils import atomic_path, exclusive_lock


@dataclasses.dataclass
class Demo:
    env: str = cfgmod.option("carracing", "env name")
    episodes: int = cfgmod.option(10, "how many")
    lr: float = cfgmod.option(1e-4, "learning rate")
    fresh: bool = cfgmod.option(False, "start over")
    policy: str = cfgmod.option("brownian", "policy", choices=["brownian", "random"])
    mode: Literal["dream", "real"] = cfgmod.option("dream", "where")
    names: list = cfgmod.option(factory=list, help="names")
    limit: Optional[int] = cfgmod.option(None, "optional limit")


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_preset_file_and_overrides_merge_in_order(tmp_path):
    preset = write(tmp_path / "p.yaml", "demo: {episodes: 3, lr: 1e-3}\n"
                   "envs:\n  procgen:\n    demo: {episodes: 7}\n  procgen:maze:\n    demo: {lr: 0.5}\n")
    conf = write(tmp_path / "c.yaml", "demo: {fresh: true}\n")
    cfg = cfgmod.load(Demo, "demo", preset=preset, config_file=conf, overrides={"names": "a,b"})
    assert (cfg.episodes, cfg.lr, cfg.fresh, cfg.names) == (3, 1e-3, True, ["a", "b"])
    # env blocks: the family applies, then the exact name on top; explicit overrides win over both
    cfg = cfgmod.load(Demo, "demo", preset=preset, overrides={"env": "procgen:maze"})
    assert (cfg.episodes, cfg.lr) == (7, 0.5)
    cfg = cfgmod.load(Demo, "demo", preset=preset, overrides={"env": "procgen:maze", "episodes": "9"})
    assert cfg.episodes == 9 and isinstance(cfg.episodes, int)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(WorldModelsError) as err:
        cfgmod.from_dict(Demo, {"episodez": 3}, where="collect")
    assert "unknown key episodez" in str(err.value) and "episodes" in str(err.value) and "lr" in str(err.value)


@pytest.mark.parametrize("key,value", [("episodes", "many"), ("episodes", 2.5), ("fresh", "maybe"),
                                       ("policy", "greedy"), ("mode", "both"), ("limit", "x")])
def test_bad_values_are_rejected(key, value):
    with pytest.raises(WorldModelsError):
        cfgmod.from_dict(Demo, {key: value})


def test_optional_and_numbers_coerce():
    cfg = cfgmod.from_dict(Demo, {"limit": "none", "lr": "3e-4", "episodes": 4.0})
    assert cfg.limit is None and cfg.lr == 3e-4 and cfg.episodes == 4


def test_unknown_section_and_preset(tmp_path):
    bad = write(tmp_path / "bad.yaml", "colect: {episodes: 1}\n")
    with pytest.raises(WorldModelsError, match="unknown section colect"):
        cfgmod.load(Demo, "demo", config_file=bad, valid_sections=["demo", "other"])
    with pytest.raises(WorldModelsError, match="unknown preset"):
        cfgmod.load(Demo, "demo", preset="nonesuch")
    with pytest.raises(WorldModelsError, match="not found"):
        cfgmod.load(Demo, "demo", config_file=str(tmp_path / "missing.yaml"))


def test_save_and_load_round_trip(tmp_path):
    cfg = cfgmod.from_dict(Demo, {"episodes": 5, "names": ["x"]})
    cfgmod.save(cfg, tmp_path / "config.yaml")
    assert cfgmod.load_saved(Demo, tmp_path / "config.yaml") == cfg


def test_every_preset_section_is_valid_for_its_stage():
    """Shipped presets must only use real stage sections and real keys."""
    for name in cfgmod.available_presets():
        doc = cfgmod.read_yaml(cfgmod.preset_path(name))
        sections = [cli.section_name(s) for s in cli.STAGES]
        for stage in cli.STAGES:
            module = cli.load_stage(stage)  # every stage is implemented: an import failure fails here
            envs = [None] + list((doc.get("envs") or {}).keys())
            for env in envs:
                values = cfgmod.section_values(doc, cli.section_name(stage), env, name, sections)
                cfgmod.from_dict(module.Config, values, where=f"{name}.{stage}")


def test_cli_unknown_stage_and_help(capsys):
    assert cli.main(["nonesuch"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "train-vae" in capsys.readouterr().out


def test_python_m_entry_point_prints_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "worldmodels", "nonesuch"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown stage" in proc.stderr


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_exclusive_lock_refuses_second_holder(tmp_path):
    target = tmp_path / "x.h5"
    with exclusive_lock(target, "test"):
        code = ("import sys; from worldmodels.utils import exclusive_lock\n"
                f"with exclusive_lock({str(target)!r}, 'other'): pass\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0 and "already being written" in proc.stderr
    with exclusive_lock(target, "test"):  # released after the first holder left
        pass


def test_metrics_resume_drops_later_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(path, step_key="epoch") as log:
        for e in range(4):
            log.log(e, loss=float(e))
    with open(path, "a") as fh:
        fh.write('{"epoch": 9, "lo')  # torn line from a killed run
    with MetricsLogger(path, step_key="epoch", resume_from=2) as log:
        log.log(2, loss=20.0)
    assert [(r["epoch"], r["loss"]) for r in read_metrics(path)] == [(0, 0.0), (1, 1.0), (2, 20.0)]


def test_env_flag_applies_preset_env_block_to_stages_without_env_field():
    """train-mdrnn has no env field; --env still selects the preset's Doom block (h 512)."""
    _, plain = cli.parse_stage_args("train-mdrnn", ["--preset", "paper", "--latents", "x.h5"])
    _, doom = cli.parse_stage_args("train-mdrnn", ["--preset", "paper", "--env", "doom-takecover", "--latents", "x.h5"])
    assert (plain.hidden, doom.hidden) == (256, 512)


def test_an_error_raised_in_a_dataloader_worker_is_still_one_line():
    import torch

    from worldmodels.cli import one_line

    class Broken(torch.utils.data.IterableDataset):
        def __iter__(self):
            raise WorldModelsError("x.h5: reading obs frames [0, 64) failed; the file is truncated or corrupt")

    with pytest.raises(WorldModelsError) as err:
        list(torch.utils.data.DataLoader(Broken(), batch_size=None, num_workers=1))
    assert "\n" in str(err.value)  # torch puts the worker's traceback into the message
    assert one_line(err.value) == "x.h5: reading obs frames [0, 64) failed; the file is truncated or corrupt"
