"""Experiment configuration: frozen dataclasses loaded from YAML/JSON.

Every reported experiment has one file in ``configs/``. Those files ship inside the package
(``src/prm/configs`` links to the checkout's ``configs/``; the wheel holds a copy), so a config
can be named without a path: ``load_config("tiny")``, ``prm demo --config demo``. Unknown keys
and wrong types are rejected by their dotted name, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration file or mapping that does not match the dataclasses below."""


# --- value checks, run when a config is created (``__post_init__``): a bad value fails at load,
# named by its key, before any work. ``from_dict`` prefixes the section (``train.``).


def _fail(key: str, what: str, value: Any) -> None:
    raise ConfigError(f"{key}: {what}, got {value!r}")


def _at_least(config: Any, low: int, *keys: str) -> None:
    for key in keys:
        value = getattr(config, key)
        if not value >= low:
            _fail(key, f"must be >= {low}", value)


def _finite(config: Any, *keys: str, low: float | None = None, positive: bool = False) -> None:
    """Finite floats; ``low``: at least it; ``positive``: above 0."""
    for key in keys:
        value = getattr(config, key)
        if not math.isfinite(value):
            _fail(key, "must be a finite number", value)
        if positive and not value > 0:
            _fail(key, "must be > 0", value)
        if low is not None and not value >= low:
            _fail(key, f"must be >= {low}", value)


def _fraction(config: Any, key: str) -> None:
    value = getattr(config, key)
    if not 0 <= value < 1:  # NaN too
        _fail(key, "must be in [0, 1)", value)


def check_device(name: str, key: str = "train.device") -> None:
    """A device that exists on this machine: "cpu", "cuda" or "cuda:N" with a GPU N, "mps"."""
    if name == "cpu":
        return
    import torch  # only for a device other than the CPU: `prm --help` stays quick

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        _fail(key, 'must be "cpu", "cuda", "cuda:N" or "mps"', name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            _fail(key, "no CUDA GPU on this machine (use cpu)", name)
        if device.index is not None and device.index >= count:
            _fail(key, f"this machine has {count} CUDA GPU(s), 0..{count - 1}", name)
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            _fail(key, "no MPS device on this machine (use cpu)", name)
    else:
        _fail(key, 'must be "cpu", "cuda", "cuda:N" or "mps"', name)


_METRIC = re.compile(r"^(ndcg|map|p)@(\d+)$")
SELECTION_METRICS = "loss, estimated_clicks, ndcg@k, map@k or p@k with k in evaluate.ks"


@dataclass(frozen=True)
class SimulatorConfig:
    """The embedded click simulator; equations in docs/simulator.md."""

    seed: int = 0
    n_users: int = 20_000
    n_items: int = 10_000
    n_topics: int = 20
    d_item_dense: int = 8  # dense item features besides the topic one-hot
    d_profile: int = 8  # observable user profile, a noisy view of the latent taste
    history_length: int = 20  # past clicks per user, drawn from the taste
    list_length: int = 30  # L: items shown per list
    candidate_pool: int = 100  # retrieved candidates the initial ranker cuts to L
    n_train_lists: int = 100_000
    n_valid_lists: int = 10_000
    n_test_lists: int = 10_000
    # Exploration bucket: lists shown in a uniformly random order of the initial top L, logged
    # apart (lists_explore) so position bias can be measured; 0 logs none.
    n_explore_lists: int = 5_000
    taste_scale: float = 1.5  # spread of the latent topic affinities
    profile_noise: float = 0.7  # how noisy the profile is as a view of the taste
    initial_personalization: float = 0.6  # weight of the history-based taste in the ranker
    initial_noise: float = 0.5  # noise of the initial ranker's score
    position_bias: float = 1.0  # eta in examination = 1 / k^eta (PBM-like decay)
    click_bias: float = -2.5  # intercept: about 2 clicks per 30-item list, ~10% lists unclicked
    relevance_weight: float = 1.0  # weight of the user's taste for the item's topic
    quality_weight: float = 0.6  # weight of the item's hidden quality
    saturation_mean: float = 0.6  # mean per-user penalty for each same-topic item above
    saturation_spread: float = 0.5  # log-normal spread of that penalty across users
    lift_weight: float = 0.5  # bonus when a complementary topic is shown above
    lift_pairs: int = 5  # number of complementary topic pairs
    # Lists per Parquet shard, written as lists_<split>/part-NNNNN.parquet; 0 writes one
    # lists_<split>.parquet per split. Either way lists are generated and written by chunks.
    shard_lists: int = 0

    def __post_init__(self) -> None:
        _at_least(self, 1, "n_users", "n_items", "n_topics", "d_profile", "history_length")
        _at_least(self, 1, "list_length", "n_train_lists", "n_valid_lists", "n_test_lists")
        _at_least(self, 0, "d_item_dense", "n_explore_lists", "lift_pairs", "shard_lists")
        _at_least(self, self.list_length, "candidate_pool")
        if self.candidate_pool > self.n_items:
            _fail("candidate_pool", f"must be <= n_items ({self.n_items})", self.candidate_pool)
        if self.lift_pairs and self.n_topics < 2:
            _fail("lift_pairs", "needs n_topics >= 2 (a pair of distinct topics)", self.lift_pairs)
        _finite(self, "click_bias", "relevance_weight", "quality_weight", "saturation_mean")
        _finite(self, "lift_weight", "initial_personalization")
        _finite(self, "taste_scale", "profile_noise", "initial_noise", low=0)
        _finite(self, "position_bias", "saturation_spread", low=0)


@dataclass(frozen=True)
class PretrainConfig:
    """The CTR model whose last hidden layer is the personalized vector (PV)."""

    model: Literal["fm", "deepfm", "dcn", "fnn"] = "deepfm"
    embedding_dim: int = 16
    hidden_dims: tuple[int, ...] = (64, 32)  # the last one is d_pv for the deep models
    cross_layers: int = 2  # DCN only
    position_bias_tower: bool = False  # PAL-style rank offset in training, dropped for PV
    # "learned": the tower is trained with the clicks; "exploration": it is fixed at the log
    # examination measured on the randomized exploration lists (prm.data.examination).
    position_bias: Literal["learned", "exploration"] = "learned"
    max_positions: int = 128  # size of that tower: the longest logged list
    # A user-item cross field: log share of the user's history clicks on the item's topic.
    topic_affinity: bool = False
    # Train with each click's logged list context (same-topic items above it, times a learned
    # per-user saturation that joins PV); see prm.pretrain.ctr.
    list_context: bool = False
    # Learn an embedding per item id. Off, items are seen through their features alone: the
    # model cannot memorize the training clicks of single items, which PV would carry into
    # the re-ranker's training lists but not into new ones (docs/simulator.md).
    item_ids: bool = True
    epochs: int = 2
    batch_size: int = 4096
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _at_least(self, 1, "embedding_dim", "max_positions", "epochs", "batch_size")
        _at_least(self, 0, "cross_layers", "seed")
        if self.model == "dcn":
            _at_least(self, 1, "cross_layers")
        if self.model != "fm" and not self.hidden_dims:
            _fail("hidden_dims", f"must hold at least one width for model {self.model}", [])
        for i, width in enumerate(self.hidden_dims):
            if not width >= 1:
                _fail(f"hidden_dims[{i}]", "must be >= 1", width)
        _finite(self, "lr", positive=True)
        _finite(self, "weight_decay", low=0)


@dataclass(frozen=True)
class PRMConfig:
    """PRM's encoder (paper Section 4): sizes of the input, encoding and output layers."""

    d_model: int = 64
    n_heads: int = 2
    n_blocks: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    use_pv: bool = True  # False gives PRM-BASE
    use_pe: bool = True  # learnable embedding of the initial rank
    position_bias_tower: bool = False  # PAL-style click-bias offset per rank, training only
    # "learned" or "exploration", as PretrainConfig.position_bias, or "evaluator": fixed at the
    # examination the evaluator learned (the context-aware click model, trained first)
    position_bias: Literal["learned", "exploration", "evaluator"] = "learned"
    max_positions: int = 128  # size of the PE table: the longest list served
    # > 0: the first topic_columns features are a one-hot topic; X then gets log(1 + items of
    # the list with the item's topic), a list-level feature (models/prm.py)
    topic_columns: int = 0

    def __post_init__(self) -> None:
        _at_least(self, 1, "d_model", "n_heads", "n_blocks", "d_ff", "max_positions")
        _at_least(self, 0, "topic_columns")
        if self.d_model % self.n_heads:
            _fail("n_heads", f"must divide d_model ({self.d_model})", self.n_heads)
        _fraction(self, "dropout")


@dataclass(frozen=True)
class EvaluatorConfig:
    """The evaluator-generator re-ranker (rankers/evaluator_generator.py): a context-aware
    click model trained on the logs, and the beam search that ranks under it."""

    d_hidden: int = 64  # width of the evaluator's item representation
    use_pv: bool = True
    beam_width: int = 1  # partial lists kept per step; 1 is greedy placement
    max_positions: int = 128  # ranks the examination term covers: the longest list served
    topic_columns: int = 0  # as PRMConfig.topic_columns: the list's topic count as an input
    # Hold the examination at the curve it starts from instead of learning it: for logs where
    # rank and appeal are more confounded than where the curve was measured (prm loop).
    hold_examination: bool = False

    def __post_init__(self) -> None:
        _at_least(self, 1, "d_hidden", "beam_width", "max_positions")
        _at_least(self, 0, "topic_columns")


@dataclass(frozen=True)
class EvaluatorTraining:
    """How the demo trains the evaluator (other keys come from ``train``)."""

    epochs: int = 8
    lr: float = 5e-3
    lr_schedule: Literal["constant", "linear"] = "linear"
    batch_size: int = 256
    # Add the randomized exploration lists to its training lists: there rank is independent
    # of appeal, which separates examination from relevance (docs/simulator.md).
    with_exploration: bool = True

    def __post_init__(self) -> None:
        _at_least(self, 1, "epochs", "batch_size")
        _finite(self, "lr", positive=True)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of a re-ranker on lists with at least one click."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    # "linear": the rate falls linearly to 0 over ``epochs``, so the last epochs settle
    # instead of swinging (PRM's ranking moved by several points from one epoch to the next).
    lr_schedule: Literal["constant", "linear"] = "constant"
    weight_decay: float = 0.0
    patience: int = 3  # epochs without validation improvement before stopping
    # On validation lists, never on test: a ranking metric against logged clicks (maximised),
    # "loss", the held-out click likelihood (minimised), or "estimated_clicks", the evaluator's
    # prediction of the clicks of the validation lists in the model's order (maximised).
    selection_metric: str = "ndcg@10"
    loss: Literal["softmax_ce", "list_mle", "approx_ndcg"] = "softmax_ce"  # training/losses.py
    seed: int = 0
    device: str = "cpu"  # "cuda" puts each process on its own GPU (LOCAL_RANK)
    # bf16: a bf16 copy of the model takes the step, Adam keeps fp32 weights (precision.py);
    # faster on GPUs and on CPUs with bf16 units (AVX-512 BF16, AMX)
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False  # torch.compile the training step (first steps pay the compile time)
    shuffle_buffer: int = 100_000  # lists held by the streaming loader (`prm train --stream`)

    def __post_init__(self) -> None:
        _at_least(self, 1, "epochs", "batch_size", "patience", "shuffle_buffer")
        _at_least(self, 0, "seed")
        _finite(self, "lr", positive=True)
        _finite(self, "weight_decay", low=0)
        name = self.selection_metric
        if name not in ("loss", "estimated_clicks") and not _METRIC.match(name):
            _fail("selection_metric", f"must be {SELECTION_METRICS}", name)
        check_device(self.device, "device")


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (5, 10, 30)
    map_convention: Literal["prm", "trec"] = "prm"

    def __post_init__(self) -> None:
        if not self.ks:
            _fail("ks", "must hold at least one cutoff", [])
        for i, k in enumerate(self.ks):
            if not k >= 1:
                _fail(f"ks[{i}]", "must be >= 1", k)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "demo"
    seeds: tuple[int, ...] = (0,)  # model seeds; the data seed is simulator.seed
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    model: PRMConfig = field(default_factory=PRMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    evaluator_training: EvaluatorTraining = field(default_factory=EvaluatorTraining)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    # kind -> config of another registered re-ranker (`prm train --model dlcm`); the kind's
    # defaults where absent, keys checked when its spec is made (prm.registry.ModelSpec)
    rerankers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The figures this config expects: row -> metric -> [low, high] (e.g. prm:
    # {oracle_gain_pct: [48, 54]}); the run reports each beside the measured value.
    expect: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_expect(self.expect)
        if not self.seeds:
            _fail("seeds", "must hold at least one seed", [])
        for i, seed in enumerate(self.seeds):
            if not seed >= 0:
                _fail(f"seeds[{i}]", "must be >= 0", seed)
        metric = _METRIC.match(self.train.selection_metric)
        if metric and int(metric.group(2)) not in self.evaluate.ks:
            _fail(
                "train.selection_metric",
                f"its k {metric.group(2)} is not in evaluate.ks {list(self.evaluate.ks)}",
                self.train.selection_metric,
            )

    def check_list_length(
        self, longest: int, source: str, sections: tuple[str, ...] = ("model", "evaluator")
    ) -> None:
        """The position tables of ``sections`` at least as long as the longest list of
        ``source`` (known once its lists are read)."""
        for section in sections:
            value = getattr(self, section).max_positions
            if value < longest:
                _fail(
                    f"{section}.max_positions",
                    f"must be >= the longest list of {source} ({longest} items)",
                    value,
                )


def check_expect(expect: dict[str, dict[str, Any]]) -> None:
    """``expect`` as a config states it: row -> metric -> [low, high], low <= high."""
    for row, metrics in expect.items():
        if not isinstance(metrics, dict):
            _fail(f"expect.{row}", "must map metrics to [low, high]", metrics)
        for metric, bounds in metrics.items():
            numbers = isinstance(bounds, list | tuple) and all(
                isinstance(b, int | float) and not isinstance(b, bool) for b in bounds
            )
            if not (numbers and len(bounds) == 2 and bounds[0] <= bounds[1]):
                _fail(f"expect.{row}.{metric}", "must be [low, high] with low <= high", bounds)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a type annotation, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, f"{where}.")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError("; ".join(errors))
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got bool")
    if not isinstance(value, annotation):
        raise ConfigError(
            f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by name."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        names = ", ".join(f"{where}{k}" for k in unknown)
        raise ConfigError(f"unknown config key(s): {names} (known: {', '.join(sorted(known))})")
    values = {k: _coerce(v, hints[k], f"{where}{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError as error:  # a value check of __post_init__: name the section too
        raise ConfigError(f"{where}{error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain mapping of a config, for JSON artifacts and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # the configs shipped with prm


def config_file(name: str | Path) -> Path:
    """``name`` when it is a file, else the shipped config it names without a folder
    (``demo`` or ``demo.yaml`` is ``CONFIG_DIR/demo.yaml``); an error listing them if neither."""
    path = Path(name)
    if path.is_file():
        return path
    if len(path.parts) == 1:
        shipped = CONFIG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
        if shipped.is_file():
            return shipped
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"{path}: config file not found (configs shipped with prm: {names})")


def load_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment config from a ``.yaml``/``.yml``/``.json`` file, or a shipped one by
    name (:func:`config_file`)."""
    path = config_file(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.')}: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
