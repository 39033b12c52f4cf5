"""Freed tensor memory kept in the process between training steps.

glibc's malloc hands large blocks back to the kernel when they are freed (blocks served by
``mmap``, and the heap's top beyond a trim threshold that it adjusts on the fly). A training
step allocates and frees the same tens of megabytes every time, so the next step faults them
back in, page by page, each page zeroed by the kernel: 1,150 to 2,100 page faults a step at the
PRM authors' size in bf16 on a 2-core Xeon (tests/test_allocator.py; the speed it gives back is
in benchmarks/RESULTS.md, "Training speed against allRank"). :func:`keep_freed_memory` raises
both limits, so those blocks stay with the process for the next step. Without glibc (macOS,
Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest; bigger blocks are still mapped and unmapped
TRIM_THRESHOLD = 256 * 2**20  # freed memory at the heap's top kept before handing any back


def keep_freed_memory() -> bool:
    """Keep blocks up to 32 MiB, and up to 256 MiB of freed heap, in the process; whether the
    C library took the settings (False without glibc's ``mallopt``)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
