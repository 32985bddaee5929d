"""Fixtures shared across test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def carracing_smoke_run(tmp_path_factory) -> Path:
    """`run_pipeline.sh --env carracing --preset smoke`, built once for the session. Tests only read it: one
    that changes a run works on a copy (its data files stay here, where the copy's checkpoints point)."""
    from worldmodels.pipeline import run_pipeline

    path = tmp_path_factory.mktemp("carracing-smoke") / "run"
    run_pipeline(env="carracing", preset="smoke", run_dir=str(path), log=lambda *_: None)
    return path
