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
* PRM, step: the same bare step for PRM (model, softmax cross-entropy, fused Adam, one batch
  in memory), fp32 and ``bf16`` autocast.
* PRM, trainer: ``Trainer.train_epoch`` end to end (batch assembly, prefetch thread,
  learning-rate schedule, load following), fp32 and ``--precision bf16``.
* Study rows, not in the trainer: what a step would give with dropout masks drawn from
  ``torch.rand`` instead of ``bernoulli_``, and with the model's weights and activations in
  bf16 (fp32 master weights in Adam, attention computed in fp32). They bound what those two
  changes would buy before anyone makes them.

Prints each rate's median over rounds and its ratio to allRank's. Without ``--allrank-python``
the reference is a bare ``nn.TransformerEncoder`` step of the same size (the proxy the issue
allows when allRank cannot be installed). ``--kernels`` prints instead where a trainer step's
time goes (torch.profiler) and the kernels behind the study rows, timed alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prm.config import TrainConfig
from prm.data.batch import ListInputs
from prm.data.streaming import InMemoryLists
from prm.models import layers
from prm.training.losses import softmax_cross_entropy
from prm.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import (  # noqa: E402
    D_FEATURE,
    D_PV,
    DROPOUT,
    Size,
    best_rate,
    encoder_rate,
    prm_rate,
    synthetic_lists,
    window_steps,
)

# The PRM paper's size: d_ff 2 d_model = 128; dropout 0.1 and 28 + 32 input features as
# train_throughput.py's rows.
AUTHORS = Size(length=30, d_model=64, blocks=2, n_heads=1, lists_per_batch=512)
REPEATS = 2  # timed windows per rate; the best is kept
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


class RandDropout(nn.Module):
    """Dropout whose mask compares ``torch.rand`` with p: the same distribution as
    ``nn.Dropout``, whose ``bernoulli_`` draws take this CPU about twice as long."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


def fp32_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """Fused attention in fp32 for bf16 q, k, v: the CPU's bf16 kernel is slower at L = 30."""
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)


def prm_step_rate(seconds: float, *, autocast: bool, rand_dropout: bool, pure_bf16: bool) -> float:
    """Lists per second of PRM's bare step: model, loss, fused Adam on one batch in memory."""
    torch.manual_seed(0)
    model = AUTHORS.spec().build().train()
    if rand_dropout:
        for block in model.blocks:
            block.dropout = RandDropout(DROPOUT)
    data = synthetic_lists(AUTHORS.batch, AUTHORS.length, np.random.default_rng(0))
    features, pv = torch.from_numpy(data.features), torch.from_numpy(data.pv)
    positions, mask = torch.from_numpy(data.positions), torch.from_numpy(data.mask)
    labels = torch.from_numpy(data.labels)
    master = list(model.parameters())  # what Adam updates, fp32
    optimizer = torch.optim.Adam(master, lr=1e-3, fused=True)
    if pure_bf16:
        model = copy.deepcopy(model).to(torch.bfloat16)
        features, pv = features.bfloat16(), pv.bfloat16()
    working = list(model.parameters())
    inputs = ListInputs(features, pv, positions, mask)

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            scores = model(inputs).float()
        loss = softmax_cross_entropy(scores, labels, mask=mask)
        optimizer.zero_grad(set_to_none=True)
        for parameter in working:
            parameter.grad = None
        loss.backward()
        if pure_bf16:
            for fp32, bf16 in zip(master, working, strict=True):
                fp32.grad = bf16.grad.float()
        optimizer.step()
        if pure_bf16:
            with torch.no_grad():
                torch._foreach_copy_(working, master)

    def steps(n: int) -> int:
        for _ in range(n):
            step()
        return n * AUTHORS.batch

    if pure_bf16:
        layers.F = _with_attention(fp32_attention)
    try:
        steps(2)  # warm-up
        started = time.perf_counter()
        steps(2)
        n = window_steps((time.perf_counter() - started) / 2, seconds)
        return best_rate(lambda: steps(n), torch.device("cpu"), REPEATS)
    finally:
        layers.F = F


def _with_attention(attention: Callable) -> object:
    """``torch.nn.functional`` as the model module sees it, with another attention kernel."""

    class Functional:
        def __getattr__(self, name: str) -> object:
            return attention if name == "scaled_dot_product_attention" else getattr(F, name)

    return Functional()


def kernel_report() -> None:
    """Where a fp32 step of the trainer goes, and the kernels the study rows change."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as run_dir:
        config = TrainConfig(batch_size=AUTHORS.batch)
        trainer = Trainer(AUTHORS.spec(), config, run_dir, progress=False)
        rng = np.random.default_rng(0)
        lists = InMemoryLists(synthetic_lists(20 * AUTHORS.batch, AUTHORS.length, rng))
        trainer.train_epoch(lists, 0)
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            trainer.train_epoch(lists, 0)
    events = profiled.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    groups = {
        "matrix products (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
        "dropout masks (bernoulli_)": ("aten::bernoulli_",),
        "fused attention, forward and backward": ("scaled_dot_product",),
    }
    print("Self CPU time of 20 fp32 trainer steps, torch.profiler:\n")
    print("| operations | share |\n|---|---|")
    grouped = 0.0
    for name, keys in groups.items():
        share = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys))
        grouped += share
        print(f"| {name} | {100 * share / total:.0f}% |")
    print(f"| everything else | {100 * (total - grouped) / total:.0f}% |\n")

    x = torch.randn(AUTHORS.batch, AUTHORS.length, AUTHORS.d_model)
    print("Kernels alone, milliseconds a call (median of 30):\n")
    print("| kernel | fp32 | bf16 |\n|---|---|---|")

    def ms(call: Callable[[], object]) -> float:
        for _ in range(3):
            call()
        times = []
        for _ in range(30):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return 1e3 * float(np.median(times))

    print(
        f"| dropout mask, `bernoulli_` | {ms(lambda: torch.empty_like(x).bernoulli_(0.9)):.2f} "
        f"| - |\n| dropout mask, `torch.rand(...) >= p` "
        f"| {ms(lambda: torch.rand(x.shape) >= DROPOUT):.2f} | - |"
    )
    products = []
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(AUTHORS.batch * AUTHORS.length, AUTHORS.d_model, dtype=dtype)
        b = torch.randn(AUTHORS.d_model, 3 * AUTHORS.d_model, dtype=dtype)
        products.append(ms(lambda a=a, b=b: a @ b))
    print(
        f"| product {a.shape[0]} x {a.shape[1]} x {b.shape[1]} | {products[0]:.2f} "
        f"| {products[1]:.2f} |"
    )
    attention = []
    for dtype in (torch.float32, torch.bfloat16):
        shape = (AUTHORS.batch, AUTHORS.heads, AUTHORS.length, AUTHORS.d_model // AUTHORS.heads)
        q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))

        def forward_backward(q=q, k=k, v=v) -> None:
            F.scaled_dot_product_attention(q, k, v).sum().backward()

        attention.append(ms(forward_backward))
    print(f"| fused attention, forward and backward | {attention[0]:.2f} | {attention[1]:.2f} |")


def trainer_rate(seconds: float, precision: str) -> float:
    """Lists per second of ``Trainer.train_epoch`` end to end."""
    config = TrainConfig(batch_size=AUTHORS.batch, precision=precision)
    return prm_rate(AUTHORS, config, seconds, REPEATS)


ROWS: dict[str, Callable[[float], float]] = {
    "PRM, trainer, fp32": lambda s: trainer_rate(s, "fp32"),
    "PRM, trainer, bf16 autocast": lambda s: trainer_rate(s, "bf16"),
    "PRM, step, fp32": lambda s: prm_step_rate(
        s, autocast=False, rand_dropout=False, pure_bf16=False
    ),
    "PRM, step, bf16 autocast": lambda s: prm_step_rate(
        s, autocast=True, rand_dropout=False, pure_bf16=False
    ),
    "study: step, fp32, rand dropout": lambda s: prm_step_rate(
        s, autocast=False, rand_dropout=True, pure_bf16=False
    ),
    "study: step, bf16 weights and activations (attention fp32)": lambda s: prm_step_rate(
        s, autocast=False, rand_dropout=False, pure_bf16=True
    ),
    "study: step, bf16 weights and activations (attention fp32), rand dropout": lambda s: (
        prm_step_rate(s, autocast=False, rand_dropout=True, pure_bf16=True)
    ),
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

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if "model name" in line]
        cpu = names[0] if names else cpu
    print(
        f"machine: {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads; size: L {AUTHORS.length}, d_model "
        f"{AUTHORS.d_model}, {AUTHORS.blocks} blocks, {AUTHORS.heads} head, d_ff {AUTHORS.d_ff}, "
        f"batch {AUTHORS.batch}, dropout {DROPOUT}\n"
    )
    print(f"| what | lists/s (median of {args.rounds} rounds) | each round | vs {reference} |")
    print("|---|---|---|---|")
    base = float(np.median(rates[reference]))
    for name, values in rates.items():
        median = float(np.median(values))
        each = " / ".join(f"{value:.0f}" for value in values)
        print(f"| {name} | {median:.0f} | {each} | {median / base:.2f}x |")
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
