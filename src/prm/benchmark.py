"""The paper's comparison on real data (issue 4): ``prm benchmark <suite>``.

A suite (``configs/bench_<suite>.yaml``) is one dataset: LETOR MQ2008 (5 folds), LightGBM's
ranking sample, or MovieLens 100K with users. For each initial ranker it trains every
re-ranker (the baselines, PRM-BASE and, where users give PV, PRM) once per seed, selects each
run's epoch on the validation lists, and scores the test lists. Tables then show

* per model: P@k, MAP@k, NDCG@k as mean ± std over seeds, where one seed's value averages
  the test lists of all folds (each MQ2008 query is a test query in exactly one fold);
* paired t-tests on per-list values averaged over seeds, against the initial ranking and
  against the best baseline (highest mean validation NDCG@10: chosen without the test lists);
* with ``losses`` set, each re-ranker is trained with every candidate list loss and the table
  reports the loss with the best mean validation value (a "loss" column names it).
* ablations: PRM variants (no PE, heads, blocks, list loss, pre-training model, no PV).
* with ``clicks`` set (LETOR sets), the semi-synthetic unbiased learning-to-rank check instead:
  position-biased clicks are simulated on the training and validation lists
  (:mod:`prm.data.click_simulation`) and PRM-BASE is trained on naive clicks, on clicks
  weighted by the true or an estimated inverse examination (IPS), and on the expert labels; each
  click-trained row selects its epochs (and loss) on its own kind of validation clicks, never on
  labels, and the test lists are always scored against the expert labels.

Lists without a relevant item are excluded from every average and test
(:func:`prm.evaluation.metrics.lists_with_click`): every ordering scores 0 on them.

Every finished run is recorded in the work folder (key: a hash of everything it depends on),
so ``resume=True`` continues an interrupted suite, and identical rows (an ablation's default
variant is the main table's PRM-BASE) are trained once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from prm.config import (
    ConfigError,
    EvalConfig,
    ExperimentConfig,
    PretrainConfig,
    PRMConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from prm.data.batch import ListDataset
from prm.data.click_simulation import (
    ClickSimulation,
    ClickTarget,
    click_probability,
    examination_by_rank,
    ips_labels,
    simulate_clicks,
)
from prm.data.files import dataset_dir
from prm.data.letor import load_ranking_file, split_queries
from prm.data.loaders import ListData, load_list_data
from prm.data.movielens import MovieLensProtocol, convert_movielens
from prm.evaluation.evaluate import evaluate_scores, per_list_metrics, score_lists
from prm.evaluation.metrics import lists_with_click
from prm.evaluation.report import markdown_table, p_value_cell
from prm.evaluation.significance import mean_std
from prm.io import atomic_path, write_json
from prm.pipeline import machine, pairwise_tests
from prm.pretrain.training import REPORT, attach_pv, pretrain
from prm.rankers.dlcm import DLCMConfig
from prm.rankers.gsf import GSFConfig
from prm.rankers.initial_lists import fit_ranker, initial_lists, letor_reranking_data, make_ranker
from prm.rankers.midnn import MiDNNConfig
from prm.rankers.seq2slate import Seq2SlateConfig
from prm.rankers.setrank import SetRankConfig
from prm.registry import ModelSpec
from prm.training.trainer import TrainState, fit_reranker

Dataset = Literal["mq2008", "lgbm_rank", "ml-100k"]
InitialRanker = Literal["lambdamart", "linear_pairwise", "pointwise_dnn"]
Baseline = Literal["dlcm", "seq2slate", "setrank", "gsf", "midnn"]
Loss = Literal["softmax_ce", "list_mle", "approx_ndcg"]
OWN_LOSS = {"seq2slate"}  # re-rankers with their own objective: list-loss candidates skip them
MOVIELENS_RANKER = "popularity_genre"  # ml-100k's fixed initial ranker (docs/datasets.md)
HEADLINE = "ndcg@10"  # drawn in the figure; with TESTED the p-value columns
TESTED = ("ndcg@10", "map@10")  # metrics with p-value columns in the tables
LABELS = {
    "initial": "initial ranking",
    "dlcm": "DLCM",
    "seq2slate": "Seq2Slate",
    "setrank": "SetRank",
    "gsf": "GSF",
    "midnn": "miDNN",
    "prm_base": "PRM-BASE",
    "prm": "PRM",
    "lambdamart": "LambdaMART",
    "linear_pairwise": "linear pairwise (SVMRank-style)",
    "pointwise_dnn": "point-wise DNN",
    MOVIELENS_RANKER: "popularity + genre match",
    "naive": "naive clicks",
    "ips_known": "IPS, known examination",
    "ips_estimated": "IPS, estimated examination",
    "labels": "expert labels",
    "click_probability": "p(y) itself (diagnostic)",
    "labels_random_ties": "labels, random ties (diagnostic)",
}
ESTIMATED_RANKS = (2, 3, 5, 10, 20, 30)  # 1-based ranks whose estimated examination is reported
CLICK_SPLITS = ("train", "valid")  # where clicks are simulated; test keeps the expert labels
TIE_NOISE = 0.01  # labels_random_ties: uniform noise below the gap between grades


@dataclass(frozen=True)
class BaselineConfigs:
    """Hyperparameters of each baseline re-ranker; defaults in ``prm.rankers.<name>``."""

    dlcm: DLCMConfig = field(default_factory=DLCMConfig)
    seq2slate: Seq2SlateConfig = field(default_factory=Seq2SlateConfig)
    setrank: SetRankConfig = field(default_factory=SetRankConfig)
    gsf: GSFConfig = field(default_factory=GSFConfig)
    midnn: MiDNNConfig = field(default_factory=MiDNNConfig)


@dataclass(frozen=True)
class Variant:
    """One ablation row: the suite's PRM with these fields changed (None keeps the suite's)."""

    name: str
    use_pv: bool | None = None
    use_pe: bool | None = None
    n_heads: int | None = None  # must divide model.d_model
    n_blocks: int | None = None
    loss: Loss | None = None
    pretrain_model: Literal["fm", "deepfm", "dcn", "fnn"] | None = None


@dataclass(frozen=True)
class AblationConfig:
    """A table of PRM variants on one initial ranker's lists, tested against its first row."""

    title: str
    base: Literal["prm_base", "prm"] = "prm_base"  # which model the variants change
    initial_ranker: str | None = None  # LETOR sets: whose lists (default: the first ranker)
    variants: tuple[Variant, ...] = ()


@dataclass(frozen=True)
class ExaminationEstimator:
    """How the ``ips_estimated`` row learns the examination from the training clicks alone:
    PRM-BASE with a learned PAL position-bias tower, fitted to the raw clicks, its epoch chosen
    on the validation clicks' likelihood; then e_k = exp(tower_k - tower_1)."""

    # Off: the scores cannot see the rank, so the rank's effect on clicks has to go to the
    # tower (with PE both can take it, and the tower stays near flat).
    use_pe: bool = False
    # The tower starts flat; at the re-rankers' rate of 1e-3 it barely moves in 30 epochs.
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=100, batch_size=32, lr=0.01, patience=20, selection_metric="loss"
        )
    )


@dataclass(frozen=True)
class BenchmarkConfig:
    """One suite: a dataset, its initial rankers, the re-rankers and how they are trained."""

    name: str
    dataset: Dataset
    folds: tuple[int, ...] = ()  # MQ2008 folds (1..5); empty for sets without folds
    initial_rankers: tuple[InitialRanker, ...] = ()  # LETOR-style sets; ml-100k has its own
    list_length: int = 30  # L: top documents of the initial ranking that are re-ranked
    data_seed: int = 0  # query halves (initial ranker / re-rankers) and the initial ranker
    max_lists: int | None = None  # keep the first lists of each split only (quick runs)
    seeds: tuple[int, ...] = (0, 1, 2)  # re-ranker (and PV pre-training) seeds
    baselines: tuple[Baseline, ...] = ("dlcm", "seq2slate", "setrank", "gsf", "midnn")
    baseline_configs: BaselineConfigs = field(default_factory=BaselineConfigs)
    model: PRMConfig = field(default_factory=PRMConfig)  # use_pv is set per row
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # ml-100k's PV
    train: TrainConfig = field(default_factory=TrainConfig)  # seed is set per run
    # Candidate list losses: every row without a loss of its own is trained with each, and the
    # one with the best validation selection metric (mean over folds and seeds) is reported.
    # Empty: every row uses train.loss.
    losses: tuple[Loss, ...] = ()
    evaluate: EvalConfig = field(default_factory=lambda: EvalConfig(ks=(5, 10)))
    ablations: tuple[AblationConfig, ...] = ()
    # Set: train PRM-BASE on simulated clicks (the unbiased learning-to-rank check) instead of
    # the main table; see prm.data.click_simulation.
    clicks: ClickSimulation | None = None
    estimator: ExaminationEstimator = field(default_factory=ExaminationEstimator)
    threads: int = 1  # 2 is <= 25% faster on an idle machine, far slower on a busy one

    def __post_init__(self) -> None:
        letor = self.dataset != "ml-100k"
        if self.dataset == "mq2008" and not (self.folds and set(self.folds) <= {1, 2, 3, 4, 5}):
            raise ConfigError(f"folds: mq2008 needs folds among 1..5, got {list(self.folds)}")
        if self.dataset != "mq2008" and self.folds:
            raise ConfigError(f"folds: {self.dataset} has no folds, got {list(self.folds)}")
        if letor != bool(self.initial_rankers):
            raise ConfigError(
                f"initial_rankers: {self.dataset} needs "
                + ("at least one" if letor else "none (its initial ranker is fixed)")
            )
        if not self.seeds:
            raise ConfigError("seeds: at least one seed is needed")
        if len(self.losses) == 1:
            raise ConfigError("losses: give two or more candidates, or set train.loss instead")
        if self.losses and self.train.selection_metric == "loss":
            raise ConfigError(
                "losses: choosing among list losses needs train.selection_metric other than "
                "'loss' (the values of different losses do not compare)"
            )
        for ablation in self.ablations:
            if ablation.initial_ranker not in (None, *self.initial_rankers):
                raise ConfigError(
                    f"ablations: {ablation.title!r} uses initial ranker "
                    f"{ablation.initial_ranker!r}, not one of {list(self.initial_rankers)}"
                )
            if ablation.base == "prm" and letor:
                raise ConfigError(f"ablations: {ablation.title!r}: PRM needs users (ml-100k)")
        if self.clicks is not None and (not letor or self.baselines or self.ablations):
            raise ConfigError(
                "clicks: the click-trained table needs expert labels (a LETOR-style dataset) "
                "and trains PRM-BASE only: set baselines: [] and no ablations"
            )

    @property
    def has_pv(self) -> bool:
        """Only ml-100k has users, so only there is PV pre-trained and PRM trained."""
        return self.dataset == "ml-100k"


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; nested mappings merge, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_benchmark_config(path: str | Path, *, quick: bool = False) -> BenchmarkConfig:
    """A suite from YAML. Its optional ``quick`` mapping is merged over the rest with
    ``quick=True`` (tiny runs for CI); unknown keys are rejected either way."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: benchmark config not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("quick", {}), dict):
        raise ConfigError(f"{path}: the file and its 'quick' key must be mappings")
    overrides = data.pop("quick", {})
    try:
        return from_dict(BenchmarkConfig, _merge(data, overrides) if quick else data)
    except (ConfigError, TypeError) as error:
        raise ConfigError(f"{path}: {error}") from error


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Row:
    """A table row: a re-ranker trained once per fold and seed (``kind`` None: the initial
    ranking, which needs no training)."""

    name: str
    kind: str | None = None
    model: dict[str, Any] = field(default_factory=dict)  # the re-ranker's config mapping
    train: TrainConfig | None = None
    pretrain_model: str | None = None  # the CTR model whose PV the run sees (ml-100k)
    target: ClickTarget = "labels"  # what it trains and selects on (click-trained rows)
    # The same row trained with each candidate loss; ``select_losses`` keeps the best one.
    candidates: tuple[Row, ...] = ()

    def trained(self) -> tuple[Row, ...]:
        """The rows actually trained for this one: its candidates, or itself."""
        return self.candidates or (self,)


def with_loss_candidates(config: BenchmarkConfig, row: Row) -> Row:
    """``row`` trained with each of ``config.losses`` (unchanged when there is no choice)."""
    if not config.losses or row.kind is None or row.kind in OWN_LOSS:
        return row
    trains = (replace(row.train, loss=loss) for loss in config.losses)
    return replace(row, candidates=tuple(replace(row, train=train) for train in trains))


@dataclass(frozen=True)
class Table:
    """Rows on one initial ranker's lists. A main table tests every row against the initial
    ranking and the best baseline; an ablation table against its first row."""

    title: str
    ranker: str
    rows: tuple[Row, ...]
    ablation: bool = False
    clicks: bool = False  # rows trained on simulated clicks, tested against initial and naive


@dataclass(frozen=True)
class Run:
    """One row's model trained with one seed on one fold: the unit of work and of caching."""

    ranker: str
    fold: str
    seed: int
    row: Row

    def pretrain_config(self, config: BenchmarkConfig) -> PretrainConfig | None:
        if not config.has_pv:
            return None
        model = self.row.pretrain_model or config.pretrain.model
        return replace(config.pretrain, model=model, seed=self.seed)

    def key(self, config: BenchmarkConfig) -> str:
        """A hash of everything the run's result depends on (not its row's name)."""
        pretrain_config = self.pretrain_config(config)
        identity = {
            "data": _data_identity(config),
            "ranker": self.ranker,
            "fold": self.fold,
            "kind": self.row.kind,
            "model": self.row.model,
            "train": to_dict(replace(self.row.train, seed=self.seed)),
            "pretrain": None if pretrain_config is None else to_dict(pretrain_config),
            "evaluate": to_dict(config.evaluate),
        }
        if self.row.target != "labels":  # keys of label-trained runs stay as they were
            identity["target"] = self.row.target
            identity["clicks"] = to_dict(config.clicks)
        if self.row.target == "ips_estimated":
            identity["estimator"] = to_dict(config.estimator)
        return _digest(identity)


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _data_identity(config: BenchmarkConfig) -> dict[str, Any]:
    return {
        "dataset": config.dataset,
        "list_length": config.list_length,
        "data_seed": config.data_seed,
        "max_lists": config.max_lists,
    }


def _prm_row(config: BenchmarkConfig, name: str, use_pv: bool) -> Row:
    model = replace(config.model, use_pv=use_pv)
    return Row(name, "prm", to_dict(model), config.train, config.pretrain.model)


def _variant_row(config: BenchmarkConfig, ablation: AblationConfig, variant: Variant) -> Row:
    base = _prm_row(config, ablation.base, ablation.base == "prm")
    model_fields = {
        k: getattr(variant, k)
        for k in ("use_pv", "use_pe", "n_heads", "n_blocks")
        if getattr(variant, k) is not None
    }
    model = from_dict(PRMConfig, {**base.model, **model_fields})
    train = config.train if variant.loss is None else replace(config.train, loss=variant.loss)
    pretrain_model = variant.pretrain_model or config.pretrain.model
    row = Row(variant.name, "prm", to_dict(model), train, pretrain_model)
    return row if variant.loss is not None else with_loss_candidates(config, row)


def _click_table(config: BenchmarkConfig, ranker: str) -> Table:
    """The initial ranking, then PRM-BASE trained on each of ``config.clicks.targets``."""
    rows = [Row("initial")]
    for target in config.clicks.targets:
        row = replace(_prm_row(config, target, use_pv=False), target=target)
        rows.append(with_loss_candidates(config, row))
    title = f"PRM-BASE trained on simulated clicks, {LABELS[ranker]} lists"
    return Table(title, ranker, tuple(rows), clicks=True)


def plan_tables(config: BenchmarkConfig) -> list[Table]:
    """The main table of each initial ranker, then the ablation tables; with ``clicks``, the
    click-trained table of each initial ranker."""
    rankers = list(config.initial_rankers) or [MOVIELENS_RANKER]
    if config.clicks is not None:
        return [_click_table(config, ranker) for ranker in rankers]
    rows = [Row("initial")]
    for name in config.baselines:
        model = to_dict(getattr(config.baseline_configs, name))
        rows.append(Row(name, name, model, config.train, config.pretrain.model))
    rows.append(_prm_row(config, "prm_base", use_pv=False))
    if config.has_pv:
        rows.append(_prm_row(config, "prm", use_pv=True))
    rows = [with_loss_candidates(config, row) for row in rows]
    tables = [Table(f"Main comparison, {LABELS[r]} lists", r, tuple(rows)) for r in rankers]
    for ablation in config.ablations:
        ranker = ablation.initial_ranker or rankers[0]
        variants = tuple(_variant_row(config, ablation, v) for v in ablation.variants)
        title = f"{ablation.title}, {LABELS[ranker]} lists"
        tables.append(Table(title, ranker, variants, ablation=True))
    return tables


def folds(config: BenchmarkConfig) -> list[str]:
    return [f"Fold{k}" for k in config.folds] or ["all"]


def plan_runs(config: BenchmarkConfig, tables: list[Table]) -> dict[str, Run]:
    """Every training run the tables need, by key: rows shared by tables are trained once."""
    runs: dict[str, Run] = {}
    for table in tables:
        for row in (trained for listed in table.rows for trained in listed.trained()):
            if row.kind is None:
                continue
            for fold in folds(config):
                for seed in config.seeds:
                    run = Run(table.ranker, fold, seed, row)
                    runs.setdefault(run.key(config), run)
    return runs


# ----------------------------------------------------------------------------- data


def _head(dataset: ListDataset, max_lists: int | None) -> ListDataset:
    return dataset if max_lists is None else dataset.subset(np.arange(min(max_lists, len(dataset))))


def lgbm_rank_lists(
    ranker_name: str, list_length: int, seed: int, cache_dir: Path
) -> dict[str, ListDataset]:
    """LightGBM's ranking sample as re-ranking lists: as for LETOR, the initial ranker is fitted
    on a seeded half of ``rank.train``'s queries; the sample has no validation file, so the
    other half is split 3:1 into ``train`` and ``valid``; ``rank.test`` gives ``test``."""
    root = dataset_dir("lgbm_rank")
    train = load_ranking_file(
        root / "rank.train", cache_dir=cache_dir, group_path=root / "rank.train.query"
    )
    test = load_ranking_file(
        root / "rank.test",
        cache_dir=cache_dir,
        group_path=root / "rank.test.query",
        n_features=train.n_features,
    )
    ranker_half, reranker_half = split_queries(train, 0.5, seed)
    rerank_train, valid = split_queries(reranker_half, 0.75, seed)
    ranker = fit_ranker(make_ranker(ranker_name, seed=seed), ranker_half)
    queries = {"train": rerank_train, "valid": valid, "test": test}
    return {s: initial_lists(ranker, q, list_length=list_length) for s, q in queries.items()}


def load_lists(
    config: BenchmarkConfig, ranker: str, fold: str, work_dir: Path
) -> ListData | dict[str, ListDataset]:
    """The lists one initial ranker gives on one fold: the ``ListData`` of ml-100k (users and
    items, for pre-training), the three splits of a LETOR-style set."""
    cache = work_dir / "cache"
    if config.dataset == "ml-100k":
        folder = work_dir / "ml-100k"
        convert_movielens(folder, protocol=MovieLensProtocol(list_length=config.list_length))
        data = load_list_data(folder)
        splits = {s: _head(d, config.max_lists) for s, d in data.splits.items()}
        return replace(data, splits=splits)
    if config.dataset == "mq2008":
        fold_dir = dataset_dir("mq2008") / fold
        splits = letor_reranking_data(fold_dir, ranker, config.list_length, config.data_seed, cache)
    else:
        splits = lgbm_rank_lists(ranker, config.list_length, config.data_seed, cache)
    return {s: _head(d, config.max_lists) for s, d in splits.items()}


def with_pv(
    data: ListData, pretrain_config: PretrainConfig, work_dir: Path, resume: bool
) -> dict[str, ListDataset]:
    """The splits with the PV of ``pretrain_config``'s CTR model, pre-trained (or, with
    ``resume``, reused from the work folder) on the training lists."""
    digest = hashlib.sha256(
        json.dumps([to_dict(pretrain_config), [len(d) for d in data.splits.values()]]).encode()
    ).hexdigest()[:12]
    folder = work_dir / "pretrain" / f"{pretrain_config.model}-seed{pretrain_config.seed}-{digest}"
    if not (resume and (folder / REPORT).is_file()):
        pretrain(ExperimentConfig(pretrain=pretrain_config), data, folder, progress=False)
    return attach_pv(data, folder).splits


# ----------------------------------------------------------------------------- training


def fit_quietly(
    spec: ModelSpec,
    train_config: TrainConfig,
    splits: dict[str, ListDataset],
    run_dir: Path,
    evaluate: EvalConfig,
) -> tuple[nn.Module, TrainState]:
    """:func:`fit_reranker` on ``splits``' train and valid lists, without progress bars or a
    per-epoch curve PNG: drawing it took about 0.13 s, more than most MQ2008 epochs
    (0.03-0.35 s); the epoch history goes into the run's record.json instead."""
    return fit_reranker(
        spec,
        train_config,
        splits["train"],
        splits["valid"],
        run_dir,
        eval_config=evaluate,
        progress=False,
        reports=False,
    )


def train_and_test(
    run: Run, splits: dict[str, ListDataset], run_dir: Path, evaluate: EvalConfig
) -> dict[str, Any]:
    """Fit on ``train``, keep the best epoch on ``valid``, and return per-list test metrics."""
    train_config = replace(run.row.train, seed=run.seed)
    started = time.perf_counter()
    train = splits["train"]
    spec = ModelSpec(run.row.kind, run.row.model, train.d_feature, train.d_pv)
    model, state = fit_quietly(spec, train_config, splits, run_dir, evaluate)
    test = splits["test"]
    scores = score_lists(model, test, device=train_config.device)
    per_list = per_list_metrics(scores, test, evaluate)
    return {
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "best_valid": state.best_metric,
        "seconds": round(time.perf_counter() - started, 2),
        "history": state.history,
        "test": {name: values.tolist() for name, values in per_list.items()},
    }


def estimate_examination(
    config: BenchmarkConfig, click_splits: dict[str, ListDataset], seed: int, run_dir: Path
) -> dict[str, Any]:
    """The examination per rank (1 at rank 1) that PRM-BASE's learned PAL tower takes when it
    is fitted to the raw click rates of ``click_splits`` (train; epoch chosen on valid), and
    how that fit went. No expert label is read."""
    estimator = config.estimator
    model = replace(
        config.model,
        use_pv=False,
        use_pe=estimator.use_pe,
        position_bias_tower=True,
        position_bias="learned",
    )
    started = time.perf_counter()
    train_config = replace(estimator.train, seed=seed)
    train = click_splits["train"]
    spec = ModelSpec.of("prm", model, train.d_feature, train.d_pv)
    fitted, state = fit_quietly(spec, train_config, click_splits, run_dir, config.evaluate)
    length = click_splits["train"].list_length
    offsets = fitted.position_bias.offset.weight[:length, 0].detach().double().numpy()
    return {
        "examination": np.exp(offsets - offsets[0]).tolist(),
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "best_valid": state.best_metric,
        "seconds": round(time.perf_counter() - started, 2),
    }


class ClickLogs:
    """One initial ranker's lists on one fold with simulated clicks (train and valid), the
    targets each row learns from, and the examination the PAL tower estimates per seed."""

    def __init__(
        self,
        config: BenchmarkConfig,
        ranker: str,
        fold: str,
        splits: dict[str, ListDataset],
        work_dir: Path,
    ) -> None:
        self.config = config
        self.clicks = config.clicks
        self.splits = splits
        self.rates: dict[str, np.ndarray] = {}  # click-through rates, clicks / sessions
        self.tie_noise: dict[str, np.ndarray] = {}  # for labels_random_ties
        for split in CLICK_SPLITS:
            # The same logs for every model seed: drawn from the click seed and the lists.
            stream = zlib.crc32(f"{ranker}/{fold}/{split}".encode())
            rng = np.random.default_rng([self.clicks.seed, stream])
            clicks = simulate_clicks(splits[split], self.clicks, rng)
            self.rates[split] = clicks / self.clicks.sessions
            self.tie_noise[split] = rng.uniform(0, TIE_NOISE, clicks.shape)
        self.estimate_dir = work_dir / "examination" / f"{ranker}-{fold}"
        self.estimates: dict[int, dict[str, Any]] = {}  # by model seed
        self.estimate_seconds = 0.0

    def estimate(self, seed: int) -> dict[str, Any]:
        """``estimate_examination`` with this seed, computed once."""
        if seed not in self.estimates:
            started = time.perf_counter()
            naive = self.training_splits("naive", seed)
            run_dir = self.estimate_dir / f"seed{seed}"
            self.estimates[seed] = estimate_examination(self.config, naive, seed, run_dir)
            self.estimate_seconds += time.perf_counter() - started
        return self.estimates[seed]

    def training_splits(self, target: ClickTarget, seed: int) -> dict[str, ListDataset]:
        """The splits a row with this ``target`` and model ``seed`` trains and selects on:
        ``train`` and ``valid`` relabelled, ``test`` always with the expert labels."""
        if target == "labels":
            return self.splits
        relabelled = dict(self.splits)
        for split in CLICK_SPLITS:
            lists = self.splits[split]
            relabelled[split] = lists.with_labels(self._targets(target, lists, split, seed))
        return relabelled

    def _targets(
        self, target: ClickTarget, lists: ListDataset, split: str, seed: int
    ) -> np.ndarray:
        rates = self.rates[split]
        if target == "naive":
            return rates
        if target == "ips_known":
            return ips_labels(rates, lists, examination_by_rank(lists.list_length, self.clicks.eta))
        if target == "ips_estimated":
            return ips_labels(rates, lists, np.array(self.estimate(seed)["examination"]))
        if target == "click_probability":
            probability = click_probability(
                lists.labels, epsilon=self.clicks.epsilon, max_grade=self.clicks.max_grade
            )
            return probability * lists.mask
        return (lists.labels + self.tie_noise[split]) * lists.mask  # labels_random_ties


def _by_unit(runs: dict[str, Run]) -> dict[tuple[str, str], dict[str, Run]]:
    """Runs grouped by (initial ranker, fold), so each fold's lists are built once."""
    units: dict[tuple[str, str], dict[str, Run]] = {}
    for key, run in runs.items():
        units.setdefault((run.ranker, run.fold), {})[key] = run
    return units


def execute(
    config: BenchmarkConfig,
    tables: list[Table],
    work_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> tuple[dict[str, dict[str, ListDataset]], dict[str, dict[str, Any]], dict[str, float]]:
    """Train every planned run; return the splits by "ranker/fold", the run records by key and
    seconds per stage (data, pretrain, train, and with clicks the examination estimates)."""
    runs = plan_runs(config, tables)
    unit_names = {(t.ranker, f) for t in tables for f in folds(config)}
    records: dict[str, dict[str, Any]] = {}
    lists: dict[str, dict[str, ListDataset]] = {}
    seconds = {"data": 0.0, "pretrain": 0.0, "train": 0.0}
    if config.clicks is not None:
        seconds["examination estimates"] = 0.0
    bar = tqdm(total=len(runs), desc=f"{config.name}: training runs", disable=not progress)
    grouped = _by_unit(runs)
    for ranker, fold in sorted(unit_names):
        started = time.perf_counter()
        data = load_lists(config, ranker, fold, work_dir)
        splits = data.splits if isinstance(data, ListData) else data
        lists[f"{ranker}/{fold}"] = splits
        logs = ClickLogs(config, ranker, fold, splits, work_dir) if config.clicks else None
        seconds["data"] += time.perf_counter() - started
        pv_cache: dict[str, dict[str, ListDataset]] = {}
        for key, run in grouped.get((ranker, fold), {}).items():
            bar.set_postfix_str(f"{ranker} {fold} {run.row.name} seed {run.seed}")
            record_path = work_dir / "runs" / key / "record.json"
            if resume and record_path.is_file():
                records[key] = json.loads(record_path.read_text())
                bar.update()
                continue
            run_splits = splits
            pretrain_config = run.pretrain_config(config)
            if pretrain_config is not None and isinstance(data, ListData):
                pv_key = json.dumps(to_dict(pretrain_config))
                if pv_key not in pv_cache:
                    started = time.perf_counter()
                    pv_cache[pv_key] = with_pv(data, pretrain_config, work_dir, resume)
                    seconds["pretrain"] += time.perf_counter() - started
                run_splits = pv_cache[pv_key]
            if logs is not None:
                run_splits = logs.training_splits(run.row.target, run.seed)
            record = train_and_test(run, run_splits, record_path.parent, config.evaluate)
            if run.row.target == "ips_estimated":
                record["examination_estimate"] = logs.estimates[run.seed]
            record.update(row=run.row.name, kind=run.row.kind, ranker=ranker, fold=fold)
            record["loss"] = run.row.train.loss
            record["seed"] = run.seed
            write_json(record_path, record)
            records[key] = record
            seconds["train"] += record["seconds"]
            bar.update()
        if logs is not None:
            seconds["examination estimates"] += logs.estimate_seconds
    bar.close()
    return lists, records, seconds


# ----------------------------------------------------------------------------- results


def metric_names(evaluate: EvalConfig) -> list[str]:
    return [f"{m}@{k}" for m in ("p", "map", "ndcg") for k in evaluate.ks]


def _row_runs(
    config: BenchmarkConfig,
    table: Table,
    row: Row,
    lists: dict[str, dict[str, ListDataset]],
    records: dict[str, dict[str, Any]],
) -> list[dict[str, np.ndarray]]:
    """Per seed: per-list test metrics of the lists with a relevant item, all folds joined."""
    if row.kind is None:  # the initial ranking: the same for every seed
        per_fold = []
        for fold in folds(config):
            test = lists[f"{table.ranker}/{fold}"]["test"]
            scores = -test.positions.astype(np.float32)  # rank 0 first
            per_fold.append(per_list_metrics(scores, test, config.evaluate))
        return [_join(config, table, per_fold, lists)]
    out = []
    for seed in config.seeds:
        per_fold = [
            {
                k: np.asarray(v)
                for k, v in records[Run(table.ranker, fold, seed, row).key(config)]["test"].items()
            }
            for fold in folds(config)
        ]
        out.append(_join(config, table, per_fold, lists))
    return out


def _join(
    config: BenchmarkConfig,
    table: Table,
    per_fold: list[dict[str, np.ndarray]],
    lists: dict[str, dict[str, ListDataset]],
) -> dict[str, np.ndarray]:
    """Concatenate folds, keeping the lists with a relevant item."""
    keep = [
        lists_with_click(
            lists[f"{table.ranker}/{f}"]["test"].labels, lists[f"{table.ranker}/{f}"]["test"].mask
        )
        for f in folds(config)
    ]
    return {
        name: np.concatenate([run[name][k] for run, k in zip(per_fold, keep, strict=True)])
        for name in per_fold[0]
    }


def _valid_value(
    config: BenchmarkConfig,
    table: Table,
    row: Row,
    lists: dict[str, dict[str, ListDataset]],
    records: dict[str, dict[str, Any]],
) -> float | None:
    """The validation selection value (at the selected epoch) averaged over folds and seeds;
    for the initial ranking its value on the validation lists (None when selecting on loss, and
    in a click table, where each row selects on its own kind of validation clicks)."""
    metric = config.train.selection_metric
    if row.kind is not None:
        return float(
            np.mean(
                [
                    records[Run(table.ranker, fold, seed, row).key(config)]["best_valid"]
                    for fold in folds(config)
                    for seed in config.seeds
                ]
            )
        )
    if metric == "loss" or table.clicks:
        return None
    values = []
    for fold in folds(config):
        valid = lists[f"{table.ranker}/{fold}"]["valid"]
        scores = -valid.positions.astype(np.float32)  # rank 0 first
        values.append(evaluate_scores(scores, valid, config.evaluate)[metric])
    return float(np.mean(values))


def select_losses(
    config: BenchmarkConfig,
    table: Table,
    lists: dict[str, dict[str, ListDataset]],
    records: dict[str, dict[str, Any]],
) -> Table:
    """``table`` with each row that has loss candidates replaced by the candidate of best mean
    validation value, so the choice never sees the test lists."""

    def best(row: Row) -> Row:
        if not row.candidates:
            return row
        values = [_valid_value(config, table, c, lists, records) for c in row.candidates]
        return row.candidates[int(np.argmax(values))]

    return replace(table, rows=tuple(best(row) for row in table.rows))


def _loss_label(row: Row) -> str | None:
    if row.train is None:
        return None
    return "own (step-wise)" if row.kind in OWN_LOSS else row.train.loss


def summarize_table(
    config: BenchmarkConfig,
    table: Table,
    lists: dict[str, dict[str, ListDataset]],
    records: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Mean ± std over seeds of each row and metric, and the paired t-tests of the table."""
    table = select_losses(config, table, lists, records)
    per_row = {row.name: _row_runs(config, table, row, lists, records) for row in table.rows}
    row_spec = {row.name: row for row in table.rows}
    rows: dict[str, dict[str, Any]] = {}
    for name, runs in per_row.items():
        row: dict[str, Any] = {"seeds": len(runs)}
        for metric in metric_names(config.evaluate):
            row[metric], row[f"{metric}_std"] = mean_std(np.array([r[metric].mean() for r in runs]))
        row["valid"] = _valid_value(config, table, row_spec[name], lists, records)
        row["loss"] = _loss_label(row_spec[name])
        rows[name] = row
    names = list(per_row)
    if table.ablation:
        references = {"first": names[0]}
    elif table.clicks:
        references = {"initial": "initial"} | ({"naive": "naive"} if "naive" in names else {})
    else:
        baselines = [n for n in names if n in config.baselines]
        sign = -1.0 if config.train.selection_metric == "loss" else 1.0  # loss: lower is better
        best = max(baselines, key=lambda n: sign * rows[n]["valid"]) if baselines else None
        references = {"initial": "initial"} | ({"best_baseline": best} if best else {})
    tests_out = []
    for label, reference in references.items():
        pairs = [(name, reference) for name in names if name != reference]
        for metric in TESTED:
            for test in pairwise_tests(per_row, pairs, key=metric):
                rows[test["a"]][f"p_{metric}_vs_{label}"] = test["t_pvalue"]
                tests_out.append({**test, "reference": label})
    n_relevant = len(next(iter(per_row.values()))[0][HEADLINE])
    n_lists = sum(len(lists[f"{table.ranker}/{f}"]["test"]) for f in folds(config))
    summary = {
        "title": table.title,
        "ranker": table.ranker,
        "ablation": table.ablation,
        "clicks": table.clicks,
        "references": references,
        "lists": n_lists,
        "lists_with_relevant": n_relevant,
        "rows": rows,
        "tests": tests_out,
    }
    if table.clicks:
        for name, (share, std) in label_gain_shares(per_row).items():
            rows[name]["label_gain_share"], rows[name]["label_gain_share_std"] = share, std
        if "ips_estimated" in row_spec:
            summary["examination"] = _estimated_examination(
                config, table, row_spec["ips_estimated"], records
            )
    return summary


def label_gain_shares(
    per_row: dict[str, list[dict[str, np.ndarray]]],
) -> dict[str, tuple[float, float]]:
    """Per row, its NDCG@10 gain over the initial ranking as a share of the ``labels`` row's
    mean gain: mean and std over seeds (``per_row``: per seed, per-list test metrics). Empty
    without an ``initial`` and a ``labels`` row, or when the label-trained gain is not positive."""
    if "initial" not in per_row or "labels" not in per_row:
        return {}
    initial = per_row["initial"][0][HEADLINE].mean()
    label_gain = np.mean([run[HEADLINE].mean() for run in per_row["labels"]]) - initial
    if label_gain <= 0:
        return {}
    return {
        name: mean_std(np.array([(run[HEADLINE].mean() - initial) / label_gain for run in runs]))
        for name, runs in per_row.items()
    }


def _estimated_examination(
    config: BenchmarkConfig, table: Table, row: Row, records: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The examination the PAL tower estimated at ``ESTIMATED_RANKS`` (mean and std over folds
    and seeds) beside the true (1 / k)^eta."""
    ranks = [k for k in ESTIMATED_RANKS if k <= config.list_length]
    estimates = np.array(
        [
            records[Run(table.ranker, fold, seed, row).key(config)]["examination_estimate"][
                "examination"
            ]
            for fold in folds(config)
            for seed in config.seeds
        ]
    )[:, np.array(ranks) - 1]
    true = examination_by_rank(config.list_length, config.clicks.eta)[np.array(ranks) - 1]
    return {
        "ranks": ranks,
        "estimated": estimates.mean(axis=0).tolist(),
        "estimated_std": estimates.std(axis=0).tolist(),
        "true": true.tolist(),
    }


def render_table(summary: dict[str, Any], config: BenchmarkConfig) -> str:
    """A markdown table: test metrics as mean ± std over seeds, the validation value that
    selected the epochs, then paired t-test p-values."""
    metrics = metric_names(config.evaluate)
    references = summary["references"]
    header = ["model" if not summary["ablation"] else "variant"]
    convention = config.evaluate.map_convention
    header += [f"{m.upper()} ({convention})" if m.startswith("map") else m.upper() for m in metrics]
    valid = f"valid {config.train.selection_metric.upper()}"
    header.append(f"{valid} (own targets)" if summary["clicks"] else valid)
    if config.losses:
        header.append("loss (chosen on valid)")
    shares = any("label_gain_share" in row for row in summary["rows"].values())
    if shares:
        header.append("share of the label-trained gain")
    for reference in references.values():
        header.append(f"p vs {LABELS.get(reference, reference)} (NDCG@10 / MAP@10)")
    lines = []
    for name, row in summary["rows"].items():
        cells = [LABELS.get(name, name)]
        cells += [f"{row[m]:.4f} ± {row[f'{m}_std']:.4f}" for m in metrics]
        cells.append("–" if row["valid"] is None else f"{row['valid']:.4f}")
        if config.losses:
            cells.append(row["loss"] or "–")
        if shares:
            cells.append(
                f"{100 * row['label_gain_share']:.0f} % ± {100 * row['label_gain_share_std']:.0f}"
                if "label_gain_share" in row
                else "–"
            )
        for label in references:
            pvalues = [row.get(f"p_{m}_vs_{label}") for m in TESTED]
            cells.append(
                "–" if pvalues[0] is None else " / ".join(p_value_cell(p) for p in pvalues)
            )
        lines.append(cells)
    return markdown_table(header, lines)


def plot_suite(summaries: list[dict[str, Any]], path: Path, title: str) -> None:
    """NDCG@10 mean ± std (over seeds) of every row of every table, one panel per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summaries)
    columns = min(n, 3)
    figure, axes = plt.subplots(
        -(-n // columns), columns, figsize=(5 * columns, 3.8 * -(-n // columns)), squeeze=False
    )
    for axis in axes.flat[n:]:
        axis.set_visible(False)
    for axis, summary in zip(axes.flat, summaries, strict=False):
        names = list(summary["rows"])
        means = np.array([summary["rows"][n][HEADLINE] for n in names])
        stds = np.array([summary["rows"][n][f"{HEADLINE}_std"] for n in names])
        colors = [
            "0.6" if n == "initial" else ("C3" if n.startswith("prm") else "C0") for n in names
        ]
        axis.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        axis.set_xticks(
            range(len(names)), [LABELS.get(n, n) for n in names], rotation=45, ha="right"
        )
        low, high = float((means - stds).min()), float((means + stds).max())
        margin = max(high - low, 0.01) * 0.3
        axis.set_ylim(low - margin, high + margin)  # differences are small: the axis is cut
        axis.set_ylabel("NDCG@10 (axis cut)")
        axis.set_title(summary["title"], fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def _protocol(config: BenchmarkConfig, summary: dict[str, Any]) -> str:
    folds_text = (
        f"Test lists of fold(s) {', '.join(map(str, config.folds))} joined (each query is "
        "tested in one fold)"
        if config.folds
        else "One test split"
    )
    seeds = ", ".join(str(s) for s in config.seeds)
    return (
        f"{summary['lists_with_relevant']} of {summary['lists']} test lists have a relevant item "
        f"and are averaged; lists without one are excluded (every ordering scores 0 on them). "
        f"{folds_text}; mean ± std over seeds {seeds}; epochs selected on validation "
        f"{config.train.selection_metric}"
        + (
            f"; each re-ranker's list loss chosen among {', '.join(config.losses)} by its mean "
            "validation value"
            + (
                " (Seq2Slate keeps its own step-wise loss)"
                if "seq2slate" in config.baselines
                else ""
            )
            if config.losses
            else ""
        )
        + f". MAP convention '{config.evaluate.map_convention}'"
        + (
            " (AP@k divides by the relevant items in the top k, as the PRM authors' code)."
            if config.evaluate.map_convention == "prm"
            else " (AP@k divides by all relevant items of the list, as trec_eval)."
        )
        + " p: paired t-test on per-list values averaged over seeds."
    )


def _click_protocol(config: BenchmarkConfig) -> str:
    clicks, estimator = config.clicks, config.estimator
    diagnostics = {
        "click_probability": "p(y) as the target, what IPS converges to with unlimited sessions "
        "and the exact examination",
        "labels_random_ties": f"the expert labels plus uniform noise below {TIE_NOISE:g}, so "
        "ties between documents of one grade are broken at random (ListMLE breaks exact ties in "
        "the initial order; click targets rarely tie)",
    }
    notes = [f"'{LABELS[t]}': {text}" for t, text in diagnostics.items() if t in clicks.targets]
    return (
        f"Clicks: each training and validation list is shown {clicks.sessions} times in its "
        f"initial order; the document at rank k is examined with probability (1/k)^{clicks.eta:g} "
        f"and then clicked with probability {clicks.epsilon:g} + {1 - clicks.epsilon:g} "
        f"(2^y - 1) / (2^{clicks.max_grade} - 1) of its grade y (click seed {clicks.seed}). "
        "Every row is PRM-BASE. Click-trained rows learn from the click-through rates: raw "
        "(naive), divided by the true examination (IPS, known) or by the examination a learned "
        "PAL tower estimated from the training clicks (PRM-BASE "
        f"{'with' if estimator.use_pe else 'without'} PE plus the tower, lr "
        f"{estimator.train.lr:g}, batch {estimator.train.batch_size}, epoch chosen on the "
        "validation click likelihood). Each selects its epochs and loss on NDCG@10 against its "
        "own validation targets (raw, IPS-known or IPS-estimated clicks), never on the expert "
        "labels; the label-trained row selects on the validation labels. "
        + (f"Diagnostics, which read the labels: {'; '.join(notes)}. " if notes else "")
        + "Test lists are scored against the expert labels. Share of the label-trained gain: "
        "(NDCG@10 - initial) / (label-trained NDCG@10 - initial), mean ± std over seeds."
    )


def _examination_line(examination: dict[str, Any]) -> str:
    cells = (
        f"rank {k}: {mean:.3f} ± {std:.3f} (true {true:.3f})"
        for k, mean, std, true in zip(
            examination["ranks"],
            examination["estimated"],
            examination["estimated_std"],
            examination["true"],
            strict=True,
        )
    )
    return "Examination estimated by the PAL tower (mean ± std over folds and seeds): " + (
        "; ".join(cells) + "."
    )


def render_section(results: dict[str, Any], config: BenchmarkConfig) -> str:
    """The suite's section of RESULTS.md: how it was run, then every table."""
    minutes = results["seconds"]["total"] / 60
    parts = [
        f"## {config.name}" + (" (quick settings)" if results["quick"] else ""),
        "",
        f"- Command: `{results['command']}`",
        f"- Machine: {results['machine']}; torch threads: {config.threads}; "
        f"load average (1 min) at start / end: {results['load_average'][0]:.2f} / "
        f"{results['load_average'][1]:.2f} (other jobs share the machine)",
        f"- Wall time: {minutes:.1f} min for {results['runs']} training runs ("
        + ", ".join(f"{stage} {s:.0f} s" for stage, s in results["seconds"].items())
        + "); mean seconds per run: "
        + ", ".join(f"{LABELS.get(k, k)} {v:.1f}" for k, v in results["seconds_per_run"].items()),
        f"- Figure: `{results['figure']}`; numbers: `{results['json']}`",
    ]
    for summary in results["tables"]:
        parts += ["", f"### {summary['title']}", "", _protocol(config, summary), ""]
        if not summary["ablation"] and "best_baseline" in summary["references"]:
            best = summary["references"]["best_baseline"]
            parts += [
                f"Best baseline (best mean validation {config.train.selection_metric.upper()}): "
                f"{LABELS.get(best, best)}.",
                "",
            ]
        if summary["clicks"]:
            parts += [_click_protocol(config), ""]
        parts.append(render_table(summary, config))
        if "examination" in summary:
            parts += ["", _examination_line(summary["examination"])]
    return "\n".join(parts) + "\n"


RESULTS_HEADER = (
    "# Benchmarks on real data\n\n"
    "Written by `prm benchmark <suite>` (src/prm/benchmark.py): one section per suite, replaced "
    "when that suite runs again. Numbers are measured by the command shown in each section.\n"
)


def update_results_markdown(path: Path, suite: str, section: str) -> None:
    """Put ``section`` between the suite's markers in ``path``, keeping other suites' sections."""
    begin, end = f"<!-- benchmark:{suite} -->", f"<!-- /benchmark:{suite} -->"
    block = f"{begin}\n{section}{end}\n"
    text = path.read_text() if path.is_file() else RESULTS_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _seconds_per_run(records: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean training seconds of one run, per row name (where the time goes)."""
    seconds: dict[str, list[float]] = {}
    for record in records.values():
        seconds.setdefault(record["row"], []).append(record["seconds"])
    return {row: round(float(np.mean(values)), 2) for row, values in seconds.items()}


def run_benchmark(
    config: BenchmarkConfig,
    *,
    out_dir: str | Path,
    work_dir: str | Path,
    command: str,
    quick: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a suite; write ``RESULTS.md`` (its section), ``figures/<name>.png`` and
    ``results/<name>.json`` under ``out_dir``; return the results."""
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    torch.set_num_threads(config.threads)
    out_dir, work_dir = Path(out_dir), Path(work_dir) / config.name
    tables = plan_tables(config)
    lists, records, seconds = execute(config, tables, work_dir, resume=resume, progress=progress)
    summaries = [summarize_table(config, table, lists, records) for table in tables]
    figure = out_dir / "figures" / f"{config.name}.png"
    json_path = out_dir / "results" / f"{config.name}.json"
    plot_suite(summaries, figure, f"{config.name}: NDCG@10, mean ± std over seeds")
    seconds["total"] = time.perf_counter() - started
    results = {
        "suite": config.name,
        "quick": quick,
        "command": command,
        "machine": machine(),
        "load_average": [load_start, os.getloadavg()[0]],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "runs": len(records),
        "seconds_per_run": _seconds_per_run(records),
        "figure": str(figure),
        "json": str(json_path),
        "tables": summaries,
        "run_records": {
            key: {k: v for k, v in record.items() if k not in ("test", "history")}
            for key, record in records.items()
        },
        "config": to_dict(config),
    }
    write_json(json_path, results)
    update_results_markdown(out_dir / "RESULTS.md", config.name, render_section(results, config))
    return results
