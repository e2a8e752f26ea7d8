"""The notebooks run top to bottom on a CPU, and are committed with their outputs.

Each executes (in memory; the files are not touched) with cwd = notebooks/ as a user opening it
there would, on this interpreter, by ``notebooks/execute.py`` (the script behind
``make notebooks``, which rewrites them in place with outputs); no cell may error, and the key
outputs (figures, tables) must be there. The committed files must hold a complete, error-free
run that stays small enough to show on a web view.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel (the notebooks extra)")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = ROOT / "notebooks"


# the committed notebooks, images included, stay below this (a web view loads all of it)
MAX_NOTEBOOK_BYTES = 250 * 1024

_spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
notebooks_execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebooks_execute)


@pytest.fixture
def venv_kernel(monkeypatch: pytest.MonkeyPatch):
    """A ``python3`` kernelspec that starts this interpreter; yields its name."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: stay off shared cores
    with notebooks_execute.this_python_kernel() as kernel:
        yield kernel


def execute(name: str, kernel: str) -> "nbformat.NotebookNode":
    """Run a notebook in notebooks/ and return it with outputs (raises on a failing cell)."""
    return notebooks_execute.execute_notebook(NOTEBOOKS / name, kernel, timeout=300)


def outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def text_of(nb) -> str:
    parts = []
    for out in outputs(nb):
        parts.append(out.get("text", ""))
        parts.append(str(out.get("data", {}).get("text/plain", "")))
        parts.append(str(out.get("data", {}).get("text/markdown", "")))
    return "\n".join(parts)


def images(nb) -> list[dict]:
    return [o for o in outputs(nb) if {"image/png", "image/jpeg"} & set(o.get("data", {}))]


@pytest.mark.parametrize("name", ["demo.ipynb", "report.ipynb"])
def test_committed_with_outputs_of_one_clean_run(name):
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{name}: run `make notebooks` (executed top to bottom)"
    assert images(nb), f"{name}: no figure in the saved outputs"
    assert not [o for o in outputs(nb) if o.get("output_type") == "error" or o.get("name") == "stderr"], \
        f"{name}: a cell printed an error or warning"
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{name}: {path.stat().st_size / 1024:.0f} KiB of outputs"
    text = path.read_text()
    for machine_path in (str(ROOT), tempfile.gettempdir() + os.sep):
        assert machine_path not in text, f"{name}: outputs name a path of this machine ({machine_path})"


@pytest.mark.slow
def test_demo_notebook_runs(venv_kernel):
    nb = execute("demo.ipynb", venv_kernel)
    assert not [o for o in outputs(nb) if o.get("output_type") == "error"]
    assert len(images(nb)) == 2  # image/trimap/alpha/cutout panels, routing maps
    text = text_of(nb)
    assert "RANDOM weights" in text and "predicted in" in text
    assert "kept share per routed block" in text


@pytest.mark.slow
def test_report_notebook_runs(venv_kernel):
    nb = execute("report.ipynb", venv_kernel)
    assert not [o for o in outputs(nb) if o.get("output_type") == "error"]
    text = text_of(nb)
    assert "| SAD |" in text or "SAD" in text
    assert images(nb)  # SAD-vs-kept plots
    if "FABRICATED" in text:  # no sweep in this checkout: the labelled demo set
        assert "FABRICATED DEMO DATA — demo_router" in text
