"""A suite's config (``configs/bench_<suite>.yaml``): the dataset, the initial rankers, the
re-rankers and their settings, the seeds, the ablations and the click simulation; checked
whole when loaded. The names the tables print are here too."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from prm.config import (
    ConfigError,
    EvalConfig,
    PretrainConfig,
    PRMConfig,
    TrainConfig,
    check_expect,
    from_dict,
    to_dict,
)
from prm.data.click_simulation import ClickSimulation
from prm.data.files import dataset_dir
from prm.rankers.dlcm import DLCMConfig
from prm.rankers.gsf import GSFConfig
from prm.rankers.midnn import MiDNNConfig
from prm.rankers.seq2slate import Seq2SlateConfig
from prm.rankers.setrank import SetRankConfig

InitialRanker = Literal["lambdamart", "linear_pairwise", "pointwise_dnn"]


Baseline = Literal["dlcm", "seq2slate", "setrank", "gsf", "midnn"]


Loss = Literal["softmax_ce", "list_mle", "approx_ndcg"]


TUNED_TRAIN_FIELDS = {"lr", "weight_decay", "loss", "batch_size"}  # train fields a grid may set


OWN_LOSS = {"seq2slate"}  # re-rankers with their own objective: list-loss candidates skip them


MOVIELENS_RANKER = "popularity_genre"  # ml-100k's fixed initial ranker (docs/datasets.md)


ESTIMATED_RANKS = (2, 3, 5, 10, 20, 30)  # 1-based ranks whose estimated examination is reported


CLICK_SPLITS = ("train", "valid")  # where clicks are simulated; test keeps the expert labels


TIE_NOISE = 0.01  # labels_random_ties: uniform noise below the gap between grades
HEADLINE = "ndcg@10"  # drawn in the figure; with TESTED the p-value columns
TESTED = ("ndcg@10", "map@10")  # metrics with p-value columns in the tables
LABELS = {
    "initial": "initial ranking",
    "full_data": "initial ranker on all training queries",
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


@dataclass(frozen=True)
class RankingFolder:
    """Any LETOR-style ranking set: svmlight files with ``qid:`` on each line, or with a
    LightGBM group file ``<file>.query`` beside each, any number of features. With ``folds``,
    the files lie in ``<path>/Fold<k>/``; without, in ``<path>/``."""

    path: str  # absolute, or relative to the data folder ($PRM_DATA_DIR, --data-dir)
    folds: tuple[int, ...] = ()
    train: str = "train.txt"
    valid: str | None = "vali.txt"  # null: the re-rankers' half of train is split 3:1
    test: str = "test.txt"

    def __post_init__(self) -> None:
        if any(k < 1 for k in self.folds) or len(set(self.folds)) != len(self.folds):
            raise ConfigError(f"folds: distinct fold numbers >= 1, got {list(self.folds)}")

    def fold_names(self) -> list[str]:
        return [f"Fold{k}" for k in self.folds] or ["all"]

    def folder(self, fold: str) -> Path:
        """Where ``fold``'s files lie (``fold`` from :meth:`fold_names`)."""
        root = Path(self.path) if Path(self.path).is_absolute() else dataset_dir(self.path)
        return root if fold == "all" else root / fold


def grid_size(grid: dict[str, list[Any]]) -> int:
    """Configurations in a grid: the product of its value counts."""
    return int(np.prod([len(values) for values in grid.values()]))


@dataclass(frozen=True)
class Tuning:
    """An equal, validation-only tuning budget: each re-ranker of the main tables is trained
    with every configuration of its grid (the same number for all) on ``seeds``; the one with
    the best mean validation selection metric over folds and seeds is then trained with every
    seed of the suite and reported. Test lists are read once, at the end."""

    # kind -> field -> candidate values; a field of the re-ranker's config, or of train: lr,
    # weight_decay, loss (not for Seq2Slate, which has its own), batch_size
    grids: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)  # the seeds every candidate is trained with
    limit: int | None = None  # keep the first configurations of each grid (quick runs)

    def __post_init__(self) -> None:
        sizes = {}
        for kind, grid in self.grids.items():
            if not isinstance(grid, dict) or not grid:
                raise ConfigError(f"tuning.grids.{kind}: a mapping of field -> list of values")
            for name, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"tuning.grids.{kind}.{name}: a non-empty list of values")
                if kind in OWN_LOSS and name == "loss":
                    raise ConfigError(f"tuning.grids.{kind}.loss: {kind} has its own loss")
            sizes[kind] = grid_size(grid)
        if len(set(sizes.values())) > 1:
            raise ConfigError(
                "tuning.grids: every re-ranker gets the same number of configurations, got "
                + ", ".join(f"{k} {n}" for k, n in sizes.items())
            )
        if not self.seeds:
            raise ConfigError("tuning.seeds: at least one seed is needed")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"tuning.limit: must be >= 1, got {self.limit}")

    @property
    def budget(self) -> int:
        """Configurations each re-ranker is trained with."""
        size = grid_size(next(iter(self.grids.values()))) if self.grids else 0
        return min(size, self.limit or size)


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
    dataset: RankingFolder | Literal["ml-100k"]
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
    tuning: Tuning | None = None  # grids of every re-ranker (in place of ``losses``)
    evaluate: EvalConfig = field(default_factory=lambda: EvalConfig(ks=(5, 10)))
    ablations: tuple[AblationConfig, ...] = ()
    # Set: train PRM-BASE on simulated clicks (the unbiased learning-to-rank check) instead of
    # the main table; see prm.data.click_simulation.
    clicks: ClickSimulation | None = None
    estimator: ExaminationEstimator = field(default_factory=ExaminationEstimator)
    threads: int = 1  # 2 is <= 25% faster on an idle machine, far slower on a busy one
    # The figures this suite expects: "<initial ranker>/<row>" -> metric -> [low, high],
    # reported beside the measured main-table values (as the demo's config states its own).
    expect: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_expect(self.expect)
        letor = self.letor
        if letor != bool(self.initial_rankers):
            raise ConfigError(
                "initial_rankers: "
                + ("a ranking folder needs at least one" if letor else "none for ml-100k")
            )
        if not self.seeds:
            raise ConfigError("seeds: at least one seed is needed")
        if len(self.losses) == 1:
            raise ConfigError("losses: give two or more candidates, or set train.loss instead")
        if self.losses and self.tuning is not None:
            raise ConfigError("losses: with tuning, put loss in the grids instead")
        if self.tuning is not None:
            self._check_grids(self.tuning)
        if (self.losses or self.tuning) and self.train.selection_metric == "loss":
            raise ConfigError(
                "losses, tuning: choosing among configurations needs train.selection_metric "
                "other than 'loss' (the values of different losses do not compare)"
            )
        for ablation in self.ablations:
            if ablation.initial_ranker not in (None, *self.initial_rankers):
                raise ConfigError(
                    f"ablations: {ablation.title!r} uses initial ranker "
                    f"{ablation.initial_ranker!r}, not one of {list(self.initial_rankers)}"
                )
            if ablation.base == "prm" and self.letor:
                raise ConfigError(f"ablations: {ablation.title!r}: PRM needs users (ml-100k)")
        if self.clicks is not None and (not letor or self.baselines or self.ablations):
            raise ConfigError(
                "clicks: the click-trained table needs expert labels (a LETOR-style dataset) "
                "and trains PRM-BASE only: set baselines: [] and no ablations"
            )

    def _check_grids(self, tuning: Tuning) -> None:
        """Every trained row of the main table has a grid, naming only fields it has."""
        kinds = {*self.baselines, "prm"}
        if set(tuning.grids) != kinds:
            raise ConfigError(
                f"tuning.grids: one grid per re-ranker, for {sorted(kinds)} "
                f"(PRM-BASE and PRM: prm), got {sorted(tuning.grids)}"
            )
        for kind, grid in tuning.grids.items():
            model = self.model if kind == "prm" else getattr(self.baseline_configs, kind)
            known = {f.name for f in fields(model)} | TUNED_TRAIN_FIELDS
            unknown = sorted(set(grid) - known)
            if unknown:
                raise ConfigError(
                    f"tuning.grids.{kind}: unknown field(s) {unknown} (known: {sorted(known)})"
                )
            for name, values in grid.items():  # each value valid on its own, named if not
                base = self.train if name in TUNED_TRAIN_FIELDS else model
                for value in values:
                    from_dict(type(base), {**to_dict(base), name: value}, f"tuning.grids.{kind}.")

    @property
    def letor(self) -> bool:
        """A LETOR-style ranking folder (ml-100k is the other kind)."""
        return isinstance(self.dataset, RankingFolder)

    @property
    def has_pv(self) -> bool:
        """Only ml-100k has users, so only there is PV pre-trained and PRM trained."""
        return self.dataset == "ml-100k"

    def fold_names(self) -> list[str]:
        return self.dataset.fold_names() if self.letor else ["all"]

    @property
    def tested(self) -> tuple[str, ...]:
        """Metrics with p-value columns: with ranking queries, NDCG@10 over the full query too."""
        return (*TESTED, f"full_{HEADLINE}") if self.letor else TESTED


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
