"""allRank's training step, timed: run by train_vs_allrank.py with allRank's own Python.

    /path/to/allrank-venv/bin/python benchmarks/allrank_step.py --length 30 --d-model 64 ...

Imports allRank (https://github.com/allegro/allRank), never prm: it runs in a separate
environment with allRank 1.4.3 installed (train_vs_allrank.py says how to make one). The model
is allRank's ``make_model``: an ``FCModel`` input layer to d_model, its Transformer encoder with
learned positional encoding of the initial rank, an ``OutputLayer`` to one score; the loss is
allRank's ``listNet`` (softmax cross-entropy over the list, PRM's loss), the optimizer
``torch.optim.Adam``, as allRank's training loop uses them. The step runs on one batch of
random full lists already in memory, so it times only model, loss and optimizer. Prints one
JSON line: ``{"lists_per_second": ...}``, the best of ``--repeats`` windows.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from allrank.config import PositionalEncoding, TransformerConfig
from allrank.models.losses import listNet
from allrank.models.model import make_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--d-model", type=int, required=True)
    parser.add_argument("--blocks", type=int, required=True)
    parser.add_argument("--heads", type=int, required=True)
    parser.add_argument("--d-ff", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--features", type=int, required=True, help="d_feature + d_pv")
    parser.add_argument("--dropout", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 leaves them")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    transformer = TransformerConfig(
        N=args.blocks,
        d_ff=args.d_ff,
        h=args.heads,
        positional_encoding=PositionalEncoding(strategy="learned", max_indices=args.length),
        dropout=args.dropout,
    )
    fc_model = {"sizes": [args.d_model], "input_norm": False, "activation": None, "dropout": 0.0}
    model = make_model(fc_model, transformer, {"d_output": 1}, args.features).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    x = torch.randn(args.batch, args.length, args.features)
    mask = torch.zeros(args.batch, args.length, dtype=torch.bool)  # allRank: True at padding
    indices = torch.arange(args.length).expand(args.batch, -1)
    labels = (torch.rand(args.batch, args.length) < 0.1).float()
    labels[:, 0] = 1.0

    def steps(n: int) -> None:
        for _ in range(n):
            loss = listNet(model(x, mask, indices), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    steps(2)  # warm-up
    started = time.perf_counter()
    steps(2)
    n = max(2, math.ceil(args.seconds / ((time.perf_counter() - started) / 2)))
    best = 0.0
    for _ in range(args.repeats):
        started = time.perf_counter()
        steps(n)
        best = max(best, n * args.batch / (time.perf_counter() - started))
    print(json.dumps({"lists_per_second": best}))


if __name__ == "__main__":
    main()
