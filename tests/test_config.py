from __future__ import annotations

from pathlib import Path

import pytest

from prm.config import (
    CONFIG_DIR,
    ConfigError,
    ExperimentConfig,
    config_file,
    from_dict,
    load_config,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs").glob("[!b]*.yaml")), ids=lambda p: p.name
)  # bench_*.yaml are BenchmarkConfig files, loaded in tests/evaluation/test_benchmark.py
def test_every_committed_config_loads(path: Path) -> None:
    assert isinstance(load_config(path), ExperimentConfig)


def test_shipped_configs_are_the_committed_ones_and_load_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert CONFIG_DIR.resolve() == (ROOT / "configs").resolve()  # one copy: the link
    monkeypatch.chdir(tmp_path)  # names work from any folder
    assert (
        load_config("tiny") == load_config("tiny.yaml") == load_config(ROOT / "configs/tiny.yaml")
    )
    (tmp_path / "tiny.yaml").write_text("name: mine\n")  # a file of that name comes first
    assert load_config("tiny.yaml").name == "mine"
    with pytest.raises(ConfigError, match="nope: config file not found.*shipped.*demo, "):
        config_file("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        config_file("elsewhere/tiny.yaml")  # a path is never replaced by a shipped file


def test_values_are_typed_and_nested() -> None:
    config = from_dict(
        ExperimentConfig, {"seeds": [1, 2], "train": {"lr": 1}, "evaluate": {"ks": [3, 10]}}
    )
    assert config.seeds == (1, 2)
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.evaluate.ks == (3, 10)  # 10: train.selection_metric is ndcg@10


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"trian": {}}, "unknown config key.*trian"),
        ({"train": {"learning_rate": 0.1}}, r"unknown config key.*train\.learning_rate"),
        ({"train": {"lr": "fast"}}, r"train\.lr: expected float, got str"),
        ({"train": {"epochs": 2.5}}, r"train\.epochs: expected int"),
        ({"model": {"use_pv": 1}}, r"model\.use_pv: expected bool"),
        ({"pretrain": {"model": "xgboost"}}, r"pretrain\.model: expected one of"),
        ({"evaluate": {"ks": [5, "ten"]}}, r"evaluate\.ks\[1\]: expected int"),
        ({"simulator": 3}, r"simulator: expected a mapping"),
    ],
)
def test_bad_config_is_rejected_by_name(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(ExperimentConfig, data)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid yaml"):
        load_config(bad)
    bad.write_text("train:\n  lr: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train\.lr"):
        load_config(bad)
