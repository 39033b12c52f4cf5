"""Why does PRM-BASE trail miDNN and SetRank on MQ2008? A validation-only study.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/prm_base_study.py
        [--out runs/prm_base_study] [--variants baseline,no_pe,...] [--seeds 0,1,2]
        [--folds 1,2,3,4,5] [--data-dir DIR] [--cache DIR]

On MQ2008's LambdaMART lists (top 30, initial ranker fitted on a seeded half of each fold's
training queries) PRM-BASE (PRM without PV) is below miDNN and SetRank on the test lists
(benchmarks/RESULTS.md). This script asks which of the usual suspects moves PRM-BASE's best
validation NDCG@10, each changed alone from the baseline and trained with both losses
(softmax_ce and list_mle) on folds 1-5 and every seed:

* the loss: each variant is trained with both, and the table ends with list_mle - softmax_ce;
* the position embedding: ``no_pe``;
* regularization: ``dropout0.3``, ``dropout0``, ``wd1e-3``; size: ``d96``, ``blocks1``;
* the optimiser: ``lr3e-3``, ``lr3e-4``, ``bs8``;
* the input scale and list context miDNN has and PRM-BASE lacks: ``zscore_append`` (features
  z-scored within the list, appended), ``midnn_feats`` (miDNN's list statistics, min-max and
  z-scored features, appended), ``ranker_score`` (the initial ranker's score, z-scored within
  the list, appended);
* the training budget: ``ep100_p20`` (100 epochs, patience 20) and ``ep100_p20_linear`` (the
  same with a linearly falling learning rate);
* references: ``midnn`` and ``setrank`` with their defaults (no PV), and the initial order.

Baseline: d_model 48, 2 heads, 2 blocks, d_ff 96, dropout 0.1, PE, no PV; 30 epochs, batch 32,
lr 1e-3, patience 5, the epoch chosen on validation NDCG@10.

Only the ``train`` and ``valid`` lists are read; no test metric is computed. Every fit is
appended to ``<out>/results.jsonl`` (best validation NDCG@10, its epoch, epochs run, seconds
and the per-epoch validation curve); a rerun skips the fits already there with the same
settings, so ``--variants`` may run the study in parts. The table covers every variant
recorded for the chosen seeds and folds: mean ± std over folds × seeds, paired Δ and t-test p
against the baseline of the same loss (pairs: fold and seed), the spread over seeds, where the
best epoch falls, how noisy the validation curve is, how far it falls after its best epoch,
and the seconds per fit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prm.config import EvalConfig, TrainConfig
from prm.data.batch import ListDataset
from prm.data.files import default_data_dir
from prm.data.letor import load_ranking_file, split_queries
from prm.evaluation.report import markdown_table, p_value_cell
from prm.evaluation.significance import format_mean_std, paired_test
from prm.experiments.report import machine
from prm.rankers.initial_lists import (
    RankingFiles,
    fit_ranker,
    initial_ndcg,
    make_ranker,
    reranking_lists,
)
from prm.rankers.midnn import global_feature_extension
from prm.registry import ModelSpec
from prm.training.trainer import fit_reranker

RANKER = "lambdamart"
LIST_LENGTH = 30
DATA_SEED = 0  # the split of the training queries and the initial ranker's seed
LOSSES = ("softmax_ce", "list_mle")
METRIC = "ndcg@10"
EVAL = EvalConfig(ks=(5, 10))
PRM_BASE = {
    "d_model": 48,
    "n_heads": 2,
    "n_blocks": 2,
    "d_ff": 96,
    "dropout": 0.1,
    "use_pe": True,
    "use_pv": False,
}
TRAIN = {"epochs": 30, "batch_size": 32, "lr": 1e-3, "patience": 5, "selection_metric": METRIC}
EARLY_EPOCH = 2  # "best at epoch <= 2": selection stopped almost before training started


@dataclass(frozen=True)
class Variant:
    """One change from the baseline: the re-ranker kind, its config and training overrides,
    and the features appended to the lists' inputs (None: the features as they are)."""

    kind: str = "prm"
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    features: str | None = None

    def model_config(self) -> dict[str, Any]:
        """The full model overrides: PRM-BASE's for ``prm``, the kind's defaults otherwise."""
        return {**PRM_BASE, **self.model} if self.kind == "prm" else {"use_pv": False}

    def settings(self, loss: str) -> dict[str, Any]:
        """What defines a fit besides fold and seed (a recorded fit counts as done only with
        the same settings)."""
        return {
            "kind": self.kind,
            "model": self.model_config(),
            "train": {**TRAIN, **self.train, "loss": loss},
            "features": self.features,
        }


VARIANTS: dict[str, Variant] = {
    "baseline": Variant(),
    "no_pe": Variant(model={"use_pe": False}),
    "dropout0.3": Variant(model={"dropout": 0.3}),
    "dropout0": Variant(model={"dropout": 0.0}),
    "wd1e-3": Variant(train={"weight_decay": 1e-3}),
    "lr3e-3": Variant(train={"lr": 3e-3}),
    "lr3e-4": Variant(train={"lr": 3e-4}),
    "d96": Variant(model={"d_model": 96, "d_ff": 192}),
    "blocks1": Variant(model={"n_blocks": 1}),
    "zscore_append": Variant(features="zscore"),
    "midnn_feats": Variant(features="midnn"),
    "ranker_score": Variant(features="ranker_score"),
    "bs8": Variant(train={"batch_size": 8}),
    "ep100_p20": Variant(train={"epochs": 100, "patience": 20}),
    "ep100_p20_linear": Variant(train={"epochs": 100, "patience": 20, "lr_schedule": "linear"}),
    "midnn": Variant(kind="midnn"),
    "setrank": Variant(kind="setrank"),
}
INITIAL = "initial order"
SPLITS = ("train", "valid")  # never "test"


def list_zscore(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, L, d) values z-scored over each list's real items (0 where a list's values are
    constant, and at padding)."""
    real = mask[..., None].astype(np.float64)
    n = np.maximum(real.sum(axis=1, keepdims=True), 1.0)
    mean = (x * real).sum(axis=1, keepdims=True) / n
    std = np.sqrt((((x - mean) ** 2) * real).sum(axis=1, keepdims=True) / n)
    varies = std > 1e-6
    z = np.where(varies, (x - mean) / np.where(varies, std, 1.0), 0.0) * real
    return z.astype(np.float32)


def midnn_list_features(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, L, 6d) miDNN's global feature extension without the raw features: the list's mean,
    std, min and max, and the item's min-max scaled and z-scored features (0 at padding)."""
    extended = global_feature_extension(
        torch.from_numpy(x.astype(np.float32)), torch.from_numpy(mask)
    )
    return (extended[..., x.shape[-1] :].numpy() * mask[..., None]).astype(np.float32)


def half_ranker_scores(
    files: RankingFiles, lists: dict[str, ListDataset], cache: Path
) -> dict[str, np.ndarray]:
    """(N, L) score of each listed item by the initial ranker that made the lists, refitted
    as :func:`reranking_lists` fits it; an error if its order disagrees with the lists'."""
    group = files.train.with_name(files.train.name + ".query")
    train = load_ranking_file(
        files.train, cache_dir=cache, group_path=group if group.is_file() else None
    )
    ranker_half, _ = split_queries(train, 0.5, DATA_SEED)
    ranker = fit_ranker(make_ranker(RANKER, seed=DATA_SEED), ranker_half)
    scores = {}
    for split, data in lists.items():
        n, length, d = data.features.shape
        score = np.asarray(ranker.predict(data.features.reshape(-1, d))).reshape(n, length)
        falls = np.where(data.mask[:, 1:], score[:, :-1] - score[:, 1:], 0.0)
        if (falls < -1e-9).any():
            raise RuntimeError(f"{files.train.parent} {split}: refitted ranker reorders lists")
        scores[split] = score * data.mask
    return scores


class FoldData:
    """One fold's train and valid lists, and their inputs with each feature variant."""

    def __init__(self, folder: Path, cache: Path) -> None:
        self.files = RankingFiles.in_folder(folder)
        self.cache = cache
        splits = reranking_lists(self.files, RANKER, LIST_LENGTH, DATA_SEED, cache).splits
        self.lists = {s: splits[s] for s in SPLITS}  # the test lists are dropped unread
        self._inputs: dict[str | None, dict[str, ListDataset]] = {None: self.lists}

    def inputs(self, features: str | None) -> dict[str, ListDataset]:
        """train and valid lists with the variant's features appended (computed once)."""
        if features not in self._inputs:
            extra = self._extra_features(features)
            self._inputs[features] = {
                s: replace(d, features=np.concatenate([d.features, extra[s]], -1, dtype=np.float32))
                for s, d in self.lists.items()
            }
        return self._inputs[features]

    def _extra_features(self, features: str | None) -> dict[str, np.ndarray]:
        """split -> (N, L, k) float32 features of the variant, 0 at padding."""
        lists = self.lists
        if features == "zscore":
            return {s: list_zscore(d.features, d.mask) for s, d in lists.items()}
        if features == "midnn":
            return {s: midnn_list_features(d.features, d.mask) for s, d in lists.items()}
        if features == "ranker_score":
            scores = half_ranker_scores(self.files, lists, self.cache)
            return {s: list_zscore(scores[s][..., None], d.mask) for s, d in lists.items()}
        raise ValueError(f"unknown feature variant {features!r}")


def fit_one(variant: Variant, loss: str, seed: int, data: dict[str, ListDataset]) -> dict:
    """Train one re-ranker; its best validation NDCG@10, epochs, seconds and curves."""
    train, valid = data["train"], data["valid"]
    spec = ModelSpec(variant.kind, variant.model_config(), train.d_feature, 0)
    config = TrainConfig(**{**TRAIN, **variant.train, "loss": loss, "seed": seed})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prm_base_study_") as run_dir:
        _, state = fit_reranker(
            spec, config, train, valid, run_dir, eval_config=EVAL, progress=False, reports=False
        )
    return {
        "best": state.best_metric,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "seconds": round(time.perf_counter() - started, 2),
        "curve": [row[f"valid_{METRIC}"] for row in state.history],
        "train_loss": [row["train_loss"] for row in state.history],
    }


def read_records(path: Path) -> list[dict]:
    """The fits recorded so far (none when the file does not exist)."""
    if not path.is_file():
        return []
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def current(records: Iterable[dict]) -> dict[tuple, dict]:
    """(variant, loss, fold, seed) -> the last record made with the variant's present settings."""
    found = {}
    for record in records:
        name, loss = record["variant"], record["loss"]
        if name == INITIAL or (
            name in VARIANTS and record.get("settings") == VARIANTS[name].settings(loss)
        ):
            found[(name, loss, record["fold"], record["seed"])] = record
    return found


def run(args: argparse.Namespace, names: list[str], results: Path) -> int:
    """Fit every (variant, loss, fold, seed) not yet recorded; returns the number of fits."""
    done = current(read_records(results))
    cache = Path(args.cache) if args.cache else Path(args.out) / "cache"
    fitted = 0
    with results.open("a") as out:

        def record(row: dict) -> None:
            out.write(json.dumps(row) + "\n")
            out.flush()

        for fold in args.folds:
            todo = [
                (name, loss, seed)
                for name in names
                for loss in LOSSES
                for seed in args.seeds
                if (name, loss, fold, seed) not in done
            ]
            if not todo and (INITIAL, "-", fold, None) in done:
                continue
            started = time.perf_counter()
            fold_data = FoldData(Path(args.data_dir) / "mq2008" / f"Fold{fold}", cache)
            print(f"fold {fold}: lists in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            if (INITIAL, "-", fold, None) not in done:
                ndcg = initial_ndcg(fold_data.lists["valid"], 10)
                record({"variant": INITIAL, "loss": "-", "fold": fold, "seed": None, "best": ndcg})
            for name, loss, seed in todo:
                variant = VARIANTS[name]
                fit = fit_one(variant, loss, seed, fold_data.inputs(variant.features))
                record(
                    {
                        "variant": name,
                        "loss": loss,
                        "fold": fold,
                        "seed": seed,
                        **fit,
                        "settings": variant.settings(loss),
                    }
                )
                fitted += 1
                print(
                    f"{name} {loss} fold {fold} seed {seed}: {fit['best']:.4f} at epoch "
                    f"{fit['best_epoch']}/{fit['epochs']}, {fit['seconds']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    return fitted


def _seed_std(fits: dict[tuple[int, int], dict]) -> float:
    """Mean over folds of the std (ddof 1) of the best NDCG@10 over seeds."""
    by_fold: dict[int, list[float]] = {}
    for (fold, _), fit in fits.items():
        by_fold.setdefault(fold, []).append(fit["best"])
    stds = [np.std(v, ddof=1) for v in by_fold.values() if len(v) > 1]
    return float(np.mean(stds)) if stds else float("nan")


def _row(name: str, loss: str, fits: dict, base: dict | None) -> list[str]:
    keys = sorted(fits)
    best = np.array([fits[k]["best"] for k in keys])
    delta = p = "–"
    common = [k for k in keys if base and k in base]
    if base is not None and base is not fits and len(common) > 1:
        test = paired_test(
            np.array([fits[k]["best"] for k in common]), np.array([base[k]["best"] for k in common])
        )
        delta, p = f"{test['mean_diff']:+.4f}", p_value_cell(test["t_pvalue"])
    best_epoch = np.array([fits[k]["best_epoch"] for k in keys])
    curves = [fits[k]["curve"] for k in keys]
    noise = [np.abs(np.diff(c)).mean() for c in curves if len(c) > 1]
    drops = [
        fits[k]["best"] - np.mean(c[fits[k]["best_epoch"] :])
        for k, c in zip(keys, curves, strict=True)
        if fits[k]["best_epoch"] < len(c)
    ]
    return [
        name,
        loss,
        str(len(keys)),
        format_mean_std(best),
        f"{_seed_std(fits):.4f}",
        delta,
        p,
        f"{np.median(best_epoch):g} [{best_epoch.min()}–{best_epoch.max()}]",
        f"{100 * np.mean(best_epoch <= EARLY_EPOCH):.0f}",
        f"{np.mean([fits[k]['epochs'] for k in keys]):.1f}",
        f"{np.mean(noise):.4f}" if noise else "–",
        f"{np.mean(drops):.4f}" if drops else "–",
        f"{np.mean([fits[k]['seconds'] for k in keys]):.2f}",
    ]


def summary(records: Iterable[dict], seeds: list[int], folds: list[int]) -> str:
    """The markdown table of every recorded variant, then the loss comparison."""
    fits: dict[tuple[str, str], dict[tuple[int, int], dict]] = {}
    for (name, loss, fold, seed), record in current(records).items():
        if fold in folds and (name == INITIAL or seed in seeds):
            fits.setdefault((name, loss), {})[(fold, seed)] = record
    header = [
        "variant",
        "loss",
        "n",
        "valid NDCG@10",
        "seed std",
        "Δ vs baseline",
        "p",
        "best epoch median [range]",
        f"% best ≤ {EARLY_EPOCH}",
        "epochs run",
        "curve noise",
        "drop after best",
        "s/fit",
    ]
    rows = []
    if (INITIAL, "-") in fits:
        initial = fits[(INITIAL, "-")]
        values = np.array([r["best"] for r in initial.values()])
        rows.append([INITIAL, "–", str(len(values)), format_mean_std(values), *["–"] * 9])
    for loss in LOSSES:
        base = fits.get(("baseline", loss))
        for name in VARIANTS:
            if (name, loss) in fits:
                rows.append(_row(name, loss, fits[(name, loss)], base))
    notes = []
    for name in VARIANTS:
        a, b = fits.get((name, "list_mle")), fits.get((name, "softmax_ce"))
        common = sorted(set(a or {}) & set(b or {}))
        if len(common) > 1:
            test = paired_test(
                np.array([a[k]["best"] for k in common]), np.array([b[k]["best"] for k in common])
            )
            notes.append(f"{name} {test['mean_diff']:+.4f} (p {p_value_cell(test['t_pvalue'])})")
    text = markdown_table(header, rows)
    if notes:
        text += "\n\nlist_mle − softmax_ce, paired over folds × seeds: " + "; ".join(notes)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/prm_base_study", help="results.jsonl goes here")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", default="1,2,3,4,5")
    parser.add_argument("--data-dir", default=None, help="holds mq2008/ (default: prm's)")
    parser.add_argument("--cache", default=None, help="parsed-file cache (default: OUT/cache)")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.folds = [int(f) for f in args.folds.split(",")]
    args.data_dir = args.data_dir or str(default_data_dir())
    torch.set_num_threads(1)  # many small fits: one thread each is the fastest per fit
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    fitted = run(args, names, results)
    minutes = (time.perf_counter() - started) / 60
    env = " ".join(
        f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ
    )
    command = " ".join(filter(None, [env, shlex.join([Path(sys.executable).name, *sys.argv])]))
    table = summary(read_records(results), args.seeds, args.folds)
    print(
        f"PRM-BASE on MQ2008 {RANKER} lists (top {LIST_LENGTH}), validation NDCG@10 of the epoch"
        f" chosen on it; folds {args.folds}, seeds {args.seeds}; Δ and p: paired t-test against"
        " the baseline of the same loss\n"
    )
    print(table)
    print(f"\n{fitted} fits run now ({minutes:.1f} min), the rest read from {results}")
    print(f"machine: {machine()}")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
