"""Atomic file writing: results appear whole or not at all (crashes, kills, full disks)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    Write the file under the yielded name (any library that takes a path can). When the block
    finishes, the data is fsynced and renamed onto ``path`` (atomic on POSIX within one
    filesystem); on an exception the temporary file is removed and ``path`` is untouched.
    The name is unique per process and call, so concurrent writers never share a temp file,
    and the file gets the usual umask permissions (``tempfile.mkstemp`` would make it 0600).

    Example::

        with atomic_path(out / "alpha.png") as tmp:
            Image.fromarray(a).save(tmp, format="PNG")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        if tmp.exists():
            with tmp.open("rb+") as handle:  # the data is on disk before the name points at it
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
