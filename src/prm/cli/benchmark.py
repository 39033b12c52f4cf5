"""``prm benchmark <suite>``: the paper's comparison on real data, a thin layer over
:mod:`prm.experiments`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prm.config import ExperimentConfig

QUICK_OUT = "runs/benchmark_quick"  # quick results never overwrite benchmarks/RESULTS.md


def run_demo(config: ExperimentConfig, out: str | Path, quiet: bool) -> None:
    """The demo, the simulator's suite: run it and print its tables and expected figures."""
    from prm.evaluation.report import results_table, tests_table
    from prm.experiments.demo import demo
    from prm.experiments.report import expectation_lines

    config.check_list_length(config.simulator.list_length, "the simulated data")
    results = demo(config, out, progress=not quiet)
    print()
    print(results_table(results))
    print()
    print(tests_table(results["tests"]))
    print()
    print(
        f"{results['lists']} test lists ({results['lists_with_click']} with a click); expected "
        f"clicks over all lists, NDCG/MAP over lists with a click, MAP@10 convention "
        f"'{results['map_convention']}'; p-values: paired t-test on per-list expected clicks."
    )
    if results["expected"]:
        print(expectation_lines(results["expected"]))
    print(f"machine: {results['machine']}; seconds: {results['seconds']}")
    print(f"wrote {Path(out) / 'results.json'}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    import yaml

    from prm.config import ConfigError, config_file, load_config
    from prm.data.files import DATA_DIR_ENV
    from prm.experiments.config import load_benchmark_config
    from prm.experiments.report import expectation_lines, render_table
    from prm.experiments.run import run_benchmark

    if args.data_dir:  # this process's data folder, as $PRM_DATA_DIR would name it
        os.environ[DATA_DIR_ENV] = str(Path(args.data_dir).resolve())
    try:
        path = config_file(args.suite if Path(args.suite).is_file() else f"bench_{args.suite}")
    except ConfigError:  # an experiment config by name: demo, tiny
        path = config_file(args.suite)
    if "simulator" in (yaml.safe_load(Path(path).read_text()) or {}):
        run_demo(load_config(path), args.out or "runs/demo", args.quiet)
        return
    config = load_benchmark_config(path, quick=args.quick)
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
    if results["expected"]:
        print(expectation_lines(results["expected"]))
    print(f"wrote {Path(out) / 'RESULTS.md'}, {results['figure']} and {results['json']}")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` to the ``prm`` command."""
    help_text = "train and compare every re-ranker on a real dataset"
    sub = commands.add_parser("benchmark", help=help_text, description=help_text)
    sub.add_argument(
        "suite",
        help="mq2008, ml100k, lgbm_rank or ultr_mq2008 (configs/bench_<suite>.yaml, shipped "
        "with prm), demo (the simulator's suite, as `prm demo --config demo`), or a YAML path",
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
