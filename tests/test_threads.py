"""The load follower: threads drop to the cores other processes leave free, and come back."""

from __future__ import annotations

import types

import pytest
import torch

from prm import threads


class FakeMachine:
    """Two cores; each ``tick`` moves the clock by a second during which this process used
    ``own`` CPU-seconds and other processes ``others``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wall = self.busy = self.own = 0.0
        clock = types.SimpleNamespace(monotonic=lambda: self.wall, process_time=lambda: self.own)
        monkeypatch.setattr(threads, "time", clock)
        monkeypatch.setattr(threads, "busy_cpu_seconds", lambda: 1000.0 + self.busy)
        monkeypatch.delenv(threads.THREADS_ENV, raising=False)

    def tick(self, own: float, others: float) -> None:
        self.wall += 1.0
        self.own += own
        self.busy += own + others


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_threads_follow_the_cores_other_processes_leave(monkeypatch, two_threads) -> None:
    machine = FakeMachine(monkeypatch)
    follower = threads.LoadFollower()
    follower.cores = 2
    follower()  # the first call records the ceiling, 2
    machine.tick(own=2.0, others=0.0)  # idle machine: stays at 2
    follower()
    assert torch.get_num_threads() == 2
    machine.tick(own=1.3, others=0.7)  # a busy process shares the cores: drop to 1
    follower()
    assert torch.get_num_threads() == 1
    machine.tick(own=1.0, others=1.0)  # still there
    follower()
    assert torch.get_num_threads() == 1
    machine.tick(own=1.0, others=0.05)  # gone: back to the ceiling
    follower()
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)  # someone else chose 1 (a config's threads): the new ceiling
    follower()
    machine.tick(own=1.0, others=0.0)
    follower()
    assert torch.get_num_threads() == 1


def test_fixed_threads_from_the_environment(monkeypatch, two_threads) -> None:
    machine = FakeMachine(monkeypatch)
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    follower = threads.LoadFollower()
    follower()
    assert torch.get_num_threads() == 1
    machine.tick(own=1.0, others=0.0)
    follower()
    assert torch.get_num_threads() == 1  # no change with an idle machine either
    monkeypatch.setenv(threads.THREADS_ENV, "two")
    with pytest.raises(ValueError, match="PRM_THREADS must be a whole number"):
        threads.fixed_threads()


def test_busy_seconds_grow_on_this_machine() -> None:
    first = threads.busy_cpu_seconds()
    if first is None:
        pytest.skip("no /proc/stat here")
    sum(i * i for i in range(300_000))
    assert threads.busy_cpu_seconds() >= first
