"""``prm``: thin commands over :mod:`prm.pipeline`; each prints where its artifacts went."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from prm import __version__
from prm.cli import benchmark, checks, serving
from prm.config import ConfigError, ExperimentConfig, PRMConfig, load_config
from prm.data.tables import DataError

# What `prm train --model` takes: every registered re-ranker (prm.registry.RERANKERS, kept
# out of this module so that `prm --help` needs no torch) and prm_base.
TRAINABLE_MODELS = (
    "prm", "prm_base", "dlcm", "seq2slate", "setrank", "gsf", "midnn", "generator_evaluator"
)  # fmt: skip


def _config(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(args.config) if args.config else ExperimentConfig()


def cmd_simulate(args: argparse.Namespace) -> None:
    from prm.data.simulator import simulate

    config = _config(args)
    simulator = config.simulator if args.seed is None else replace(config.simulator, seed=args.seed)
    if args.shard_lists is not None:
        simulator = replace(simulator, shard_lists=args.shard_lists)
    stats = simulate(simulator, args.out, progress=not args.quiet)
    print(json.dumps(stats["splits"], indent=2))
    print(f"wrote {args.out} in {stats['seconds']} s")


def cmd_check_data(args: argparse.Namespace) -> None:
    from prm.data.check import check_data, summarize_data

    violations = check_data(args.data)
    if violations:
        shown = violations if args.show == 0 else violations[: args.show]
        for violation in shown:
            print(violation)
        if len(shown) < len(violations):
            print(f"... and {len(violations) - len(shown)} more (--show 0 lists all)")
        files = len({violation.file for violation in violations})
        raise DataError(
            f"{len(violations)} violation(s) in {files} file(s) of {args.data}; "
            "docs/data.md describes the format"
        )
    summary = summarize_data(args.data)
    lists = ", ".join(f"{split} {n}" for split, n in summary["lists"].items())
    print(f"{args.data}: ok: {summary['items']} items, {summary['users']} users; lists: {lists}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from prm.data.loaders import load_list_data, present_splits
    from prm.pretrain.training import pretrain

    config = _config(args)
    data = load_list_data(args.data, splits=present_splits(args.data))
    checks.check_lists(config, data, args.data, ("pretrain",), clicked=("train",))
    pretrained = pretrain(config, data, args.out, progress=not args.quiet)
    checks.check_pretrained(pretrained.report, Path(args.out), list(data.splits))
    print(json.dumps(pretrained.report["history"][-1], indent=2))
    print(f"wrote the CTR model and PV caches to {args.out}")


def _with_train_flags(config: ExperimentConfig, **flags: object) -> ExperimentConfig:
    """``config`` with the train settings given as flags (None: as the config has them)."""
    try:
        train = replace(config.train, **{k: v for k, v in flags.items() if v is not None})
    except ConfigError as error:  # a flag's value, checked as the config's
        raise ConfigError(f"train.{error} (--device/--precision)") from None
    return replace(config, train=train)


def cmd_train(args: argparse.Namespace) -> None:
    from prm.training.distributed import backend_for, launch

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    config = _with_train_flags(
        _config(args), device=args.device, precision=args.precision, compile=args.compile
    )
    train = config.train
    if args.model == "prm_base":
        args.model, args.base = "prm", True
    if args.model not in ("prm", "generator_evaluator"):
        config = _baseline_config(config, args)
        launch(args.nproc, _train, config, None, args, backend=backend_for(train.device))
        return
    model_config = replace(config.model, use_pv=False) if args.base else config.model
    if args.model == "generator_evaluator":
        if args.base or args.stream or args.evaluator:
            raise ConfigError(
                "--model generator_evaluator takes none of --base, --stream, --evaluator"
            )
        model_config = replace(model_config, use_pv=config.evaluator.use_pv)
    if model_config.use_pv and not args.pv:
        raise ConfigError("PRM with use_pv needs --pv DIR (from `prm pretrain`); or pass --base")
    if model_config.use_pv and args.stream:
        raise ConfigError("--stream trains PRM-BASE only (PV caches are in memory); add --base")
    needs_evaluator = (
        train.selection_metric == "estimated_clicks" or model_config.position_bias == "evaluator"
    )
    if needs_evaluator and args.model == "prm" and not args.evaluator:
        raise ConfigError(
            "train.selection_metric 'estimated_clicks' and model.position_bias 'evaluator' "
            "need --evaluator DIR, a run of `prm train --model generator_evaluator`"
        )
    launch(args.nproc, _train, config, model_config, args, backend=backend_for(train.device))


def _baseline_config(config: ExperimentConfig, args: argparse.Namespace) -> ExperimentConfig:
    """The config with the baseline's ``use_pv`` settled: PV when --pv is given (and --base is
    not), unless its rerankers section says."""
    if args.evaluator:
        raise ConfigError(f"--model {args.model} takes no --evaluator")
    settings = dict(config.rerankers.get(args.model, {}))
    use_pv = settings.setdefault("use_pv", bool(args.pv) and not args.base)
    if use_pv and not args.pv:
        raise ConfigError(
            f"rerankers.{args.model}.use_pv needs --pv DIR (from `prm pretrain`); or pass --base"
        )
    if use_pv and args.stream:
        raise ConfigError("--stream trains without PV (PV caches are in memory); add --base")
    return replace(config, rerankers={**config.rerankers, args.model: settings})


def _train(
    config: ExperimentConfig, model_config: PRMConfig | None, args: argparse.Namespace
) -> None:
    """`prm train` in one training process (of ``--nproc`` or torchrun's)."""
    from prm.data.examination import EXPLORE
    from prm.data.loaders import load_list_data
    from prm.data.shards import lists_source
    from prm.data.streaming import ListStream
    from prm.evaluation.estimate import EstimatedClicks
    from prm.pipeline import load_reranker, train_evaluator, train_reranker
    from prm.training.distributed import rank

    splits = ("valid",) if args.stream else ("train", "valid")
    if args.model == "generator_evaluator" and lists_source(args.data, EXPLORE).exists():
        splits = (*splits, EXPLORE)
    data = load_list_data(args.data, splits=splits)
    if args.model == "generator_evaluator":
        checks.check_lists(config, data, args.data, ("evaluator",))
    else:
        sections = ("model",) if model_config is not None else ()
        checks.check_lists(config, data, args.data, sections, clicked=("train", "valid"))
    if args.pv and (model_config is None or model_config.use_pv):
        data = checks.attach_checked_pv(data, args.pv)
    if args.stream:
        stream = ListStream(
            lists_source(args.data, "train"),
            data.items,
            data.catalog.n_users if data.catalog is not None else None,
            buffer_lists=config.train.shuffle_buffer,
        )
        data = replace(data, splits={**data.splits, "train": stream})
    if args.model == "generator_evaluator":
        train_evaluator(
            config,
            data,
            args.out,
            exploration=data.splits.get(EXPLORE),
            resume=args.resume,
            progress=not args.quiet,
        )
    else:
        evaluator = load_reranker(args.evaluator).evaluator if args.evaluator else None
        estimator = EstimatedClicks(evaluator) if evaluator is not None else None
        train_reranker(
            config,
            data,
            args.out,
            kind=args.model,
            model_config=model_config,
            seed=args.seed,
            resume=args.resume,
            progress=not args.quiet,
            estimator=estimator,
            evaluator=evaluator,
        )
    if rank() == 0:
        metrics = json.loads((Path(args.out) / "metrics.json").read_text())
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
        print(f"wrote checkpoint, metrics.json and training_curve.png to {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from prm.data.loaders import load_list_data
    from prm.data.simulator import load_click_model
    from prm.evaluation.evaluate import evaluate_scores, expected_clicks, score_lists
    from prm.io import write_json

    config = _config(args)
    model, spec = checks.load_run(args.run)
    if spec.uses_pv and not args.pv:
        raise ConfigError(
            f"--run {args.run}: the model was trained with PV (d_pv {spec.d_pv}); pass --pv "
            "DIR, the `prm pretrain` folder it was trained with"
        )
    data = load_list_data(args.data, splits=(args.split,))
    checks.check_lists(config, data, args.data, (), clicked=(args.split,))
    if args.pv and spec.uses_pv:
        data = checks.attach_checked_pv(data, args.pv, spec.d_pv)
    dataset = data.splits[args.split]
    if dataset.d_feature != spec.d_feature:
        raise DataError(
            f"{args.data}: items have {dataset.d_feature} features, the model of --run "
            f"{args.run} was trained on {spec.d_feature}"
        )
    scores = score_lists(model, dataset)
    metrics = evaluate_scores(scores, dataset, config.evaluate)
    has_truth = (Path(args.data) / "truth").is_dir()
    if has_truth:
        metrics["expected_clicks"] = float(
            expected_clicks(load_click_model(args.data), dataset, scores).mean()
        )
    report = None
    if args.offpolicy:
        report = _offpolicy_report(args, model, has_truth)  # before anything is written
    write_json(Path(args.run) / f"eval_{args.split}.json", metrics)
    print(json.dumps(metrics, indent=2))
    if report is not None:
        from prm.evaluation.report import offpolicy_table

        write_json(Path(args.run) / "offpolicy.json", report)
        print()
        print(offpolicy_table(report))
        print(f"wrote {Path(args.run) / 'offpolicy.json'}")


def _offpolicy_report(args: argparse.Namespace, model, has_truth: bool) -> dict:
    """Off-policy estimates of the run's ordering on the data's exploration bucket, and of its
    gain over the initial order, each with a bootstrap interval (docs/offpolicy.md)."""
    import numpy as np

    from prm.data.examination import EXPLORE
    from prm.data.exploration import exploration_log, read_randomization
    from prm.data.loaders import load_list_data
    from prm.data.simulator import load_click_model
    from prm.evaluation.evaluate import expected_clicks, score_lists
    from prm.evaluation.offpolicy import (
        OffPolicyEvaluator,
        fit_position_based,
        offpolicy_report,
    )
    from prm.pipeline import load_reranker
    from prm.pretrain.training import attach_pv

    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    initial_ranks, propensities = read_randomization(args.data)
    data = load_list_data(args.data, splits=("train", EXPLORE))
    if args.pv:
        data = attach_pv(data, args.pv)
    shown = data.splits[EXPLORE]
    log = exploration_log(shown, initial_ranks, propensities)
    evaluator_run = load_reranker(args.evaluator) if args.evaluator else model
    evaluator = getattr(evaluator_run, "evaluator", None)
    pbm = fit_position_based([data.splits["train"], shown], len(data.items.topic))
    scores = score_lists(model, log.requests)
    report = offpolicy_report(OffPolicyEvaluator(log, evaluator, pbm), scores, args.bootstrap)
    if has_truth:  # the simulator's hidden truth grades the estimates; nothing above read it
        click_model = load_click_model(args.data)
        initial = -log.requests.positions.astype(np.float64)
        true_new = expected_clicks(click_model, log.requests, scores).mean()
        true_initial = expected_clicks(click_model, log.requests, initial).mean()
        report["truth"] = {
            "expected_clicks": float(true_new),
            "gain_over_initial": float(true_new - true_initial),
        }
    return report


def cmd_demo(args: argparse.Namespace) -> None:
    benchmark.run_demo(
        _with_train_flags(_config(args), precision=args.precision), args.out, args.quiet
    )


def cmd_loop(args: argparse.Namespace) -> None:
    from prm.deployment import loop_table, retraining_loop

    if args.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {args.rounds}")
    config = _config(args)
    config.check_list_length(config.simulator.list_length, "the simulated data")
    report = retraining_loop(
        config, args.out, args.rounds, demo_dir=args.from_demo, progress=not args.quiet
    )
    print()
    print(loop_table(report))
    print(f"machine: {report['machine']}; seconds: {report['seconds']}")
    print(f"wrote {Path(args.out) / 'loop.json'} and loop.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prm",
        description="Personalized re-ranking (PRM, RecSys 2019) and the system around it: "
        "simulate logs, pre-train personalized vectors, train and compare re-rankers, export "
        "and serve them. Each command prints where its artifacts went.",
    )
    parser.add_argument("--version", action="version", version=f"prm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            help="experiment config: a YAML or JSON file, or the name of one shipped with prm "
            "(demo, tiny, ...); defaults if omitted",
        )
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        sub.set_defaults(handler=handler)
        return sub

    sub = command("simulate", cmd_simulate, "write a simulated dataset (Parquet)")
    sub.add_argument("--out", required=True, help="output folder")
    sub.add_argument("--seed", type=int, help="override simulator.seed")
    sub.add_argument(
        "--shard-lists", type=int, help="lists per Parquet shard (lists_<split>/part-*.parquet)"
    )

    sub = command(
        "check-data",
        cmd_check_data,
        "check a data folder against the format in docs/data.md: list every problem (file, "
        "row, column) and exit with code 2, or print a short summary; writes nothing",
    )
    sub.add_argument("data", metavar="DIR", help="dataset folder")
    sub.add_argument(
        "--show", type=int, default=50, metavar="N", help="problems to print (default 50; 0: all)"
    )

    sub = command("pretrain", cmd_pretrain, "train the CTR model and cache PV for every list")
    sub.add_argument("--data", required=True, help="dataset folder")
    sub.add_argument("--out", required=True, help="output folder")

    sub = command(
        "train",
        cmd_train,
        "train a re-ranker: PRM (PRM-BASE with --base), a baseline, or the evaluator-generator",
    )
    sub.add_argument("--data", required=True, help="dataset folder")
    sub.add_argument(
        "--model",
        choices=TRAINABLE_MODELS,
        default="prm",
        help="prm: PRM (PRM-BASE with --base); prm_base: the same as --base; dlcm, seq2slate, "
        "setrank, gsf, midnn: the paper's baselines, configured in the config's rerankers "
        "section (their defaults otherwise; with PV when --pv is given); "
        "generator_evaluator: the click model that predicts the clicks of any order, and "
        "ranks by searching for the order it predicts best",
    )
    sub.add_argument(
        "--evaluator",
        help="run folder of a trained generator_evaluator: its predicted clicks of the "
        "validation lists choose the epoch (train.selection_metric: estimated_clicks)",
    )
    sub.add_argument("--pv", help="folder written by `prm pretrain`")
    sub.add_argument("--out", required=True, help="run folder (checkpoint, metrics, curve)")
    sub.add_argument("--base", action="store_true", help="PRM-BASE: no personalized vectors")
    sub.add_argument("--seed", type=int, help="override train.seed")
    sub.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    sub.add_argument(
        "--nproc", type=int, default=1, help="data-parallel processes on this machine (DDP)"
    )
    sub.add_argument("--device", help="override train.device: cpu, cuda (one GPU per process)")
    sub.add_argument("--precision", choices=["fp32", "bf16"], help="override train.precision")
    sub.add_argument("--compile", action="store_true", default=None, help="torch.compile the step")
    sub.add_argument(
        "--stream",
        action="store_true",
        help="read training lists shard by shard through train.shuffle_buffer (needs --base)",
    )

    sub = command("evaluate", cmd_evaluate, "evaluate a trained re-ranker on one split")
    sub.add_argument("--run", required=True, help="run folder written by `prm train`")
    sub.add_argument("--data", required=True, help="dataset folder")
    sub.add_argument("--pv", help="folder written by `prm pretrain` (for PRM)")
    sub.add_argument("--split", default="test", choices=["train", "valid", "test"])
    sub.add_argument(
        "--offpolicy",
        action="store_true",
        help="also estimate, from the logs' exploration bucket, the clicks per list the run's "
        "order would get and its gain over the initial order, with 95%% intervals",
    )
    sub.add_argument(
        "--evaluator",
        help="run folder of a trained generator_evaluator: its click model gives the direct "
        "and doubly robust estimates (the run's own, if it is one)",
    )
    sub.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals"
    )

    sub = command(
        "demo",
        cmd_demo,
        "simulate, pre-train, train the evaluator-generator, PRM-BASE and PRM, compare",
    )
    sub.add_argument("--out", default="runs/demo", help="output folder")
    sub.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="override train.precision for the evaluator, PRM-BASE and PRM (bf16: faster on "
        "CPUs with bf16 units; docs/scaling.md)",
    )

    sub = command(
        "loop",
        cmd_loop,
        "deploy PRM in the simulator, log the clicks of the lists it shows, retrain on those "
        "logs, and repeat; each round prints the estimates from the logs beside the truth",
    )
    sub.add_argument("--out", default="runs/loop", help="output folder")
    sub.add_argument("--rounds", type=int, default=3, help="rounds, the first included")
    sub.add_argument(
        "--from-demo",
        help="a finished `prm demo` folder with the same config: its PRM (first seed) is round "
        "1; without it round 1 is simulated and trained here",
    )
    serving.register(commands)  # export, serve, rerank, explain
    benchmark.register(commands)  # benchmark <suite>
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    created: list[Path] = []
    try:
        created = checks.new_outputs(args)  # refuses an --out of the wrong kind
        args.handler(args)
    except (ConfigError, DataError, FileNotFoundError) as error:
        checks.remove_empty(created)  # a failed command leaves no folder behind
        print(f"prm {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
