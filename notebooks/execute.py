"""Run the notebooks top to bottom on this interpreter and keep their outputs (``make notebooks``).

    python notebooks/execute.py                  # every notebook here, rewritten in place
    python notebooks/execute.py demo.ipynb       # only these

Each notebook runs with cwd = notebooks/ (as a user opening it there), on a kernel that is
this Python (a ``python3`` kernelspec in a temporary JUPYTER_PATH, which Jupyter searches
first), so it sees the project's packages whatever kernels the machine has. The notebook's own
metadata is kept and no per-cell timings are recorded, so a rerun only changes what the cells
print. A cell that raises stops the run with the cell's error; the file is then left as it was.
``tests/test_notebooks.py`` executes them the same way, in memory.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent
KERNEL_NAME = "python3"


@contextmanager
def this_python_kernel() -> Iterator[str]:
    """A ``python3`` kernelspec starting ``sys.executable`` (temporary JUPYTER_PATH); yields its
    name. Also keeps the kernel off extra threads and W&B offline, as the tests do."""
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "OMP_NUM_THREADS", "WANDB_MODE")}
    with tempfile.TemporaryDirectory(prefix="mematte_kernel_") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (mematte)", "language": "python",
        }))
        os.environ["JUPYTER_PATH"] = tmp
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # the kernel inherits it
        os.environ.setdefault("WANDB_MODE", "offline")
        try:
            yield KERNEL_NAME
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def execute_notebook(path: Path, kernel_name: str, timeout: int = 600) -> nbformat.NotebookNode:
    """Execute the notebook at ``path`` (cwd = its folder); returns it with outputs, its own
    metadata unchanged. Raises ``nbclient.exceptions.CellExecutionError`` on a failing cell."""
    nb = nbformat.read(path, as_version=4)
    metadata = copy.deepcopy(nb.metadata)
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=timeout, record_timing=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    nb.metadata = metadata
    return nb


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    paths = [NOTEBOOKS / name for name in names] if names else sorted(NOTEBOOKS.glob("*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    with this_python_kernel() as kernel:
        for path in paths:
            nb = execute_notebook(path, kernel)
            nbformat.write(nb, path)
            print(f"{path.relative_to(NOTEBOOKS.parent)}: executed, {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
