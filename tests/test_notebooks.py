"""The notebooks run top to bottom on a CPU (nbclient, a kernel on this repo's Python).

Each executes with cwd = notebooks/ as a user opening it there would; no cell may error, and
the key outputs (figures, tables) must be there. The kernel is this interpreter (a kernelspec
written to a temporary JUPYTER_PATH, which Jupyter searches first), so the notebooks see the
same packages as the tests whatever kernels the machine has installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel (the notebooks extra)")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture
def venv_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernelspec that starts this interpreter; returns its name."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (mematte tests)", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: stay off shared cores
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return "python3"


def execute(name: str, kernel: str) -> "nbformat.NotebookNode":
    """Run a notebook in notebooks/ and return it with outputs (raises on a failing cell)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def text_of(nb) -> str:
    parts = []
    for out in outputs(nb):
        parts.append(out.get("text", ""))
        parts.append(str(out.get("data", {}).get("text/plain", "")))
        parts.append(str(out.get("data", {}).get("text/markdown", "")))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["demo.ipynb", "report.ipynb"])
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: clear outputs before committing"


@pytest.mark.slow
def test_demo_notebook_runs(venv_kernel):
    nb = execute("demo.ipynb", venv_kernel)
    assert not [o for o in outputs(nb) if o.get("output_type") == "error"]
    images = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # image/trimap/alpha/cutout panels, routing maps
    text = text_of(nb)
    assert "RANDOM weights" in text and "predicted in" in text
    assert "kept share per routed block" in text


@pytest.mark.slow
def test_report_notebook_runs(venv_kernel):
    nb = execute("report.ipynb", venv_kernel)
    assert not [o for o in outputs(nb) if o.get("output_type") == "error"]
    text = text_of(nb)
    assert "| SAD |" in text or "SAD" in text
    assert [o for o in outputs(nb) if "image/png" in o.get("data", {})]  # SAD-vs-kept plots
    if "FABRICATED" in text:  # no sweep in this checkout: the labelled demo set
        assert "FABRICATED DEMO DATA — demo_router" in text
