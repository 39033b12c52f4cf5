"""PRM's training throughput as a share of this machine's matmul peak, beside a bare encoder's.

    .venv/bin/python benchmarks/train_throughput.py                 # CPU, eager (~3 min here)
    .venv/bin/python benchmarks/train_throughput.py --compile       # adds torch.compile rows
    .venv/bin/python benchmarks/train_throughput.py --device cuda   # fp32 and bf16 rows

FLOPs per list (a multiply-add is 2 FLOPs), for L items, d = d_model, d_ff, d_in = d_feature +
d_pv and N encoder blocks, forward pass:

    input layer   2 L d_in d                         E = [X; PV] W^E
    per block     6 L d^2                            Q, K, V projections
                  2 L^2 d + 2 L^2 d                  Q K^T and (attention weights) V
                  2 L d^2                            output projection W^O
                  4 L d d_ff                         FFN, two layers
    output layer  2 L d                              F W^F

and training (forward + backward) counts 3 times that. LayerNorm, softmax, dropout, residuals,
the embedding lookup and Adam are left out: they are the overhead the ratio exposes.

Each row times, for one (L, d_model, blocks) size:

* PRM: ``Trainer.train_epoch`` end to end on synthetic lists in a ``ListDataset``: batch
  assembly from NumPy, the prefetch thread, the copy to the device, forward, loss, backward,
  fused Adam. Batches hold 7680 items (256 lists of 30, 76 of 100).
* encoder: a bare training step of ``nn.TransformerEncoder`` of the same size (post-norm, same
  heads, d_ff, dropout), with the same input and output layers, loss and optimizer, on one batch
  already on the device: the reference for what the framework reaches without our code.
* peak: the best rate of ``torch.matmul`` on square fp32 (or bf16) matrices, measured just
  before the row, since the clock and the load from other jobs drift during a run.

Rates are the best of ``--repeats`` windows of about ``--seconds`` each, which filters out
bursts of load from other processes. OpenMP's wait policy matters on a shared CPU: run once
as is and once with ``OMP_WAIT_POLICY=PASSIVE`` (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prm.config import PRMConfig, TrainConfig
from prm.data.batch import ListDataset
from prm.data.streaming import InMemoryLists
from prm.registry import ModelSpec
from prm.training.losses import softmax_cross_entropy
from prm.training.trainer import Trainer

SIZES = [(length, d, blocks) for length in (30, 100) for d in (64, 256) for blocks in (1, 4)]
ITEMS_PER_BATCH = 7680
D_FEATURE, D_PV = 28, 32  # the simulator's item features (20 topics + 8 dense), DeepFM's PV
DROPOUT = 0.1  # PRMConfig's default


@dataclass(frozen=True)
class Size:
    length: int
    d_model: int
    blocks: int
    n_heads: int = 0  # 0: d_k = 32, as PRMConfig's defaults (64, 2 heads)
    lists_per_batch: int = 0  # 0: ITEMS_PER_BATCH items a batch

    @property
    def d_ff(self) -> int:
        return 2 * self.d_model  # PRMConfig's default ratio (128 for 64)

    @property
    def heads(self) -> int:
        return self.n_heads or self.d_model // 32

    @property
    def batch(self) -> int:
        return self.lists_per_batch or ITEMS_PER_BATCH // self.length

    def spec(self) -> ModelSpec:
        """PRM of this size, on the simulator's item features and DeepFM's PV."""
        config = PRMConfig(
            d_model=self.d_model,
            n_heads=self.heads,
            n_blocks=self.blocks,
            d_ff=self.d_ff,
            dropout=DROPOUT,
        )
        return ModelSpec.of("prm", config, D_FEATURE, D_PV)

    def training_flops_per_list(self) -> int:
        """3 x the forward FLOPs of the module docstring."""
        length, d, d_in = self.length, self.d_model, D_FEATURE + D_PV
        block = 8 * length * d * d + 4 * length * length * d + 4 * length * d * self.d_ff
        return 3 * (2 * length * d_in * d + self.blocks * block + 2 * length * d)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(window: Callable[[], int], device: torch.device, repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` calls of ``window`` (which returns items)."""
    best = 0.0
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        items = window()
        synchronize(device)
        best = max(best, items / (time.perf_counter() - started))
    return best


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of the fastest of ``repeats`` square matmuls (after one warm-up)."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

    def one_matmul() -> int:
        torch.matmul(a, b)
        return 1

    one_matmul()
    return 2 * n**3 * best_rate(one_matmul, device, repeats)


def synthetic_lists(n: int, length: int, rng: np.random.Generator) -> ListDataset:
    """Full lists with random features and PV, and about 10% clicks."""
    labels = (rng.random((n, length)) < 0.1).astype(np.float32)
    labels[:, 0] = 1.0  # every list has a click, so none is filtered out
    return ListDataset(
        features=rng.standard_normal((n, length, D_FEATURE), dtype=np.float32),
        pv=rng.standard_normal((n, length, D_PV), dtype=np.float32),
        mask=np.ones((n, length), dtype=bool),
        labels=labels,
        positions=np.broadcast_to(np.arange(length), (n, length)).copy(),
        user_ids=np.arange(n),
        list_ids=np.arange(n),
        item_ids=np.zeros((n, length), dtype=np.int64),
    )


def window_steps(step_seconds: float, seconds: float) -> int:
    return max(2, math.ceil(seconds / step_seconds))


def prm_rate(size: Size, config: TrainConfig, seconds: float, repeats: int) -> float:
    """Lists per second of ``Trainer.train_epoch``."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(size.spec(), config, run_dir, progress=False)
        warm = InMemoryLists(synthetic_lists(2 * size.batch, size.length, rng))
        trainer.train_epoch(warm, 0)  # compiles, when compiling
        started = time.perf_counter()
        trainer.train_epoch(warm, 0)
        steps = window_steps((time.perf_counter() - started) / 2, seconds)
        lists = InMemoryLists(synthetic_lists(steps * size.batch, size.length, rng))

        def epoch() -> int:
            trainer.train_epoch(lists, 0)
            return len(lists)

        return best_rate(epoch, trainer.device, repeats)


class BareEncoder(nn.Module):
    """Input layer, ``nn.TransformerEncoder``, output layer: PRM without our code."""

    def __init__(self, size: Size) -> None:
        super().__init__()
        self.input = nn.Linear(D_FEATURE + D_PV, size.d_model)
        layer = nn.TransformerEncoderLayer(
            size.d_model, size.heads, size.d_ff, DROPOUT, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, size.blocks, enable_nested_tensor=False)
        self.output = nn.Linear(size.d_model, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, d_in), (B, L) bool -> (B, L) logits."""
        hidden = self.encoder(self.input(x), src_key_padding_mask=~mask)  # (B, L, d)
        return self.output(hidden).squeeze(-1)  # (B, L)


def encoder_rate(size: Size, config: TrainConfig, seconds: float, repeats: int) -> float:
    """Lists per second of a bare ``nn.TransformerEncoder`` training step."""
    device = torch.device(config.device)
    torch.manual_seed(0)
    model = BareEncoder(size).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    data = synthetic_lists(size.batch, size.length, np.random.default_rng(0))
    x = torch.cat([torch.from_numpy(data.features), torch.from_numpy(data.pv)], -1).to(device)
    mask = torch.from_numpy(data.mask).to(device)
    labels = torch.from_numpy(data.labels).to(device)

    def loss_of(x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, torch.bfloat16, enabled=config.precision == "bf16"):
            return softmax_cross_entropy(model(x, mask), labels, mask=mask)

    loss_fn = torch.compile(loss_of) if config.compile else loss_of

    def steps(n: int) -> int:
        for _ in range(n):
            loss = loss_fn(x, mask, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return n * size.batch

    steps(1)  # compiles, when compiling
    synchronize(device)
    started = time.perf_counter()
    steps(2)
    synchronize(device)
    n = window_steps((time.perf_counter() - started) / 2, seconds)
    return best_rate(lambda: steps(n), device, repeats)


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile rows")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a timed window")
    parser.add_argument("--repeats", type=int, default=2, help="timed windows per rate")
    parser.add_argument("--sizes", help="rows to run, e.g. 30x256x4,100x256x4 (L x d x blocks)")
    args = parser.parse_args()
    device = torch.device(args.device)
    chosen = [map(int, s.split("x")) for s in args.sizes.split(",")] if args.sizes else SIZES
    sizes = [Size(*size) for size in chosen]
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    modes = [False, True] if args.compile else [False]
    started, load_start = time.perf_counter(), load_average()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print()
    print(
        "| L | d_model | blocks | batch | mode | precision | PRM lists/s | PRM GFLOP/s "
        "| PRM % of peak | encoder lists/s | encoder % of peak | matmul peak GFLOP/s |"
    )
    print("|" + "---|" * 12)
    for size in sizes:
        for compile_ in modes:
            for precision in precisions:
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                peak = matmul_peak(device, dtype, args.repeats + 1)
                config = TrainConfig(
                    batch_size=size.batch,
                    device=args.device,
                    precision=precision,
                    compile=compile_,
                )
                prm = prm_rate(size, config, args.seconds, args.repeats)
                encoder = encoder_rate(size, config, args.seconds, args.repeats)
                flops = size.training_flops_per_list()
                print(
                    f"| {size.length} | {size.d_model} | {size.blocks} | {size.batch} "
                    f"| {'compiled' if compile_ else 'eager'} | {precision} | {prm:.0f} "
                    f"| {prm * flops / 1e9:.1f} | {100 * prm * flops / peak:.0f}% "
                    f"| {encoder:.0f} | {100 * encoder * flops / peak:.0f}% | {peak / 1e9:.1f} |",
                    flush=True,
                )
    print()
    print(
        f"wall time {time.perf_counter() - started:.0f} s; load average (1 min) at start / end: "
        f"{load_start} / {load_average()}"
    )


if __name__ == "__main__":
    main()
