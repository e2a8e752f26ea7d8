"""The documentation: the MkDocs site builds with --strict, the README's links resolve, and no file
of the repository points outside it.

``mkdocs build --strict`` fails on a broken link or anchor between pages, a page missing from
the nav, and a docstring that mkdocstrings cannot render (mkdocs.yml turns every validation on).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Written in two pieces so that this file does not match itself.
_OUTSIDE_PATHS = re.compile(
    r"\.\./" + r"shared\b"  # the workspace next to the clone
    + r"|(?<![\w.~-])/" + r"work/"  # absolute paths of the machine the project was built on
    + r"|\bMETHOD" + r" §|\bLAYOUT" + r"\.md\b"  # the design notes a clone does not have
)
# Markdown links and images with a relative target: [text](target) / ![alt](target)
_MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _docs_tools_missing() -> list[str]:
    modules = {"mkdocs": "mkdocs", "mkdocs-material": "material", "mkdocstrings[python]": "mkdocstrings_handlers.python"}
    missing = []
    for package, module in modules.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(package)
    return missing


def test_site_builds_strict(tmp_path: Path) -> None:
    missing = _docs_tools_missing()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[docs]' (make setup installs it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    for page in ("index.html", "method/index.html", "checkpoints/index.html", "api/checkpoints/index.html"):
        assert (tmp_path / "site" / page).is_file(), f"{page} missing from the built site:\n{log}"
    # mkdocstrings rendered the API from the docstrings (an empty page would still build)
    api = (tmp_path / "site" / "api" / "inference" / "index.html").read_text(encoding="utf-8")
    assert 'id="mematte.inference.Predictor"' in api


def test_readme_is_a_front_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    # .ci/run runs `make test`, which the README announces; `make train` is the main job
    assert "make test" in readme and "make train" in readme
    assert len(readme) < 8000, f"README.md has {len(readme)} characters: keep it a front page, move detail to docs/"
    targets = [t for t in _MD_LINK.findall(readme) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert targets, "the README should link into docs/"
    broken = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def _repository_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return [ROOT / name for name in listed.split("\0") if name]


def test_no_file_refers_to_paths_outside_the_repository() -> None:
    offenders = []
    for path in _repository_files():
        if not path.is_file():  # deleted in the working tree
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (images, checkpoints)
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if _OUTSIDE_PATHS.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offenders, "files refer to paths outside the repository (a clone has none of them):\n" + "\n".join(offenders)
