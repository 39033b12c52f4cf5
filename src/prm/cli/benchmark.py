"""``prm benchmark <suite>``: the paper's comparison on real data, a thin layer over
:mod:`prm.benchmark`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

QUICK_OUT = "runs/benchmark_quick"  # quick results never overwrite benchmarks/RESULTS.md


def cmd_benchmark(args: argparse.Namespace) -> None:
    from prm.benchmark import load_benchmark_config, render_table, run_benchmark
    from prm.config import config_file
    from prm.data.files import DATA_DIR_ENV

    if args.data_dir:  # this process's data folder, as $PRM_DATA_DIR would name it
        os.environ[DATA_DIR_ENV] = str(Path(args.data_dir).resolve())
    path = args.suite if Path(args.suite).is_file() else f"bench_{args.suite}"
    config = load_benchmark_config(config_file(path), quick=args.quick)
    out = args.out or (QUICK_OUT if args.quick else "benchmarks")
    work = args.work or (f"{QUICK_OUT}/work" if args.quick else "runs/benchmark")
    results = run_benchmark(
        config,
        out_dir=out,
        work_dir=work,
        command=shlex.join(["prm", *sys.argv[1:]]),
        quick=args.quick,
        resume=args.resume,
        progress=not args.quiet,
    )
    for summary in results["tables"]:
        print(f"\n### {summary['title']}\n")
        print(render_table(summary, config))
    print(
        f"\nMAP convention '{config.evaluate.map_convention}'; lists without a relevant item "
        f"excluded; {results['runs']} runs in {results['seconds']['total'] / 60:.1f} min."
    )
    print(f"wrote {Path(out) / 'RESULTS.md'}, {results['figure']} and {results['json']}")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` to the ``prm`` command."""
    help_text = "train and compare every re-ranker on a real dataset"
    sub = commands.add_parser("benchmark", help=help_text, description=help_text)
    sub.add_argument(
        "suite",
        help="mq2008, ml100k, lgbm_rank or ultr_mq2008 (configs/bench_<suite>.yaml, shipped "
        "with prm), or a YAML path",
    )
    sub.add_argument(
        "--data-dir",
        help="folder holding the datasets (mq2008/, lgbm_rank/, ml-100k/); default $PRM_DATA_DIR, "
        "else ../shared/data beside a checkout",
    )
    sub.add_argument("--quick", action="store_true", help="the suite's tiny 'quick' settings")
    sub.add_argument(
        "--out", help=f"folder for RESULTS.md, figures/, results/ (benchmarks; {QUICK_OUT} quick)"
    )
    sub.add_argument(
        "--work", help=f"caches and per-run records (runs/benchmark; {QUICK_OUT}/work quick)"
    )
    sub.add_argument(
        "--resume",
        action="store_true",
        help="reuse runs an earlier call finished with same settings",
    )
    sub.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.set_defaults(handler=cmd_benchmark)
