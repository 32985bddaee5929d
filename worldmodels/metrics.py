"""Metrics: one JSON object per line (``metrics.jsonl``), appended and flushed as they come.

Names are stable and prefixed by component (``vae/recon``, ``mdrnn/nll``, ``cmaes/best``); each record
also carries its step counter (``epoch``, ``step`` or ``generation``). Appending means a resumed run
continues the same file; :func:`read_metrics` drops records past a given step so a resume that
restarts from an earlier checkpoint never leaves duplicates.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, path: str | os.PathLike, step_key: str = "step", resume_from: int | None = None):
        """Open ``path`` for appending; with ``resume_from``, first drop records whose step is >= it."""
        self.path = Path(path)
        self.step_key = step_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from is not None and self.path.exists():
            keep = [r for r in read_metrics(self.path) if r.get(step_key, -1) < resume_from]
            from worldmodels.utils import atomic_write_text

            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        elif resume_from is None and self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a")

    def log(self, step: int, **values: Any) -> None:
        record = {self.step_key: step}
        for key, value in values.items():
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            record[key] = value
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics file (a torn last line from a killed run is skipped)."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
