"""What the benchmark scripts say of the CPU they ran on, from /proc/cpuinfo where it exists."""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _first(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo, None without one."""
    if not CPUINFO.is_file():
        return None
    for line in CPUINFO.read_text().splitlines():
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    return _first("model name") or platform.processor() or platform.machine()


def bf16_units() -> str:
    """The CPU's bf16 instruction sets; "unknown" without /proc/cpuinfo."""
    flags = _first("flags")
    if flags is None:
        return "unknown"
    return ", ".join(flag for flag in BF16_FLAGS if flag in flags.split()) or "none"
