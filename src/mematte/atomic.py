"""Atomic file writing: results appear whole or not at all (crashes, kills, full disks)."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DiskFullError", "atomic_path", "atomic_write_text", "clean_stale_temp_files", "format_bytes"]

# errno values that mean "the filesystem has no room for this write" (EDQUOT: a user quota)
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def format_bytes(n: int | float) -> str:
    """``79699263`` → ``"76.0 MiB"`` (binary units, one decimal)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class DiskFullError(OSError):
    """A write found no room on its filesystem; the target file was left as it was.

    Attributes:
        path: the file that was being written.
        needed: bytes the whole file needs as far as the writer knows (a checkpoint: its
            tensors' bytes, 99.6 % of the file for the tiny CPU model); None if unknown.
        written: bytes of it on disk when the filesystem filled up.
        free: bytes free on that filesystem afterwards.
    """

    def __init__(self, path: Path, needed: int | None, written: int, free: int | None, code: int) -> None:
        super().__init__(code, os.strerror(code), str(path))
        self.path, self.needed, self.written, self.free = path, needed, written, free

    def __str__(self) -> str:
        need = (f"it needs about {format_bytes(self.needed)} ({self.needed} bytes)" if self.needed is not None
                else f"{format_bytes(self.written)} were written when the disk filled")
        free = f", {format_bytes(self.free)} free there" if self.free is not None else ""
        kept = f"the previous {self.path.name} is intact" if self.path.exists() else f"no {self.path.name} was written"
        return (
            f"{self.strerror} writing {self.path}: {need}{free}. Nothing half-written was left ({kept}). "
            f"Fix: free space on that filesystem or write to a larger one, then run the same command again"
        )


@contextmanager
def atomic_path(path: str | Path, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    Write the file under the yielded name (any library that takes a path can). When the block
    finishes, the data is fsynced and renamed onto ``path`` (atomic on POSIX within one
    filesystem); on an exception the temporary file is removed and ``path`` is untouched.
    The name is unique per process and call, so concurrent writers never share a temp file,
    and the file gets the usual umask permissions (``tempfile.mkstemp`` would make it 0600).

    A full disk (``ENOSPC``, ``EDQUOT``) raises :class:`DiskFullError`, which says how much
    was needed (``size_hint``: the size the writer expects, if it knows it) and how much is free.

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
    except Exception as err:
        full = _no_space(err)
        if full is None:
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)  # give the space back before measuring what is free
        try:
            free: int | None = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        raise DiskFullError(path, size_hint, written, free, full.errno) from err
    finally:
        tmp.unlink(missing_ok=True)


def _no_space(err: BaseException) -> OSError | None:
    """The "no space" OSError behind ``err``: writers may wrap it (``torch.save``'s zip writer
    raises ``RuntimeError: unexpected pos`` from its cleanup, the ENOSPC as its context)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, DiskFullError):
            return None  # already explained (nested atomic writes)
        if isinstance(cause, OSError) and cause.errno in _NO_SPACE:
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    data = text.encode()
    with atomic_path(path, size_hint=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def clean_stale_temp_files(directory: str | Path) -> list[Path]:
    """Remove the temporary files (``.<name>.<pid>.<hex>.tmp``) of writers that were killed.

    Only files whose process is gone are removed: a live writer's file is in use. Returns
    the removed paths.
    """
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        parts = tmp.name.split(".")
        pid = parts[-3] if len(parts) >= 4 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
