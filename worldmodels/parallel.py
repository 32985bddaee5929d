"""One worker interface for real-environment work (collection, real-env fitness, evaluation).

``WorkerPool(workers, initializer, initargs, backend="local" | "ray")`` runs ``fn(task)`` for each task
in worker processes and yields ``(index, result)`` pairs, in task order (``ordered=True``) or as they
finish. Only a bounded number of tasks is in flight, so a long stream of tasks never piles its results
up in memory. ``initializer(*initargs)`` runs once per worker before its first task. No caller needs to
know which backend runs: the results are the same.

- ``local`` (default): a process pool on this machine. A worker that dies (segfault, OOM kill,
  ``kill -9``) fails the whole call at once with a clear :class:`WorldModelsError`, never a hang.
  ``workers=0`` runs everything inline in this process (handy for debugging and exact tests).
- ``ray``: tasks on a ray cluster (``ray_address="auto"`` or ``"HOST:PORT"``) or on a local ray
  instance with ``num_cpus=workers`` when no address is given (``pip install worldmodels[distributed]``).
  ``initargs`` (model weights) go to the object store once; each worker process runs the initializer
  once per pool and caches it, so tasks are never re-pickled with the weights. A task whose worker
  dies is retried up to ``max_retries`` times, then the call fails with a clear error.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

from worldmodels.errors import WorldModelsError

BACKENDS = ("local", "ray")


def close_at_exit(resource: Any) -> None:
    """Close ``resource`` (an env) when this worker process exits.

    Pool workers leave through ``os._exit``, which skips ``atexit``; an env that owns a subprocess
    (ViZDoom's game) would then outlive its worker and keep the caller's stdout open. multiprocessing
    runs its own finalizers on that path, and atexit covers ray workers and inline (workers=0) use.
    """
    import atexit
    from multiprocessing import util

    closed = []

    def close() -> None:
        if not closed:
            closed.append(True)
            resource.close()

    util.Finalize(None, close, exitpriority=10)
    atexit.register(close)


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    # One BLAS/OpenMP thread per worker: W workers on W cores, no oversubscription.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    if initializer is not None:
        initializer(*initargs)


# --------------------------------------------------------------------------------------------- ray workers
# The pool whose initializer last ran in this (ray worker) process. Initializers set process-wide
# state (loaded models, an env), so a worker that switches pools must run the new one again.
_RAY_INITIALIZED: str | None = None


def _ray_call(pool_key: str, init: list, fn: Callable[[Any], Any], task: Any) -> Any:
    """Runs in a ray worker. ``init`` = [initializer, ObjectRef of initargs], wrapped in a list so ray
    does not fetch and unpickle the (large) initargs for every task, only on a worker's first one."""
    global _RAY_INITIALIZED
    if _RAY_INITIALIZED != pool_key:
        import ray

        initializer, initargs_ref = init
        _init_worker(initializer, ray.get(initargs_ref) if initializer is not None else ())
        _RAY_INITIALIZED = pool_key
    return fn(task)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise WorldModelsError("the ray backend needs ray: pip install worldmodels[distributed]") from None
    return ray


class WorkerPool:
    """``imap(fn, tasks)`` over worker processes; see the module docstring for the two backends."""

    def __init__(self, workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = (),
                 what: str = "work", max_in_flight: int | None = None, backend: str = "local",
                 ray_address: str | None = None, max_retries: int = 2):
        if workers < 0:
            raise WorldModelsError(f"workers must be >= 0, got {workers}")
        if backend not in BACKENDS:
            raise WorldModelsError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if ray_address and backend != "ray":
            raise WorldModelsError("--ray-address needs --backend ray")
        self.workers, self.what, self.backend = workers, what, backend
        self.max_in_flight = max_in_flight or max(2 * workers, 1)
        self.max_retries = max_retries
        self._initializer, self._initargs = initializer, initargs
        self._executor: ProcessPoolExecutor | None = None
        self._ray = self._remote = None
        self._ray_started = False
        if backend == "ray":
            if workers < 1:
                raise WorldModelsError("the ray backend needs workers >= 1 (tasks in flight at once)")
            self._start_ray(ray_address)
        elif workers > 0:
            self._executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=mp.get_context("forkserver"),
                initializer=_init_worker, initargs=(initializer, initargs))
        elif initializer is not None:
            initializer(*initargs)

    def _start_ray(self, address: str | None) -> None:
        ray = _import_ray()
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, logging_level="WARNING")
                else:
                    ray.init(num_cpus=self.workers, include_dashboard=False, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"the ray cluster at {address!r}" if address else "a local ray instance"
                raise WorldModelsError(f"could not start or reach {where}: {err}".splitlines()[0]) from None
            self._ray_started = True
        self._ray = ray
        # Every task of this pool names the same initargs object: uploaded once, fetched once per worker.
        self._ray_init = [self._initializer, ray.put(self._initargs)]
        self._ray_key = uuid.uuid4().hex
        self._remote = ray.remote(_ray_call).options(max_retries=self.max_retries, retry_exceptions=False,
                                                     num_cpus=1)

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any], ordered: bool = True) -> Iterator[tuple[int, Any]]:
        """Yield ``(task_index, fn(task))``; in task order when ``ordered``."""
        if self._remote is not None:
            yield from self._imap_ray(fn, tasks, ordered)
            return
        if self._executor is None:
            for i, task in enumerate(tasks):
                yield i, fn(task)
            return
        try:
            yield from self._bounded(tasks, ordered, lambda task: self._executor.submit(fn, task),
                                     self._wait_local, lambda fut: fut.result(), lambda fut: fut.cancel())
        except BrokenProcessPool:
            self.close(cancel=True)
            raise WorldModelsError(
                f"a worker process died during {self.what} (killed, out of memory, or crashed in native code); "
                "completed results were kept; rerun the same command to resume") from None

    def _imap_ray(self, fn: Callable[[Any], Any], tasks: Iterable[Any], ordered: bool) -> Iterator[tuple[int, Any]]:
        ray = self._ray

        def submit(task: Any):
            return self._remote.remote(self._ray_key, self._ray_init, fn, task)

        def result(ref: Any) -> Any:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # fn raised: re-raise its own exception, as locally
                cause = getattr(err, "cause", None)
                raise (cause if isinstance(cause, Exception) else err) from None
            except ray.exceptions.RayError as err:
                raise WorldModelsError(
                    f"a ray worker died during {self.what} and the task failed {self.max_retries + 1} times "
                    f"({type(err).__name__}); completed results were kept; rerun the same command to "
                    "resume") from None

        def cancel(ref: Any) -> None:
            ray.cancel(ref, force=False)

        yield from self._bounded(tasks, ordered, submit, self._wait_ray, result, cancel)

    def _wait_local(self, pending: list) -> list:
        return list(wait(pending, return_when=FIRST_COMPLETED)[0])

    def _wait_ray(self, pending: list) -> list:
        return self._ray.wait(pending, num_returns=1)[0]

    def _bounded(self, tasks: Iterable[Any], ordered: bool, submit: Callable, wait_some: Callable,
                 result: Callable, cancel: Callable) -> Iterator[tuple[int, Any]]:
        """The shared scheduling loop: at most ``max_in_flight`` tasks submitted or finished-unyielded."""
        task_iter = enumerate(tasks)
        pending: dict[Any, int] = {}
        done_results: dict[int, Any] = {}
        next_to_yield = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) + len(done_results) < self.max_in_flight:
                    try:
                        i, task = next(task_iter)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[submit(task)] = i
                if not pending and (not ordered or next_to_yield not in done_results):
                    if exhausted:
                        return
                    continue
                if pending:
                    for handle in wait_some(list(pending)):
                        i = pending.pop(handle)
                        value = result(handle)
                        if ordered:
                            done_results[i] = value
                        else:
                            yield i, value
                while ordered and next_to_yield in done_results:
                    yield next_to_yield, done_results.pop(next_to_yield)
                    next_to_yield += 1
        finally:
            for handle in pending:
                cancel(handle)

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> list[Any]:
        return [r for _, r in self.imap(fn, tasks, ordered=True)]

    def close(self, cancel: bool = False) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=not cancel, cancel_futures=True)
            self._executor = None
        if self._remote is not None:
            self._remote = self._ray_init = None
            if self._ray_started:  # leave a cluster (or an instance the caller started) running
                self._ray.shutdown()
                self._ray_started = False

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(cancel=exc_type is not None)
