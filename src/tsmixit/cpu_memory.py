"""Opt-in: keep freed CPU memory in the process instead of handing it back to the kernel.

PyTorch's CPU allocator is the C library's ``malloc``. glibc serves every block above its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it when freed, so each training
step of a recurrent separator (BiLSTM gates and oneDNN workspaces of tens of MiB) touches new
pages and the kernel faults and zeroes every 4 KiB of them again, step after step. With
``TSMIXIT_MALLOC=keep`` training switches glibc's mmap off (``M_MMAP_MAX = 0``) and trims the
heap only beyond ``TRIM_THRESHOLD``: those blocks come from the heap and are reused, already
mapped. The price is memory: freed blocks of varying sizes fragment the heap, so the peak
resident memory of a recurrent separator grows by about half. Hence opt-in.

This is glibc's own knob (``mallopt``), set through ctypes because jemalloc or tcmalloc, the
usual answer, must be preloaded before the interpreter starts, which a pip package cannot do;
PyTorch's huge-page option (``THP_MEM_ALLOC_ENABLE``) was measured too and slowed the
convolutional separators. Elsewhere than glibc nothing changes.
``benchmarks/bench_cpu_memory.py`` measures both settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import lru_cache

log = logging.getLogger(__name__)

MALLOC_ENV = "TSMIXIT_MALLOC"
"""Environment variable: "default" (glibc as it is) or "keep" (freed memory stays mapped)."""

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
M_MMAP_MAX = -4

TRIM_THRESHOLD = 1 << 30
"""Free memory at the top of the heap beyond this (bytes) still goes back to the kernel."""


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Apply MALLOC_ENV once per process (see the module's docstring); True when freed
    memory is now kept."""
    mode = os.environ.get(MALLOC_ENV, "default").strip().lower()
    if mode not in ("keep", "default"):
        log.warning("%s=%r is neither 'keep' nor 'default': malloc left as it is",
                    MALLOC_ENV, mode)
        return False
    if mode == "default":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt
        log.warning("%s=keep: this C library has no mallopt; malloc left as it is", MALLOC_ENV)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
