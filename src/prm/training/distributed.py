"""One training process per device: launching them, and the few collectives the trainer uses.

Three ways to run: one plain process (no process group; every helper below then acts on
this process alone), ``launch(n, ...)`` spawning ``n`` processes on this machine, or
``torchrun`` (any number of machines, see docs/scaling.md), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous that ``init_process_group`` reads.
Backends: gloo for CPU processes, nccl for one GPU per process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prm.config import ConfigError


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(nproc: int, fn: Callable[..., None], *args: Any, backend: str) -> None:
    """Run ``fn(*args)`` in every process of a process group.

    In a process group already, or started by torchrun, this process is one member and the
    group's size was set there; otherwise ``nproc`` processes are spawned on this machine
    (``fn`` and ``args`` must pickle), or ``fn`` runs here alone when ``nproc`` is 1.
    """
    if nproc < 1:
        raise ConfigError(f"the process count must be at least 1, got {nproc}")
    if nproc != 1 and (dist.is_initialized() or under_torchrun()):
        raise ConfigError("already in a process group (torchrun?): set its size where it starts")
    if dist.is_initialized():
        fn(*args)
    elif under_torchrun():
        _member(fn, args, backend)
    elif nproc == 1:
        fn(*args)
    else:
        mp.spawn(_spawned, args=(nproc, _free_port(), backend, fn, args), nprocs=nproc)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _spawned(
    rank: int, world: int, port: int, backend: str, fn: Callable[..., None], args: tuple
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // world)
    )  # share the cores, not oversubscribe
    _member(fn, args, backend)


def _member(fn: Callable[..., None], args: tuple, backend: str) -> None:
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def device(name: str) -> torch.device:
    """``name`` as a device; plain "cuda" in a process group means this process's own GPU."""
    if name == "cuda" and dist.is_initialized():
        return torch.device("cuda", local_rank())
    return torch.device(name)


def gather_to_first(value: Any) -> list[Any] | None:
    """Every process's ``value``, in rank order, on rank 0; None elsewhere."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * world_size() if rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def broadcast_from_first(value: Any) -> Any:
    """Rank 0's ``value`` on every process (the others pass anything, e.g. None)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over processes, in place."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor
