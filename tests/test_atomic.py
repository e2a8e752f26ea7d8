"""Atomic writes: the file appears whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from mematte.atomic import atomic_path, atomic_write_text
from mematte.cli import write_json


def test_success_replaces_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "a" / "b.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.txt"]


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path: Path):
    target = tmp_path / "x.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text('{"a": ')  # half written
        raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_temp_names_are_unique_per_call(tmp_path: Path):
    with atomic_path(tmp_path / "f") as first, atomic_path(tmp_path / "f") as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("1")
        second.write_text("2")
    assert (tmp_path / "f").read_text() == "1"  # the outer block finishes last


def test_nothing_written_leaves_the_target_alone(tmp_path: Path):
    with atomic_path(tmp_path / "never"):
        pass
    assert not (tmp_path / "never").exists()
