"""Every registered re-ranker exports to ONNX with the scores of PyTorch, or `prm export`
refuses it up front by name; a bundle of a baseline (DLCM) serves through both backends."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from prm.cli.main import main
from prm.config import ExperimentConfig
from prm.data.batch import ListInputs
from prm.data.loaders import load_list_data
from prm.pipeline import train_reranker
from prm.pretrain.training import CTR_MODEL, attach_pv
from prm.registry import RERANKERS, ModelSpec
from prm.serving.export import NOT_EXPORTABLE, PARITY_TOLERANCE, export_score_graph
from prm.serving.predictor import load_predictor

D_FEATURE, D_PV, MAX_LENGTH = 4, 3, 16
# Tiny versions of every registered kind (as in tests/rankers/test_baselines.py).
TINY = {
    "prm": {"d_model": 16, "n_heads": 2, "n_blocks": 1, "d_ff": 32, "max_positions": MAX_LENGTH},
    "dlcm": {"d_hidden": 16, "d_local": 4},
    "seq2slate": {"d_hidden": 16},
    "setrank": {"d_model": 16, "n_heads": 2, "n_blocks": 1, "d_ff": 32},
    "gsf": {"hidden": [32, 16], "group_size": 3},
    "midnn": {"hidden": [32, 16]},
    "generator_evaluator": {"d_hidden": 16, "beam_width": 2, "max_positions": MAX_LENGTH},
}
# (list lengths, padded length): batch sizes 1 and more, lengths up to the maximum.
CASES = [([1], 1), ([5], 9), ([7, 3, 1], 7), ([16, 16], 16), ([4, 0, 2, 9, 11], 12), ([30], 16)]


def ragged_inputs(lengths: list[int], length: int, seed: int) -> ListInputs:
    """Real items at random slots, shuffled initial positions, garbage at padded slots."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.stack([torch.randperm(length, generator=g) < n for n in lengths])  # (B, L)
    positions = torch.stack([torch.randperm(length, generator=g) for _ in lengths])  # (B, L)
    n = len(lengths)
    features = torch.randn(n, length, D_FEATURE, generator=g) * 3
    return ListInputs(features, torch.randn(n, length, D_PV, generator=g), positions, mask)


def test_every_kind_has_a_tiny_config() -> None:
    assert set(TINY) == set(RERANKERS)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_config: ExperimentConfig, tiny_data_dir: Path
) -> tuple[Path, Path]:
    """The tiny dataset's CTR model, and the folder that run folders of any kind go in."""
    from prm.pretrain.training import pretrain

    root = tmp_path_factory.mktemp("registry_export")
    pretrain(tiny_config, load_list_data(tiny_data_dir), root / "pretrain", progress=False)
    return root / "pretrain", root


def train_run(kind: str, trained: tuple[Path, Path], config: ExperimentConfig, data: Path) -> Path:
    pretrained, root = trained
    run = root / f"run_{kind}"
    if not run.exists():
        one_epoch = replace(config, train=replace(config.train, epochs=1))
        lists = attach_pv(load_list_data(data), pretrained)
        train_reranker(one_epoch, lists, run, kind=kind, model_config=TINY[kind], progress=False)
    return run


@pytest.mark.parametrize("kind", sorted(RERANKERS))
def test_every_kind_exports_with_eager_scores_or_is_refused_by_name(
    kind: str,
    tmp_path: Path,
    trained: tuple[Path, Path],
    tiny_config: ExperimentConfig,
    tiny_data_dir: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    if kind in NOT_EXPORTABLE:
        assert_refused(kind, tmp_path, trained, tiny_config, tiny_data_dir, capsys)
        return

    torch.manual_seed(0)
    model = ModelSpec(kind, TINY[kind], D_FEATURE, D_PV).build().eval()
    path = tmp_path / "reranker.onnx"
    export_score_graph(model, path, D_FEATURE, D_PV, MAX_LENGTH)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {node.name for node in session.get_inputs()}
    for seed, (lengths, length) in enumerate(CASES):
        inputs = ragged_inputs([min(n, length) for n in lengths], length, seed)
        with torch.no_grad():
            want = model(inputs).numpy()
        feeds = {
            "features": inputs.features.numpy(),
            "pv": inputs.pv.numpy(),
            "positions": inputs.positions.numpy(),
            "mask": inputs.mask.numpy(),
        }
        got = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        mask = feeds["mask"]
        assert got.shape == want.shape == mask.shape
        assert np.isneginf(got[~mask]).all() and np.isneginf(want[~mask]).all()
        if mask.any():
            assert np.abs(got[mask] - want[mask]).max() <= PARITY_TOLERANCE
        for row in range(len(mask)):  # the same ranking of the real items
            real = mask[row]
            assert np.array_equal(
                np.argsort(-got[row][real], kind="stable"),
                np.argsort(-want[row][real], kind="stable"),
            ), (kind, lengths, row)


def test_a_kind_marked_not_exportable_is_refused_by_name_before_anything_is_written(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    trained: tuple[Path, Path],
    tiny_config: ExperimentConfig,
    tiny_data_dir: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setitem(NOT_EXPORTABLE, "dlcm", "a reason")
    err = assert_refused("dlcm", tmp_path, trained, tiny_config, tiny_data_dir, capsys)
    assert "a reason" in err


def assert_refused(kind, tmp_path, trained, tiny_config, tiny_data_dir, capsys) -> str:
    """`prm export` of a ``kind`` run exits 2 naming the kind, writing nothing; its stderr."""
    run = train_run(kind, trained, tiny_config, tiny_data_dir)
    out = tmp_path / "bundle"
    ctr = str(trained[0] / CTR_MODEL)
    assert main(["export", "--run", str(run), "--ctr", ctr, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert kind in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written
    return err


def test_a_baseline_bundle_serves_through_both_backends(
    tmp_path: Path,
    trained: tuple[Path, Path],
    tiny_config: ExperimentConfig,
    tiny_data_dir: Path,
) -> None:
    run = train_run("dlcm", trained, tiny_config, tiny_data_dir)
    bundle = tmp_path / "dlcm-bundle"
    ctr = str(trained[0] / CTR_MODEL)
    assert main(["export", "--run", str(run), "--ctr", ctr, "--out", str(bundle)]) == 0
    onnx_predictor = load_predictor(bundle, "onnx")
    torch_predictor = load_predictor(bundle, "torch")
    assert onnx_predictor.manifest["reranker"]["kind"] == "dlcm"
    rng = np.random.default_rng(0)
    catalog = onnx_predictor.catalog
    mask = np.arange(10) < np.array([[10], [6], [1]])  # (3, 10)
    item_ids = np.stack([rng.permutation(catalog.n_items)[:10] for _ in mask])
    inputs = onnx_predictor.known_user_lists(rng.integers(catalog.n_users, size=3), item_ids, mask)
    got, want = onnx_predictor.score(inputs), torch_predictor.score(inputs)
    assert np.isneginf(got[~mask]).all() and np.isfinite(got[mask]).all()
    assert np.abs(got[mask] - want[mask]).max() <= PARITY_TOLERANCE
