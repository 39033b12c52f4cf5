"""Freed tensor memory kept in the process between training steps.

glibc's malloc hands large blocks back to the kernel when they are freed (blocks served by
``mmap``, and the heap's top beyond a trim threshold that it adjusts on the fly). A training
step allocates and frees the same tens of megabytes every time, so the next step faults them
back in, page by page, each page zeroed by the kernel: 675 to 4,754 page faults a step at the
PRM authors' size in bf16 on a 2-core Xeon, 0 with :func:`keep_freed_memory` (five runs of
``python tests/test_allocator.py``; the speed it gives back is in benchmarks/RESULTS.md,
"Training speed against allRank"). :func:`keep_freed_memory` raises
both limits, so those blocks stay with the process for the next step. Without glibc (macOS,
Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest; bigger blocks are still mapped and unmapped
TRIM_THRESHOLD = 256 * 2**20  # freed memory at the heap's top kept before handing any back


@functools.cache
def keep_freed_memory() -> bool:
    """Keep blocks up to 32 MiB, and up to 256 MiB of freed heap, in the process; whether the
    C library took the settings (False without glibc's ``mallopt``). The settings hold for the
    whole process, so they are made once however many trainers start."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, TypeError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
