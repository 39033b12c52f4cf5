"""A suite's plan: the tables it reports, their rows, and the runs (row x initial ranker x fold x
seed) they need, each keyed by a hash of everything it depends on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from prm.config import PretrainConfig, PRMConfig, TrainConfig, from_dict, to_dict
from prm.data.click_simulation import ClickTarget
from prm.experiments.config import (
    LABELS,
    MOVIELENS_RANKER,
    OWN_LOSS,
    AblationConfig,
    BenchmarkConfig,
    Variant,
)


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
