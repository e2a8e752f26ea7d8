"""The import rules of docs/architecture.md, checked on the source: each module imports only
from its own layer or the layers below it, models never import data or Lightning, and only
the Lightning layer, the entry points and ``data.datamodule`` import Lightning."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lower layers first; a module may import mematte modules of its layer or a lower one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaves", ("mematte", "mematte.atomic", "mematte.profiling", "mematte.image_io")),
    ("models", ("mematte.models",)),
    ("data", ("mematte.data",)),
    ("losses and metrics", ("mematte.losses", "mematte.metrics", "mematte.optim")),
    ("nets and inference", ("mematte.checkpoints", "mematte.checkpoint_compat", "mematte.inference",
                            "mematte.presets", "mematte.precision", "mematte.visualize", "mematte.baselines")),
    ("lightning", ("mematte.lit_module", "mematte.callbacks", "mematte.resilience", "mematte.loggers")),
    ("entry points", ("mematte.cli", "mematte.predict", "mematte.bench", "mematte.convert",
                      "mematte.report", "mematte.data.__main__")),
]
# Documented exceptions (docs/architecture.md): importer → imported.
EXCEPTIONS: set[tuple[str, str]] = set()
LIGHTNING_ALLOWED = ("mematte.data.datamodule",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    """The most specific layer prefix that names the module (``data.__main__`` is an entry)."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions, relative ones resolved."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.add(".".join([*base, node.module] if node.module else base))
    return found


MODULES = sorted(SRC.glob("mematte/**/*.py"))


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in MODULES if layer_of(module_name(p)) < 0]
    assert not unplaced, f"place these modules in LAYERS and docs/architecture.md: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_imports_upward(path):
    name = module_name(path)
    own = layer_of(name)
    upward = [
        f"{imported} ({LAYERS[layer_of(imported)][0]})"
        for imported in imports(path)
        if imported.startswith("mematte") and layer_of(imported) > own
        and (name, imported) not in EXCEPTIONS
    ]
    assert not upward, f"{name} ({LAYERS[own][0]}) imports upward: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_lightning_stays_in_its_layers(path):
    name = module_name(path)
    external = {m.split(".")[0] for m in imports(path)}
    if name.startswith("mematte.models"):
        assert not external & {"lightning", "hydra", "omegaconf", "torchmetrics", "wandb"}, name
        assert not any(m.startswith("mematte.data") for m in imports(path)), name
    if layer_of(name) < [n for n, _ in LAYERS].index("lightning") and name not in LIGHTNING_ALLOWED:
        assert "lightning" not in external, f"{name} imports Lightning"
