"""Metrics: one JSON object per line (``metrics.jsonl``), appended and flushed as they come.

Names are stable and prefixed by component (``vae/recon``, ``mdrnn/nll``, ``cmaes/best``); each record
also carries its step counter (``epoch``, ``step`` or ``generation``). Appending means a resumed run
continues the same file; :func:`read_metrics` drops records past a given step so a resume that
restarts from an earlier checkpoint never leaves duplicates.

TensorBoard: when the ``tensorboard`` package is importable (``pip install worldmodels[tensorboard]``), or
when asked with ``tensorboard=True``, the same scalars (same names, same steps) and the stages' pictures
also go to ``<folder>/tensorboard/`` (``tensorboard --logdir runs/``). A resumed run purges the events
past its checkpoint there too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def tensorboard_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        return False


class MetricsLogger:
    def __init__(self, path: str | os.PathLike, step_key: str = "step", resume_from: int | None = None,
                 tensorboard: bool | None = None):
        """Open ``path`` for appending; with ``resume_from``, first drop records whose step is >= it.

        ``tensorboard``: None logs there too when the package is installed; True requires it.
        """
        from worldmodels.errors import WorldModelsError

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
        self.tb = None
        if tensorboard is None:
            tensorboard = tensorboard_available()
        if tensorboard:
            tb_dir = self.path.parent / "tensorboard"
            if resume_from is None and tb_dir.is_dir():  # a fresh start: no curves of a previous run
                import shutil

                shutil.rmtree(tb_dir)
            if not tensorboard_available():
                raise WorldModelsError("--tensorboard needs the tensorboard package: pip install worldmodels[tensorboard]")
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tb_dir), purge_step=resume_from)

    def log(self, step: int, **values: Any) -> None:
        record = {self.step_key: step}
        for key, value in values.items():
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            record[key] = value
            if self.tb is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(key, value, step)
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self.tb is not None:
            self.tb.flush()

    def image(self, tag: str, png: str | os.PathLike, step: int) -> None:
        """A picture a stage has drawn (a PNG file), in TensorBoard only."""
        if self.tb is None or not Path(png).is_file():
            return
        import numpy as np
        from PIL import Image

        self.tb.add_image(tag, np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")
        self.tb.flush()

    def close(self) -> None:
        self._fh.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None

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
