"""The walkthrough notebooks: stored without outputs, and each runs to the end on the smoke preset.

They are executed with nbclient in one working folder, notebook 3 first: it builds everything it needs
alone (data, V, M), and the others then reuse those files as a user's second notebook would.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_data_and_vae", "02_mdrnn_and_dreams", "03_controller_in_the_dream", "04_dream_like_imagination"]
ORDER = [NAMES[2], NAMES[0], NAMES[1], NAMES[3]]


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o.get("text", ""))
        elif "data" in o:
            out.append(o["data"].get("text/plain", ""))
    return "".join(out)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, nbformat.NotebookNode]:
    work = tmp_path_factory.mktemp("notebooks")
    saved = {k: os.environ.get(k) for k in ("WORLDMODELS_PRESET", "WORLDMODELS_NOTEBOOK_DIR", "PATH", "MPLBACKEND")}
    # The kernelspec runs `python`: put this venv's first on PATH, so its ipykernel and package run the cells.
    os.environ.update(WORLDMODELS_PRESET="smoke", WORLDMODELS_NOTEBOOK_DIR=str(work / "run"),
                      PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                      MPLBACKEND="module://matplotlib_inline.backend_inline")
    results = {}
    try:
        for name in ORDER:
            nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
            nb.cells.append(nbformat.v4.new_code_cell("import sys; print('PREFIX=' + sys.prefix)"))
            nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                    resources={"metadata": {"path": str(work)}}).execute()
            results[name] = nb
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return results


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert any(c.cell_type == "markdown" for c in nb.cells)


def test_notebooks_run_in_this_venv_without_errors(executed) -> None:
    assert list(executed) == ORDER
    for name, nb in executed.items():
        assert _text(nb.cells[-1]).strip() == f"PREFIX={sys.prefix}", name
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, name


def test_notebook_1_trained_v_reconstructs_better(executed) -> None:
    text = "".join(_text(c) for c in executed[NAMES[0]].cells)
    before = float(re.search(r"reconstruction loss before training: ([\d.]+)", text).group(1))
    after = float(re.search(r"reconstruction loss after training: ([\d.]+)", text).group(1))
    assert after < before


def test_notebooks_draw_their_figures_and_report(executed, tmp_path_factory) -> None:
    nb2 = "".join(_text(c) for c in executed[NAMES[1]].cells)
    assert len(re.findall(r"tau [\d.]+ +mean absolute pixel difference from reality: [\d.]+", nb2)) == 5
    nb3 = "".join(_text(c) for c in executed[NAMES[2]].cells)
    assert re.search(r"real game: -?[\d.]+ ± [\d.]+ over \d+ episodes", nb3)
    assert "missing stages: none" in nb3
    nb4 = "".join(_text(c) for c in executed[NAMES[3]].cells)
    # the same seed: identical until the augmentation fires, different from then on
    fired = re.findall(r"fires at step +\d+; \|z - z_plain\| before it: ([\d.]+), after it: ([\d.]+)", nb4)
    # three per world: the smoke world's, and each shipped study world's (results/procgen-study/worlds) in a checkout
    shipped = list((Path(__file__).resolve().parents[1] / "results" / "procgen-study" / "worlds").glob("*/starts.h5"))
    assert len(fired) == 3 * (1 + len(shipped)) and all(float(before) == 0.0 < float(after) for before, after in fired)
    images = [o for nb in executed.values() for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {}) or "image/gif" in o.get("data", {})]
    assert len(images) >= 8
