"""The CPU runtime's allocator setting: memory a meta-step frees stays in the process for the next one.

A meta-step on the CPU allocates and frees the same large buffers every time (a Hessian-vector product's
graph and results, the solver's vectors, the FT unroll's graph). glibc's malloc serves a block at or above
its mmap threshold (128 KiB at first, then raised to the largest block freed) with a fresh mmap, and gives
the top of its heap back to the system once more than its trim threshold (twice the mmap threshold) is
free there; either way the next meta-step writes to fresh pages, one page fault per 4 KiB: about 10^4 per
meta-step at width 1024 of the reference benchmark, while its plain PT steps fault none
(benchmarks/RESULTS.md). `keep_freed_memory` sets the mmap threshold to 32 MiB (glibc's largest) and
the trim threshold to 1 GiB, so such blocks come from the heap and stay there between meta-steps, as a
caching allocator keeps them (the process's peak memory is unchanged; it is not given back before exit).

It does nothing where the C library is not glibc, where the user set either threshold through glibc's own
environment variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_: theirs stand), or
where another allocator is preloaded (LD_PRELOAD naming a malloc: jemalloc, tcmalloc, mimalloc).
`mptc run` calls it for a run on the CPU (runtime/executor.py); the benchmarks call it before timing, so
the hand-written implementations and the plain loop they are divided by run under it too.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20                        # glibc's ceiling on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Sets glibc's thresholds once per process (module docstring); whether they are set."""
    global _applied
    if _applied is None:
        _applied = _set() if _applies() else False
    return _applied


def _applies() -> bool:
    if not GLIBC:
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    return "malloc" not in os.environ.get("LD_PRELOAD", "")


def _set() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
