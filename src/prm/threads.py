"""Intra-op threads that follow the machine's load.

On a shared machine another process may hold a core. OpenMP threads that wait at every
barrier for a thread that is not running then waste their time slices: beside one busy
process, training on 2 cores ran 3-4 times slower than idle (benchmarks/RESULTS.md, "Training
beside a busy process"). One thread never collapses but gives up to a third of the idle
speed. :class:`LoadFollower` keeps as many threads as the other processes leave cores free,
re-checked twice a second from the kernel's CPU counters, so an idle machine runs as before
and a busy one drops to the threads it can actually run.

Set ``PRM_THREADS=N`` to fix the count instead (thread counts change floating-point
summation order, so a fixed count is what reproduces a run bit for bit on a loaded machine).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

THREADS_ENV = "PRM_THREADS"
CPU_COUNTERS = Path("/proc/stat")
CHECK_EVERY = 0.5  # seconds between looks at the load
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (idle, iowait not)


def fixed_threads() -> int | None:
    """``$PRM_THREADS`` as a count, None when unset; a clear error when it is not one."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${THREADS_ENV} must be a whole number >= 1, got {value!r}")
    return int(value)


def busy_cpu_seconds() -> float | None:
    """CPU-seconds all cores have spent busy since boot; None where the counters are not
    readable (not Linux), in which case the thread count is left alone."""
    try:
        first_line = CPU_COUNTERS.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first_line or first_line[0] != "cpu":
        return None
    ticks = [int(first_line[1 + i]) for i in BUSY_FIELDS if 1 + i < len(first_line)]
    return sum(ticks) / os.sysconf("SC_CLK_TCK")


class LoadFollower:
    """Call it once per training step: every ``CHECK_EVERY`` seconds it measures how many cores
    other processes kept busy since the last look (all busy time minus this process's own CPU
    time) and sets torch's intra-op threads to the cores left free: at least 1, at most the
    count in force before it first lowered it. A count set by anyone else (a config's
    ``threads``, ``torch.set_num_threads``) becomes the new ceiling."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self.ceiling = 0  # the most threads to use; 0 until the first call
        self.chosen = 0  # the count this follower set last
        self.last = (0.0, 0.0, 0.0)  # (wall, busy CPU, own CPU) seconds at the last look
        self.changes = 0  # how often it changed the count (none on an idle machine)

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        return time.monotonic(), busy_cpu_seconds() or 0.0, time.process_time()

    def __call__(self) -> None:
        current = torch.get_num_threads()
        if current != self.chosen:  # the first call, or someone else set the count
            fixed = fixed_threads()
            if fixed is not None and fixed != current:
                torch.set_num_threads(fixed)
            self.ceiling = self.chosen = torch.get_num_threads()
            self.last = self._sample()
            return
        if time.monotonic() - self.last[0] < CHECK_EVERY or fixed_threads() is not None:
            return
        sample = self._sample()
        wall, busy, own = (now - then for now, then in zip(sample, self.last, strict=True))
        self.last = sample
        if sample[1] == 0.0:  # no counters on this system: leave the count alone
            return
        others = max(0.0, (busy - own) / wall)  # cores other processes kept busy
        # Half a core of others' work (daemons, the hypervisor's steal) is not worth a thread.
        self.chosen = max(1, min(self.ceiling, round(self.cores - others)))
        if self.chosen != current:
            torch.set_num_threads(self.chosen)
            self.changes += 1


follow_load = LoadFollower()  # one per process: torch's thread count is process-wide
