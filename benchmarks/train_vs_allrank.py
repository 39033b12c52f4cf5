"""PRM's training speed against allRank's at the PRM authors' size, alternated in one run.

    .venv/bin/python benchmarks/train_vs_allrank.py --setup-allrank /tmp/allrank-env   # once
    .venv/bin/python benchmarks/train_vs_allrank.py --allrank-python /tmp/allrank-env/bin/python

The size is the PRM paper's (Pei et al. 2019, Section 5): lists of 30, d_model 64, 2 blocks,
1 head, d_ff 128, batch 512, dropout 0.1, 60 input features (28 item features + 32 PV). Each
round times, one after the other so that the machine's drift lands on all alike:

* allRank: ``benchmarks/allrank_step.py`` in allRank's own environment (allRank 1.4.3 pins
  torch <= 1.8, which has no wheel for this Python: it gets this torch, ``setuptools<81`` for
  its ``pkg_resources`` and a stand-in for ``torchvision.transforms.Compose``, the one name it
  imports from torchvision). Model, loss and Adam on one batch in memory.
* PRM: ``Trainer.train_epoch`` end to end (batch assembly, prefetch thread, learning-rate
  schedule, load following), with ``--precision fp32`` and ``bf16`` (a bf16 copy of the model
  takes the step, Adam updates fp32 master weights: ``prm/training/precision.py``).

Prints each rate's median over rounds, its ratio to allRank's, and its FLOP rate against this
CPU's fp32 and bf16 matmul peaks (measured after the rounds). Without ``--allrank-python`` the
reference is a bare ``nn.TransformerEncoder`` step of the same size (the proxy the issue allows
when allRank cannot be installed). ``--kernels`` prints instead where a trainer step's time
goes in each precision (torch.profiler) and the kernels that differ between them, timed alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prm.config import TrainConfig
from prm.data.streaming import InMemoryLists
from prm.models import layers
from prm.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from machine import bf16_units, cpu_name  # noqa: E402
from train_throughput import (  # noqa: E402
    D_FEATURE,
    D_PV,
    DROPOUT,
    Size,
    encoder_rate,
    matmul_peak,
    prm_rate,
    synthetic_lists,
)

# The PRM paper's size: d_ff 2 d_model = 128; dropout 0.1 and 28 + 32 input features as
# train_throughput.py's rows.
AUTHORS = Size(length=30, d_model=64, blocks=2, n_heads=1, lists_per_batch=512)
REPEATS = 2  # timed windows per rate; the best is kept
PEAK_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
PEAK_DTYPES = tuple(PEAK_NAMES)
ALLRANK_REQUIREMENTS = [
    *("torch==2.13.0", "numpy", "attrs", "scikit-learn", "setuptools<81", "gcsfs")
]
COMPOSE_STAND_IN = '''"""Stand-in for torchvision.transforms: allRank imports Compose."""


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x
'''


def setup_allrank(env: Path) -> None:
    """A virtual environment with allRank 1.4.3 that imports and trains on this torch."""
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *ALLRANK_REQUIREMENTS], check=True)
    subprocess.run([*pip, "--no-deps", "allRank==1.4.3"], check=True)
    site = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    stand_in = Path(site) / "torchvision"
    stand_in.mkdir(exist_ok=True)
    (stand_in / "__init__.py").write_text("from . import transforms  # noqa: F401\n")
    (stand_in / "transforms.py").write_text(COMPOSE_STAND_IN)
    print(f"allRank ready: --allrank-python {env / 'bin' / 'python'}")


def allrank_rate(python: str, seconds: float) -> float:
    """Lists per second of allRank's step, timed in its own environment."""
    script = Path(__file__).with_name("allrank_step.py")
    arguments = {
        "--length": AUTHORS.length,
        "--d-model": AUTHORS.d_model,
        "--blocks": AUTHORS.blocks,
        "--heads": AUTHORS.heads,
        "--d-ff": AUTHORS.d_ff,
        "--batch": AUTHORS.batch,
        "--features": D_FEATURE + D_PV,
        "--dropout": DROPOUT,
        "--seconds": seconds,
        "--threads": torch.get_num_threads(),
    }
    command = [python, "-W", "ignore", str(script)]
    command += [str(part) for pair in arguments.items() for part in pair]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["lists_per_second"]


def kernel_report() -> None:
    """Where a trainer step goes in each precision, and the kernels that differ, timed alone."""
    from torch.profiler import ProfilerActivity, profile

    groups = {
        "matrix products (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
        "dropout masks (bernoulli_; random_, bitwise_and, ge)": (
            *("aten::bernoulli_", "aten::random_", "aten::bitwise_and", "aten::ge"),
        ),
        "attention (fused kernel; softmax)": ("scaled_dot_product", "softmax"),
        "layer norm": ("layer_norm",),
    }
    shares: dict[str, dict[str, float]] = {}
    for precision in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as run_dir:
            config = TrainConfig(batch_size=AUTHORS.batch, precision=precision)
            trainer = Trainer(AUTHORS.spec(), config, run_dir, progress=False)
            rng = np.random.default_rng(0)
            lists = InMemoryLists(synthetic_lists(20 * AUTHORS.batch, AUTHORS.length, rng))
            trainer.train_epoch(lists, 0)
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                trainer.train_epoch(lists, 0)
        events = profiled.key_averages()
        total = sum(event.self_cpu_time_total for event in events)
        column = {"ms a step": total / 20 / 1e3}
        for name, keys in groups.items():
            share = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys))
            column[name] = share / total
        column["everything else"] = 1 - sum(column[name] for name in groups)
        shares[precision] = column
    print("Self CPU time of 20 trainer steps, torch.profiler (times include its overhead):\n")
    print("| operations | fp32 | bf16 |\n|---|---|---|")
    for name in shares["fp32"]:
        cells = [shares[p][name] for p in ("fp32", "bf16")]
        text = [f"{c:.1f}" if name == "ms a step" else f"{100 * c:.0f}%" for c in cells]
        print(f"| {name} | {text[0]} | {text[1]} |")

    def ms(call: Callable[[], object]) -> float:
        for _ in range(3):
            call()
        times = []
        for _ in range(30):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return 1e3 * float(np.median(times))

    shape = (AUTHORS.batch, AUTHORS.length, AUTHORS.d_model)
    print("\nKernels alone, milliseconds a call (median of 30):\n")
    print("| kernel | fp32 | bf16 |\n|---|---|---|")
    masks = [
        ms(lambda: torch.empty(shape).bernoulli_(1 - DROPOUT)),
        ms(lambda: layers.Dropout(DROPOUT).train()(torch.ones(shape, dtype=torch.bfloat16))),
    ]
    print(
        "| dropout: fp32 the `bernoulli_` mask alone; bf16 `layers.Dropout` whole "
        f"| {masks[0]:.2f} | {masks[1]:.2f} |"
    )
    products, fused, explicit = [], [], []
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(AUTHORS.batch * AUTHORS.length, AUTHORS.d_model, dtype=dtype)
        b = torch.randn(AUTHORS.d_model, 3 * AUTHORS.d_model, dtype=dtype)
        products.append(ms(lambda a=a, b=b: a @ b))
        heads = (AUTHORS.batch, AUTHORS.heads, AUTHORS.length, AUTHORS.d_model // AUTHORS.heads)
        q, k, v = (torch.randn(heads, dtype=dtype, requires_grad=True) for _ in range(3))
        fused.append(
            ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v).sum().backward())
        )

        def by_hand(q=q, k=k, v=v) -> None:
            logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            weights = logits.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
            (weights @ v).sum().backward()

        explicit.append(ms(by_hand))
    rows = {
        f"product {a.shape[0]} x {a.shape[1]} x {b.shape[1]}": products,
        "fused attention, forward and backward": fused,
        "explicit attention (softmax in fp32), forward and backward": explicit,
    }
    for name, (fp32, bf16) in rows.items():
        print(f"| {name} | {fp32:.2f} | {bf16:.2f} |")


def trainer_rate(seconds: float, precision: str) -> float:
    """Lists per second of ``Trainer.train_epoch`` end to end."""
    config = TrainConfig(batch_size=AUTHORS.batch, precision=precision)
    return prm_rate(AUTHORS, config, seconds, REPEATS)


ROWS: dict[str, Callable[[float], float]] = {
    "PRM, trainer, fp32": lambda s: trainer_rate(s, "fp32"),
    "PRM, trainer, bf16 (bf16 copy, fp32 master weights)": lambda s: trainer_rate(s, "bf16"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allrank-python", help="the python of an environment with allRank")
    parser.add_argument("--setup-allrank", metavar="DIR", help="make that environment, then exit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of a timed window")
    parser.add_argument("--kernels", action="store_true", help="where a step's time goes")
    args = parser.parse_args()
    if args.setup_allrank:
        setup_allrank(Path(args.setup_allrank))
        return 0
    if args.kernels:
        kernel_report()
        return 0
    reference = "allRank 1.4.3, step" if args.allrank_python else "nn.TransformerEncoder, step"
    rates: dict[str, list[float]] = {reference: [], **{name: [] for name in ROWS}}
    started = time.perf_counter()
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number} of {args.rounds} ...", file=sys.stderr)
        if args.allrank_python:
            rates[reference].append(allrank_rate(args.allrank_python, args.seconds))
        else:
            config = TrainConfig(batch_size=AUTHORS.batch)
            rates[reference].append(encoder_rate(AUTHORS, config, args.seconds, REPEATS))
        for name, rate in ROWS.items():
            rates[name].append(rate(args.seconds))

    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads; size: L {AUTHORS.length}, d_model "
        f"{AUTHORS.d_model}, {AUTHORS.blocks} blocks, {AUTHORS.heads} head, d_ff {AUTHORS.d_ff}, "
        f"batch {AUTHORS.batch}, dropout {DROPOUT}\n"
    )
    peaks = {dtype: matmul_peak(torch.device("cpu"), dtype, 3) for dtype in PEAK_DTYPES}
    print(
        f"| what | lists/s (median of {args.rounds} rounds) | each round | vs {reference} "
        "| GFLOP/s | % of fp32 matmul peak | % of bf16 matmul peak |"
    )
    print("|---|---|---|---|---|---|---|")
    base = float(np.median(rates[reference]))
    flops = AUTHORS.training_flops_per_list()
    for name, values in rates.items():
        median = float(np.median(values))
        each = " / ".join(f"{value:.0f}" for value in values)
        shares = " | ".join(f"{100 * median * flops / peak:.0f}%" for peak in peaks.values())
        print(
            f"| {name} | {median:.0f} | {each} | {median / base:.2f}x "
            f"| {median * flops / 1e9:.1f} | {shares} |"
        )
    print(
        "\nmatmul peak (2048 x 2048, best of 3): "
        + ", ".join(f"{PEAK_NAMES[d]} {peak / 1e9:.0f} GFLOP/s" for d, peak in peaks.items())
        + f"; bf16 units: {bf16_units()}"
    )
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
