"""WorkerPool: local and ray backends give the same results; dead workers fail fast (local) or are retried (ray)."""

import os
import time

import numpy as np
import pytest

from worldmodels.errors import WorldModelsError
from worldmodels.parallel import WorkerPool

_STATE = {}


def init(weights, log_dir):
    """Stands in for loading models: keeps the big array and logs one line per initializer run."""
    _STATE["weights"] = weights
    with open(os.path.join(log_dir, f"init-{os.getpid()}"), "a") as fh:
        fh.write("x")


def work(task):
    seed, scale = task
    rng = np.random.default_rng(seed)
    return os.getpid(), float(scale * rng.normal() + _STATE["weights"][seed % 100])


def die_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return os.getpid()


def fail(task):
    raise WorldModelsError(f"bad task {task}")


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install worldmodels[distributed])")
    # Ray workers import this module by name (as the package's own worker functions are imported).
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}})
    yield
    ray.shutdown()


def test_local_dead_worker_fails_fast(tmp_path):
    t = time.monotonic()
    with pytest.raises(WorldModelsError, match="worker process died"):
        with WorkerPool(2, what="the test") as pool:
            pool.map(die_once, [str(tmp_path / "marker")] * 4)
    assert time.monotonic() - t < 30


def test_ray_matches_local_and_initializes_once_per_worker(tmp_path, ray_instance):
    weights = np.arange(100, dtype=np.float64) + np.random.default_rng(0).normal(size=100)
    big = np.concatenate([weights, np.zeros(2_000_000)])  # 16 MB: must not travel with every task
    tasks = [(seed, 0.5) for seed in range(40)]
    results = {}
    for backend in ("local", "ray"):
        log_dir = tmp_path / backend
        log_dir.mkdir()
        with WorkerPool(2, init, (big, str(log_dir)), backend=backend) as pool:
            ordered = pool.map(work, tasks)
            unordered = dict(pool.imap(work, tasks, ordered=False))
        results[backend] = [value for _, value in ordered]
        assert sorted(unordered) == list(range(len(tasks)))
        assert [unordered[i][1] for i in range(len(tasks))] == results[backend]
        inits = {p.name: p.read_text() for p in log_dir.iterdir()}
        pids_used = {f"init-{pid}" for pid, _ in ordered}
        assert pids_used <= set(inits) and all(v == "x" for v in inits.values()), inits  # once per worker
        assert len(inits) <= 4 < len(tasks)
    assert results["local"] == results["ray"]
    with WorkerPool(0, init, (big, str(tmp_path))) as inline:
        assert [v for _, v in inline.map(work, tasks)] == results["local"]


def test_ray_retries_a_task_whose_worker_died(tmp_path, ray_instance):
    marker = str(tmp_path / "died")
    with WorkerPool(2, backend="ray", what="the test") as pool:
        pids = pool.map(die_once, [marker] * 3)
    assert os.path.exists(marker) and len(pids) == 3  # the first attempt died, the retry finished
    with WorkerPool(2, backend="ray", max_retries=0, what="the test") as pool:
        with pytest.raises(WorldModelsError, match="ray worker died during the test"):
            pool.map(die_once, [str(tmp_path / "again")])
    with WorkerPool(1, backend="ray") as pool:  # an exception in fn is the task's own, not retried
        with pytest.raises(WorldModelsError, match="bad task 7"):
            pool.map(fail, [7])


def test_bad_backend_settings_are_clear_errors():
    with pytest.raises(WorldModelsError, match="unknown backend"):
        WorkerPool(1, backend="dask")
    with pytest.raises(WorldModelsError, match="needs --backend ray"):
        WorkerPool(1, ray_address="auto")
    with pytest.raises(WorldModelsError, match="workers >= 1"):
        WorkerPool(0, backend="ray")
