"""Figures are saved as palette PNGs: smaller, and the same picture within quantisation error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldmodels import plots


def test_saved_figure_is_a_palette_png_close_to_matplotlibs_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    # Gradients with noise, like decoded frames: many more than 256 distinct colours.
    ramp = np.linspace(0, 255, 64)
    frames = np.stack([np.stack([np.add.outer(ramp * a, ramp * (1 - a)) / 2] * 3, -1) for a in np.linspace(0, 1, 12)])
    frames = np.clip(frames + rng.normal(0, 8, frames.shape), 0, 255).astype(np.uint8).reshape(4, 3, 64, 64, 3)
    ours_path = plots.latent_traversal(frames, [-1.0, 0.0, 1.0], tmp_path / "traversal.png", "t")

    def matplotlib_png(fig: plots.Figure, path: Path, dpi: int = 100) -> Path:
        fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
        return Path(path)
    monkeypatch.setattr(plots, "save_figure", matplotlib_png)
    ref_path = plots.latent_traversal(frames, [-1.0, 0.0, 1.0], tmp_path / "reference.png", "t")

    with Image.open(ours_path) as ours_image, Image.open(ref_path) as ref_image:
        assert ours_image.mode == "P" and ref_image.mode == "RGBA"
        ours = np.asarray(ours_image.convert("RGB"), dtype=np.float64)
        ref = np.asarray(ref_image.convert("RGB"), dtype=np.float64)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).mean() < 4.0
    assert ours_path.stat().st_size < ref_path.stat().st_size
