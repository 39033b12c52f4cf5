"""Bad configs: every one refused at load, by its key, before any work, by the command that
reads that section."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bad_input import Built, Case, write_config

NAN, INF = math.nan, math.inf

# (dotted key, bad value, what the message says); the key itself is always expected.
BAD_VALUES = [
    ("train.batch_size", 0, "must be >= 1"),
    ("train.batch_size", -5, "must be >= 1, got -5"),
    ("train.lr", 0.0, "must be > 0"),
    ("train.lr", -0.001, "must be > 0"),
    ("train.lr", NAN, "finite"),
    ("train.lr", INF, "finite"),
    ("train.epochs", 0, "must be >= 1"),
    ("train.epochs", -3, "must be >= 1"),
    ("train.patience", 0, "must be >= 1"),
    ("train.weight_decay", -0.1, "must be >= 0"),
    ("train.weight_decay", NAN, "finite"),
    ("train.seed", -1, "must be >= 0"),
    ("train.shuffle_buffer", 0, "must be >= 1"),
    ("train.selection_metric", "ndgc@10", "must be loss, estimated_clicks"),
    ("train.selection_metric", "accuracy", "must be loss, estimated_clicks"),
    ("train.selection_metric", "ndcg@11", "not in evaluate.ks"),
    ("train.selection_metric", "map@7", "not in evaluate.ks"),
    ("train.device", "cuda", "no CUDA GPU"),
    ("train.device", "cuda:3", "no CUDA GPU"),
    ("train.device", "tpu", "must be"),
    ("train.device", "gpu0", "must be"),
    ("train.loss", "hinge", "expected one of"),
    ("train.precision", "fp16", "expected one of"),
    ("train.lr_schedule", "cosine", "expected one of"),
    ("model.d_model", 0, "must be >= 1"),
    ("model.d_model", -16, "must be >= 1"),
    ("model.n_heads", 3, "must divide d_model (16)"),
    ("model.n_heads", 0, "must be >= 1"),
    ("model.n_blocks", 0, "must be >= 1"),
    ("model.d_ff", 0, "must be >= 1"),
    ("model.dropout", 2.0, "must be in [0, 1)"),
    ("model.dropout", 1.0, "must be in [0, 1)"),
    ("model.dropout", -0.1, "must be in [0, 1)"),
    ("model.dropout", NAN, "must be in [0, 1)"),
    ("model.max_positions", 0, "must be >= 1"),
    ("model.max_positions", 5, "longest list"),
    ("model.topic_columns", -1, "must be >= 0"),
    ("model.position_bias", "fixed", "expected one of"),
    ("evaluate.ks", [], "at least one"),
    ("evaluate.ks", [0], "must be >= 1"),
    ("evaluate.ks", [5, -10], "must be >= 1"),
    ("evaluate.map_convention", "ir", "expected one of"),
    ("seeds", [], "at least one"),
    ("seeds", [-1], "must be >= 0"),
    ("pretrain.epochs", 0, "must be >= 1"),
    ("pretrain.batch_size", 0, "must be >= 1"),
    ("pretrain.lr", -1.0, "must be > 0"),
    ("pretrain.lr", NAN, "finite"),
    ("pretrain.hidden_dims", [], "at least one width"),
    ("pretrain.hidden_dims", [16, 0], "must be >= 1"),
    ("pretrain.embedding_dim", 0, "must be >= 1"),
    ("pretrain.max_positions", 3, "longest list"),
    ("pretrain.weight_decay", -1.0, "must be >= 0"),
    ("pretrain.model", "xgboost", "expected one of"),
    ("evaluator.d_hidden", 0, "must be >= 1"),
    ("evaluator.beam_width", 0, "must be >= 1"),
    ("evaluator.max_positions", 4, "longest list"),
    ("evaluator_training.epochs", 0, "must be >= 1"),
    ("evaluator_training.batch_size", -1, "must be >= 1"),
    ("evaluator_training.lr", 0.0, "must be > 0"),
    ("simulator.n_users", 0, "must be >= 1"),
    ("simulator.n_items", -5, "must be >= 1"),
    ("simulator.list_length", 0, "must be >= 1"),
    ("simulator.candidate_pool", 5, "must be >= 10"),
    ("simulator.candidate_pool", 1000, "must be <= n_items"),
    ("simulator.n_topics", 0, "must be >= 1"),
    ("simulator.n_train_lists", 0, "must be >= 1"),
    ("simulator.n_explore_lists", -1, "must be >= 0"),
    ("simulator.shard_lists", -2, "must be >= 0"),
    ("simulator.position_bias", NAN, "finite"),
    ("simulator.profile_noise", -1.0, "must be >= 0"),
    ("simulator.click_bias", INF, "finite"),
    ("train.batch_size", "64", "expected int"),
    ("train.epochs", 2.5, "expected int"),
    ("model.use_pv", "yes", "expected bool"),
]


def command(key: str, config: Path, built: Built, out: Path) -> list[str]:
    """The command that reads ``key``'s section first."""
    section = key.split(".")[0]
    if section == "simulator":
        return ["simulate", "--config", str(config), "--out", str(out), "--quiet"]
    common = ["--config", str(config), "--data", str(built.data), "--out", str(out), "--quiet"]
    if section == "pretrain":
        return ["pretrain", *common]
    if section.startswith("evaluator"):
        return ["train", *common, "--model", "generator_evaluator", "--pv", str(built.pv)]
    return ["train", *common, "--base"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    BAD_VALUES,
    ids=[f"{key}={value}" for key, value, _ in BAD_VALUES],
)
def test_bad_value_is_refused_by_key(
    key: str, value, message: str, built: Built, tmp_path: Path, refused
) -> None:
    config = write_config(tmp_path, {key: value})
    out = tmp_path / "out"
    refused(Case(tmp_path, command(key, config, built, out), (key, message), (out,)))


BAD_FILES = [
    ("unknown_key", "train:\n  learning_rate: 0.1\n", ("train.learning_rate", "unknown")),
    ("unknown_section", "trainer:\n  lr: 0.1\n", ("trainer", "unknown")),
    ("not_a_mapping", "- 1\n- 2\n", ("top level must be a mapping",)),
    ("section_not_mapping", "train: 5\n", ("train: expected a mapping",)),
    ("bad_yaml", "train: [1, 2\n", ("not valid yaml",)),
    ("tab_indent", "train:\n\tlr: 0.1\n", ("not valid yaml",)),
    ("null_value", "train:\n  lr: null\n", ("train.lr", "expected float")),
    ("list_of_str", "evaluate:\n  ks: [5, ten]\n", ("evaluate.ks[1]", "expected int")),
]


@pytest.mark.parametrize(("name", "text", "expect"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_config_file(
    name: str, text: str, expect: tuple[str, ...], built: Built, tmp_path: Path, refused
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    argv = ["train", "--config", str(config), "--data", str(built.data), "--base"]
    refused(Case(tmp_path, [*argv, "--out", str(out)], ("bad.yaml", *expect), (out,)))


def test_missing_and_bad_json_config(built: Built, tmp_path: Path, refused) -> None:
    out = tmp_path / "out"
    argv = ["train", "--data", str(built.data), "--base", "--out", str(out)]
    missing = tmp_path / "none.yaml"
    refused(Case(tmp_path, [*argv, "--config", str(missing)], ("none.yaml", "not found"), (out,)))
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {"lr": 0.1,}}')
    refused(Case(tmp_path, [*argv, "--config", str(bad)], ("bad.json", "not valid json"), (out,)))


@pytest.mark.parametrize(
    ("flag", "value", "expect"),
    [
        ("--device", "cuda", ("train.device", "no CUDA GPU")),
        ("--device", "npu", ("train.device", "must be")),
        ("--nproc", "0", ("--nproc", ">= 1")),
    ],
)
def test_bad_train_flag(flag, value, expect, built: Built, tmp_path: Path, refused) -> None:
    out = tmp_path / "out"
    argv = ["train", "--config", str(built.config), "--data", str(built.data), "--base"]
    refused(Case(tmp_path, [*argv, flag, value, "--out", str(out)], expect, (out,)))
