"""``prm export|serve|rerank|explain``: thin commands over :mod:`prm.serving`.

Heavy imports (ONNX, FastAPI, matplotlib) happen inside each command, so ``prm --help`` and
the training commands stay quick.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from prm.config import ConfigError
from prm.data.tables import DataError

if TYPE_CHECKING:
    from prm.serving.predictor import Predictor


def cmd_export(args: argparse.Namespace) -> None:
    from prm.cli.checks import check_ctr, load_run
    from prm.serving.export import export_bundle

    load_run(args.run)  # a bad run or CTR model is refused before anything is written
    check_ctr(args.ctr)
    manifest = export_bundle(args.run, args.ctr, args.out, version=args.version)
    print(json.dumps(manifest, indent=2))
    print(f"wrote model bundle {manifest['version']} to {args.out}")


def cmd_serve(args: argparse.Namespace) -> None:
    from prm.serving.app import ServeLimits, serve
    from prm.serving.bundle import read_manifest

    if min(args.workers, args.threads, args.max_batch) < 1:
        raise ConfigError("--workers, --threads and --max-batch must be at least 1")
    limits = ServeLimits(
        max_body_bytes=args.max_body_bytes,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        limit_concurrency=args.limit_concurrency,
    )
    read_manifest(args.model)  # a wrong path fails here, not in every worker
    serve(
        args.model,
        backend=args.backend,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        max_batch=args.max_batch,
        limits=limits,
        api_key_env=args.api_key_env,
        allow_unauthenticated=args.allow_unauthenticated,
        access_log=args.access_log,
    )


def _predictor(args: argparse.Namespace, backend: str) -> Predictor:
    import torch

    from prm.serving.predictor import load_predictor

    if args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    try:
        return load_predictor(args.model, backend, threads=args.threads)
    except DataError:  # BundleError: the bundle's own checks, naming the file
        raise
    except Exception as error:  # a corrupt file fails deep in json, numpy or ONNX Runtime
        raise DataError(
            f"{args.model}: not a readable model bundle, rewrite it with `prm export` "
            f"({type(error).__name__}: {error})"
        ) from None


def cmd_rerank(args: argparse.Namespace) -> None:
    from prm.serving.batch import rerank_parquet

    if args.chunk_size < 1 or args.batch_size < 1:
        raise ConfigError("--chunk-size and --batch-size must be at least 1")
    predictor = _predictor(args, args.backend)
    n = rerank_parquet(
        predictor,
        args.lists,
        args.out,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(f"re-ranked {n} lists with {predictor.version} ({args.backend}); wrote {args.out}")


def cmd_explain(args: argparse.Namespace) -> None:
    from prm.serving.explain import explain_list

    summary = explain_list(
        _predictor(args, "torch"), args.lists, args.list_id, args.out, items_path=args.items
    )
    print(json.dumps(summary))
    print(f"wrote {args.out}")


def register(commands: argparse._SubParsersAction) -> None:
    """Add the serving commands to the ``prm`` parser's subcommands."""

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def model_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", required=True, help="model bundle written by `prm export`")
        sub.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")

    sub = command("export", cmd_export, "export a trained re-ranker and its CTR model to ONNX")
    sub.add_argument("--run", required=True, help="run folder written by `prm train`")
    sub.add_argument("--ctr", required=True, help="ctr_model.pt written by `prm pretrain`")
    sub.add_argument("--out", required=True, help="bundle folder to write (replaced if a bundle)")
    sub.add_argument("--version", help="model version to report (default: run name + hash)")

    sub = command(
        "serve",
        cmd_serve,
        "serve POST /rerank over HTTP (FastAPI + uvicorn); docs/serving.md describes the API",
    )
    model_args(sub)
    sub.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    sub.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); any other than loopback wants --api-key-env "
        "or --allow-unauthenticated",
    )
    sub.add_argument("--port", type=int, default=8000)
    sub.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes, each with its own model (default 1: one worker already "
        "keeps two cores busy, parsing on one while it scores on the other)",
    )
    sub.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="requests that arrived together are scored in one batch of at most this many lists "
        "(default 32); 1 scores each alone, with the same last bits as `prm rerank`",
    )
    sub.add_argument("--access-log", action="store_true", help="log every request")
    limits = sub.add_argument_group("limits, per worker (docs/serving.md: what each protects)")
    limits.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="larger bodies get 413 (default 1 MiB)"
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a request head may take, from connecting or from its first byte; then "
        "the connection is closed (default 10)",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds from the head to the complete body; then 408 (default 10)",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        type=int,
        default=5,
        help="seconds an idle connection stays open after an answer (default 5)",
    )
    limits.add_argument(
        "--limit-concurrency",
        type=int,
        default=4096,
        help="open connections beyond which every request gets 503 at once (default 4096)",
    )
    auth = sub.add_argument_group("authentication")
    auth.add_argument(
        "--api-key-env",
        metavar="VARIABLE",
        help="environment variable holding the API key (16+ characters); every path but "
        "/healthz, /readyz and /livez then wants it as X-API-Key or Authorization: Bearer",
    )
    auth.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="bind beyond loopback without an API key (something in front must authenticate)",
    )

    sub = command("rerank", cmd_rerank, "re-rank a Parquet list log offline")
    model_args(sub)
    sub.add_argument("--lists", required=True, help="input: lists_*.parquet format")
    sub.add_argument(
        "--out", required=True, help="output Parquet: list_id, user_id, item_ids, scores"
    )
    sub.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    sub.add_argument("--chunk-size", type=int, default=8192, help="rows read and written at once")
    sub.add_argument("--batch-size", type=int, default=256, help="lists per model call")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")

    sub = command("explain", cmd_explain, "plot PRM's self-attention over one list (PNG)")
    model_args(sub)
    sub.add_argument("--lists", required=True, help="lists_*.parquet holding the list")
    sub.add_argument("--list-id", type=int, required=True)
    sub.add_argument("--out", required=True, help="PNG to write")
    sub.add_argument("--items", help="items.parquet, to label the axes with item topics")
