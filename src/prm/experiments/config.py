"""A suite's config (``configs/bench_<suite>.yaml``): the dataset, the initial rankers, the
re-rankers and their settings, the seeds, the ablations and the click simulation; checked
whole when loaded. The names the tables print are here too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prm.config import (
    ConfigError,
    EvalConfig,
    PretrainConfig,
    PRMConfig,
    TrainConfig,
    check_expect,
    from_dict,
)
from prm.data.click_simulation import ClickSimulation
from prm.rankers.dlcm import DLCMConfig
from prm.rankers.gsf import GSFConfig
from prm.rankers.midnn import MiDNNConfig
from prm.rankers.seq2slate import Seq2SlateConfig
from prm.rankers.setrank import SetRankConfig

Dataset = Literal["mq2008", "lgbm_rank", "ml-100k"]


InitialRanker = Literal["lambdamart", "linear_pairwise", "pointwise_dnn"]


Baseline = Literal["dlcm", "seq2slate", "setrank", "gsf", "midnn"]


Loss = Literal["softmax_ce", "list_mle", "approx_ndcg"]


OWN_LOSS = {"seq2slate"}  # re-rankers with their own objective: list-loss candidates skip them


MOVIELENS_RANKER = "popularity_genre"  # ml-100k's fixed initial ranker (docs/datasets.md)


ESTIMATED_RANKS = (2, 3, 5, 10, 20, 30)  # 1-based ranks whose estimated examination is reported


CLICK_SPLITS = ("train", "valid")  # where clicks are simulated; test keeps the expert labels


TIE_NOISE = 0.01  # labels_random_ties: uniform noise below the gap between grades
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
    # The figures this suite expects: "<initial ranker>/<row>" -> metric -> [low, high],
    # reported beside the measured main-table values (as the demo's config states its own).
    expect: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_expect(self.expect)
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
