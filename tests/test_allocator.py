"""Training steps reuse freed memory instead of faulting it back in from the kernel.

.venv/bin/python tests/test_allocator.py    # page faults a step, with and without it
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Trains PRM at the PRM authors' size in bf16 for 12 steps and prints the median page faults
# a step from the fourth on (the first steps fault in their memory once);
# "default" stops the trainer from changing malloc's settings.
STEPS = """
import resource, sys, tempfile
import numpy as np
from prm.config import PRMConfig, TrainConfig
from prm.data.batch import ListDataset
from prm.data.streaming import InMemoryLists
from prm.registry import ModelSpec
from prm.training import trainer

if sys.argv[1] == "default":
    trainer.keep_freed_memory = lambda: None
n, length, rng = 12 * 512, 30, np.random.default_rng(0)
labels = np.zeros((n, length), np.float32)
labels[:, 0] = 1
lists = InMemoryLists(ListDataset(
    features=rng.standard_normal((n, length, 60), dtype=np.float32),
    pv=np.zeros((n, length, 0), np.float32), mask=np.ones((n, length), bool), labels=labels,
    positions=np.tile(np.arange(length), (n, 1)), user_ids=np.arange(n), list_ids=np.arange(n),
    item_ids=np.zeros((n, length), np.int64)))
spec = ModelSpec.of("prm", PRMConfig(d_model=64, n_heads=1, n_blocks=2, d_ff=128), 60, 0)
with tempfile.TemporaryDirectory() as run_dir:
    run = trainer.Trainer(spec, TrainConfig(batch_size=512, precision="bf16"), run_dir,
                          progress=False)
    faults, adam_step = [], run.optimizer.step

    def counted_step(*args, **kwargs):
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        return adam_step(*args, **kwargs)

    run.optimizer.step = counted_step
    run.train_epoch(lists, 1)
    print(np.median(np.diff(faults[3:])))
"""


def faults_per_step(setting: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", STEPS, setting], check=True, capture_output=True, text=True
    )
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_training_steps_fault_no_memory_back_in() -> None:
    """With malloc's defaults a step's freed memory went back to the kernel and every step
    faulted it in again: 675 to 4,754 pages a step on a 2-core Xeon."""
    kept = faults_per_step("keep")
    assert kept < 50, f"{kept} page faults a step"


if __name__ == "__main__":
    for setting in ("default", "keep"):
        print(f"{setting}: {faults_per_step(setting):.0f} page faults a step (median)")
