"""Peak memory of a stretch of inference, on CPU or CUDA, above where it started.

Used by the benchmark (``bench.py``, one fresh process per point) and by the evaluation
profiler callback (:class:`mematte.callbacks.InferenceProfiler`, test-time figures logged with
the metrics).

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only,
  not the caching allocator's reserve or the CUDA context), minus what was allocated at the
  start.
* CPU: the process's resident high-water mark (``VmHWM``), reset through
  ``/proc/self/clear_refs`` (Linux ≥ 4.0), minus the resident size at the start. Where the
  reset is not available the never-reset ``ru_maxrss`` is used, which can only overstate.
  Before the baseline, memory the process freed but still holds (glibc keeps freed heap
  pages resident and reuses them) is handed back with ``malloc_trim``: otherwise, in a
  process that trained a moment ago, a forward pass fits into that freed memory and the
  resident size does not grow at all.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import resource
import sys
from pathlib import Path

import torch

__all__ = ["read_status_bytes", "release_free_memory", "reset_peak_rss", "peak_rss_bytes", "PeakMemory"]


def read_status_bytes(field_name: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (Linux), e.g. ``VmRSS``, ``VmHWM``, ``VmSize``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@functools.cache
def _malloc_trim() -> object | None:
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim(0)``); False if unsupported.

    Afterwards the resident size is (nearly) what live objects use, so growth above it is
    memory a computation really needed.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux ≥ 4.0); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return read_status_bytes("VmHWM") is not None


def peak_rss_bytes(reset_ok: bool) -> int:
    """Peak resident memory of this process since the last reset (or since it started)."""
    if reset_ok:
        hwm = read_status_bytes("VmHWM")
        if hwm is not None:
            return hwm
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """Peak memory growth on ``device`` between :meth:`start` and :meth:`peak_bytes`.

    Example::

        meter = PeakMemory(torch.device("cuda"))
        meter.start()
        net(image, trimap)
        grown = meter.peak_bytes()  # bytes above what was in use at start()
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.baseline_bytes = 0
        self._reset_ok = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def start(self, collect: bool = True) -> int:
        """Settle, record the baseline and reset the high-water mark; returns the baseline.

        Args:
            collect: run Python's garbage collector first (CPU), so that unreachable tensors
                are not counted in the baseline. A full collection scans every live object
                (~0.3 s in a process with torch and Lightning loaded): fine once per benchmark
                point, too slow once per image of an evaluation.
        """
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
        else:
            if collect:
                gc.collect()
            release_free_memory()
            self.baseline_bytes = read_status_bytes("VmRSS") or peak_rss_bytes(False)
            self._reset_ok = reset_peak_rss()
        return self.baseline_bytes

    def peak_bytes(self) -> int:
        """Highest use since :meth:`start`, minus the baseline (≥ 0)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = peak_rss_bytes(self._reset_ok)
        return max(peak - self.baseline_bytes, 0)
