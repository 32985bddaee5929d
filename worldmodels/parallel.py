"""One worker interface for real-environment work (collection, real-env fitness, evaluation).

``WorkerPool(workers, initializer, initargs)`` runs ``fn(task)`` for each task in worker processes and
yields ``(index, result)`` pairs, in task order (``ordered=True``) or as they finish. Only a bounded
number of tasks is in flight, so a long stream of tasks never piles its results up in memory.

A worker that dies (segfault, OOM kill, ``kill -9``) fails the whole call at once with a clear
:class:`WorldModelsError`, never a hang. ``workers=0`` runs everything inline in this process
(handy for debugging and for tests that need exact control).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

from worldmodels.errors import WorldModelsError


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


class WorkerPool:
    def __init__(self, workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = (),
                 what: str = "work", max_in_flight: int | None = None):
        if workers < 0:
            raise WorldModelsError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        self.what = what
        self.max_in_flight = max_in_flight or max(2 * workers, 1)
        self._initializer, self._initargs = initializer, initargs
        self._executor: ProcessPoolExecutor | None = None
        if workers > 0:
            self._executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=mp.get_context("forkserver"),
                initializer=_init_worker, initargs=(initializer, initargs))
        elif initializer is not None:
            initializer(*initargs)

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any], ordered: bool = True) -> Iterator[tuple[int, Any]]:
        """Yield ``(task_index, fn(task))``; in task order when ``ordered``."""
        if self._executor is None:
            for i, task in enumerate(tasks):
                yield i, fn(task)
            return
        task_iter = enumerate(tasks)
        pending: dict[Future, int] = {}
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
                    pending[self._executor.submit(fn, task)] = i
                if not pending and (not ordered or next_to_yield not in done_results):
                    if exhausted:
                        return
                    continue
                if pending:
                    finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in finished:
                        i = pending.pop(fut)
                        result = fut.result()
                        if ordered:
                            done_results[i] = result
                        else:
                            yield i, result
                while ordered and next_to_yield in done_results:
                    yield next_to_yield, done_results.pop(next_to_yield)
                    next_to_yield += 1
        except BrokenProcessPool:
            self.close(cancel=True)
            raise WorldModelsError(
                f"a worker process died during {self.what} (killed, out of memory, or crashed in native code); "
                "completed results were kept; rerun the same command to resume") from None
        finally:
            for fut in pending:
                fut.cancel()

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> list[Any]:
        return [r for _, r in self.imap(fn, tasks, ordered=True)]

    def close(self, cancel: bool = False) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=not cancel, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(cancel=exc_type is not None)
