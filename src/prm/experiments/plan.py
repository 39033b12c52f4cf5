"""A suite's plan: the tables it reports, their rows, and the runs (row x initial ranker x fold x
seed) they need, each keyed by a hash of everything it depends on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any

from prm.config import PretrainConfig, PRMConfig, TrainConfig, from_dict, to_dict
from prm.data.click_simulation import ClickTarget
from prm.experiments.config import (
    LABELS,
    MOVIELENS_RANKER,
    OWN_LOSS,
    TUNED_TRAIN_FIELDS,
    AblationConfig,
    BenchmarkConfig,
    Variant,
)
from prm.registry import RERANKERS


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
    # The same row trained with each candidate configuration; ``choose`` keeps the best one.
    candidates: tuple[Row, ...] = ()
    choice: dict[str, Any] = field(default_factory=dict)  # a candidate's grid values

    def trained(self) -> tuple[Row, ...]:
        """The rows actually trained for this one: its candidates, or itself."""
        return self.candidates or (self,)


def with_candidates(config: BenchmarkConfig, row: Row) -> Row:
    """``row`` trained with each configuration of its tuning grid, or with each of
    ``config.losses``; unchanged when there is no choice."""
    if row.kind is None:
        return row
    if config.tuning is not None:
        grid = config.tuning.grids.get(row.kind, {})
        choices = [dict(zip(grid, values, strict=True)) for values in product(*grid.values())]
        choices = choices[: config.tuning.limit]
    elif config.losses and row.kind not in OWN_LOSS:
        choices = [{"loss": loss} for loss in config.losses]
    else:
        return row
    return replace(row, candidates=tuple(configured(row, choice) for choice in choices))


def configured(row: Row, choice: dict[str, Any]) -> Row:
    """``row`` with the fields of ``choice`` set: train fields on its training, the others on
    its model (checked against the model's config)."""
    train = {k: v for k, v in choice.items() if k in TUNED_TRAIN_FIELDS}
    model = {k: v for k, v in choice.items() if k not in TUNED_TRAIN_FIELDS}
    config_class = RERANKERS[row.kind][1]
    return replace(
        row,
        model=to_dict(from_dict(config_class, {**row.model, **model})),
        train=replace(row.train, **train),
        choice={**row.choice, **choice},
    )


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
        "dataset": config.dataset if isinstance(config.dataset, str) else to_dict(config.dataset),
        "list_length": config.list_length,
        "data_seed": config.data_seed,
        "max_lists": config.max_lists,
    }


def _prm_row(config: BenchmarkConfig, name: str, use_pv: bool) -> Row:
    model = replace(config.model, use_pv=use_pv)
    return Row(name, "prm", to_dict(model), config.train, config.pretrain.model)


def _variant_row(
    config: BenchmarkConfig, ablation: AblationConfig, variant: Variant, base: Row
) -> Row:
    """A variant of ``base``, the main table's PRM row (its chosen configuration when tuned)."""
    model_fields = {
        k: getattr(variant, k)
        for k in ("use_pv", "use_pe", "n_heads", "n_blocks")
        if getattr(variant, k) is not None
    }
    model = from_dict(PRMConfig, {**base.model, **model_fields})
    train = base.train if variant.loss is None else replace(base.train, loss=variant.loss)
    pretrain_model = variant.pretrain_model or config.pretrain.model
    row = Row(variant.name, "prm", to_dict(model), train, pretrain_model, choice=base.choice)
    if variant.loss is not None or config.tuning is not None:
        return row
    return with_candidates(config, row)


def _click_table(config: BenchmarkConfig, ranker: str) -> Table:
    """The initial ranking, then PRM-BASE trained on each of ``config.clicks.targets``."""
    rows = [Row("initial")]
    for target in config.clicks.targets:
        row = replace(_prm_row(config, target, use_pv=False), target=target)
        rows.append(with_candidates(config, row))
    title = f"PRM-BASE trained on simulated clicks, {LABELS[ranker]} lists"
    return Table(title, ranker, tuple(rows), clicks=True)


def plan_tables(config: BenchmarkConfig) -> list[Table]:
    """The main table of each initial ranker (its rows still holding their candidates); with
    ``clicks``, the click-trained table of each initial ranker."""
    rankers = list(config.initial_rankers) or [MOVIELENS_RANKER]
    if config.clicks is not None:
        return [_click_table(config, ranker) for ranker in rankers]
    rows = [Row("initial")] + ([Row("full_data")] if config.letor else [])
    for name in config.baselines:
        model = to_dict(getattr(config.baseline_configs, name))
        rows.append(Row(name, name, model, config.train, config.pretrain.model))
    rows.append(_prm_row(config, "prm_base", use_pv=False))
    if config.has_pv:
        rows.append(_prm_row(config, "prm", use_pv=True))
    rows = [with_candidates(config, row) for row in rows]
    return [Table(f"Main comparison, {LABELS[r]} lists", r, tuple(rows)) for r in rankers]


def plan_ablations(config: BenchmarkConfig, chosen: list[Table]) -> list[Table]:
    """The ablation tables, each varying the row its main table chose (``chosen``: the main
    tables with one configuration per row)."""
    tables = []
    for ablation in config.ablations:
        ranker = ablation.initial_ranker or chosen[0].ranker
        main = next(table for table in chosen if table.ranker == ranker)
        base = next(row for row in main.rows if row.name == ablation.base)
        if config.tuning is None:  # each variant chooses its own loss, as the main rows did
            base = _prm_row(config, ablation.base, ablation.base == "prm")
        variants = tuple(_variant_row(config, ablation, v, base) for v in ablation.variants)
        title = f"{ablation.title}, {LABELS[ranker]} lists"
        tables.append(Table(title, ranker, variants, ablation=True))
    return tables


def candidate_seeds(config: BenchmarkConfig) -> tuple[int, ...]:
    """The seeds candidates are trained with before one is chosen."""
    return config.seeds if config.tuning is None else config.tuning.seeds


def plan_runs(
    config: BenchmarkConfig, tables: list[Table], seeds: tuple[int, ...]
) -> dict[str, Run]:
    """Every training run the tables need with ``seeds``, by key: rows shared by tables are
    trained once."""
    runs: dict[str, Run] = {}
    for table in tables:
        for row in (trained for listed in table.rows for trained in listed.trained()):
            if row.kind is None:
                continue
            for fold in config.fold_names():
                for seed in seeds:
                    run = Run(table.ranker, fold, seed, row)
                    runs.setdefault(run.key(config), run)
    return runs
