"""Peak memory of one call: CUDA max allocated on GPU, peak RSS growth on CPU (Linux)."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib() -> dict[str, int]:
    out = {}
    for line in _STATUS.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere): hands freed heap pages back to the OS."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _can_reset_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return "VmHWM" in _status_kib()
    except OSError:
        return False


class PeakMemory:
    """Measure around a call: ``with tracker: ...`` then ``tracker.peak_bytes`` (None if unknown).

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset (weights included).
    CPU: growth of the resident set during the call: the peak RSS (VmHWM, reset through
    ``/proc/self/clear_refs``) minus the RSS before; no tracemalloc, so no slowdown. Freed heap
    pages are first handed back with ``malloc_trim(0)`` (glibc), or the allocator's free lists
    would hide the call's working set after the first call.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.available = self.cuda or _can_reset_rss()
        self.peak_bytes: int | None = None
        self._before = 0
        self._trim = None if self.cuda else _malloc_trim()

    @property
    def method(self) -> str:
        if self.cuda:
            return "cuda max_memory_allocated (bytes, weights included)"
        if self.available:
            trim = "malloc_trim(0), then " if self._trim is not None else ""
            return f"cpu peak RSS growth during the call ({trim}VmHWM after clear_refs minus VmRSS before)"
        return "unavailable"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.available:
            if self._trim is not None:
                self._trim(0)
            _CLEAR_REFS.write_text("5")
            self._before = _status_kib()["VmRSS"]
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.available:
            self.peak_bytes = max(0, _status_kib()["VmHWM"] - self._before) * 1024
