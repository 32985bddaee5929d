"""Fixtures shared across test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def carracing_smoke_run(tmp_path_factory, request) -> Path:
    """`run_pipeline.sh --env carracing --preset smoke`, built once for the session. Tests only read it: one
    that changes a run works on a copy (its data files stay here, where the copy's checkpoints point).

    Under pytest-xdist (run_tests.sh) the test processes share one build: the first to need it builds it in the
    session's common temporary folder while the others wait on a lock."""
    from filelock import FileLock

    from worldmodels.pipeline import run_pipeline

    worker = getattr(request.config, "workerinput", {}).get("workerid")
    root = tmp_path_factory.getbasetemp()
    if worker is not None:  # each process's basetemp is a folder of the session's own root
        root = root.parent
    path = root / "carracing-smoke" / "run"
    with FileLock(str(root / "carracing-smoke.lock")):
        if not (root / "carracing-smoke" / "built").exists():
            path.parent.mkdir(exist_ok=True)
            run_pipeline(env="carracing", preset="smoke", run_dir=str(path), log=lambda *_: None)
            (root / "carracing-smoke" / "built").touch()
    return path
