"""ONNX export: parity with PyTorch on random and padded lists, the PV graph, the bundle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from prm.cli.main import main
from prm.config import PretrainConfig, PRMConfig
from prm.data.batch import ListBatch
from prm.data.loaders import load_list_data
from prm.data.tables import Catalog
from prm.evaluation.evaluate import score_lists
from prm.models.prm import PRM
from prm.pipeline import load_reranker
from prm.pretrain.ctr import build_ctr_model, load_ctr, save_ctr
from prm.pretrain.training import attach_pv
from prm.serving.bundle import MANIFEST, PV_ONNX
from prm.serving.export import PARITY_TOLERANCE, export_score_graph
from prm.serving.predictor import Predictor

D_FEATURE, D_PV = 6, 4
CONFIG = PRMConfig(d_model=16, n_heads=2, n_blocks=2, d_ff=32, max_positions=20)


def random_batch(lengths: list[int], length: int, d_pv: int, seed: int) -> ListBatch:
    """Random features and PV; padded slots hold garbage, which must not matter."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length) < torch.tensor(lengths)[:, None]  # (B, L)
    n = len(lengths)
    zeros = torch.zeros(n, length, dtype=torch.int64)
    return ListBatch(
        features=torch.randn(n, length, D_FEATURE, generator=g) * 3,
        pv=torch.randn(n, length, d_pv, generator=g),
        mask=mask,
        labels=torch.zeros(n, length),
        positions=torch.arange(length).expand(n, length) * mask,
        user_ids=zeros[:, 0],
        list_ids=zeros[:, 0],
        item_ids=zeros,
    )


@pytest.mark.parametrize(
    ("overrides", "d_pv"),
    [({}, D_PV), ({"use_pv": False, "use_pe": False, "n_heads": 4}, 0)],
    ids=["prm", "prm-base-without-pv-or-pe"],
)
def test_onnx_scores_match_pytorch_on_random_and_padded_lists(
    tmp_path: Path, overrides: dict, d_pv: int
) -> None:
    torch.manual_seed(0)
    model = PRM(dataclasses.replace(CONFIG, **overrides), D_FEATURE, d_pv).eval()
    path = tmp_path / "reranker.onnx"
    export_score_graph(model, path, D_FEATURE, d_pv, CONFIG.max_positions)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {node.name for node in session.get_inputs()}
    cases = [([1], 1), ([7, 3, 1], 7), ([20, 20], 20), ([5] * 9, 11)]  # dynamic B and L
    for seed, (lengths, length) in enumerate(cases):
        batch = random_batch(lengths, length, d_pv, seed)
        with torch.no_grad():
            want = model(batch).numpy()
        feeds = {
            "features": batch.features.numpy(),
            "pv": batch.pv.numpy(),
            "positions": batch.positions.numpy(),
            "mask": batch.mask.numpy(),
        }
        got = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        mask = batch.mask.numpy()
        assert got.shape == want.shape == mask.shape
        assert np.abs(got[mask] - want[mask]).max() <= PARITY_TOLERANCE
        assert np.isneginf(got[~mask]).all() and np.isneginf(want[~mask]).all()


@pytest.mark.parametrize("kind", ["fm", "deepfm", "dcn", "fnn"])
def test_pv_from_raw_inputs_equals_pv_by_id(kind: str) -> None:
    rng = np.random.default_rng(0)
    tables = Catalog(
        profile=rng.normal(size=(7, 3)).astype(np.float32),
        history=rng.integers(0, 11, (7, 5)),
        history_mask=rng.random((7, 5)) < 0.6,
        item_features=rng.normal(size=(11, 4)).astype(np.float32),
    )
    config = PretrainConfig(model=kind, embedding_dim=4, hidden_dims=(8, 6))
    model = build_ctr_model(config, tables).eval()
    users, items = torch.tensor([0, 3, 6, 3]), torch.tensor([10, 0, 4, 4])
    t = model.tables
    raw = model.hidden_raw(
        t.profile[users], t.history[users], t.history_mask[users], items, t.item_features[items]
    )
    torch.testing.assert_close(raw, model.hidden(users, items))


def test_pv_graph_of_the_bundle_matches_the_ctr_model(served, onnx_predictor) -> None:
    ctr = load_ctr(served.pretrain / "ctr_model.pt").eval()
    catalog = onnx_predictor.catalog
    users = np.array([0, 5, catalog.n_users - 1])
    items = np.array([[1, 2, 3, 4], [9, 8, 7, 6], [0, catalog.n_items - 1, 5, 5]])
    session = ort.InferenceSession(str(served.bundle / PV_ONNX))
    got = session.run(
        None,
        {
            "profile": catalog.profile[users],
            "history": catalog.history[users],
            "history_mask": catalog.history_mask[users],
            "item_ids": items,
            "item_features": catalog.item_features[items],
        },
    )[0]
    with torch.no_grad():
        want = ctr.hidden(
            torch.from_numpy(users).repeat_interleave(4), torch.from_numpy(items).flatten()
        )
    np.testing.assert_allclose(got.reshape(-1, ctr.d_pv), want.numpy(), atol=1e-5)


def test_served_scores_equal_the_training_pipeline_scores(
    served, onnx_predictor: Predictor, torch_predictor: Predictor
) -> None:
    """The bundle sees the same PV and features as training and evaluation did."""
    data = attach_pv(load_list_data(served.data, splits=("test",)), served.pretrain)
    test = data.splits["test"]
    want = score_lists(load_reranker(served.run), test)
    inputs = onnx_predictor.known_user_lists(test.user_ids, test.item_ids, test.mask)
    for predictor in (onnx_predictor, torch_predictor):
        got = predictor.score(inputs)
        assert np.abs(got[test.mask] - want[test.mask]).max() <= PARITY_TOLERANCE


def test_manifest_records_version_sizes_and_parity(served) -> None:
    manifest = json.loads((served.bundle / MANIFEST).read_text())
    assert manifest["version"] == "test-v1"
    assert manifest["reranker"]["max_list_length"] == 128
    assert manifest["reranker"]["uses_pv"] is True
    assert manifest["catalog"]["n_items"] == 400 and manifest["catalog"]["d_profile"] == 8
    assert manifest["onnx"]["parity_max_abs_diff"] <= PARITY_TOLERANCE


def test_export_errors_exit_2_and_write_nothing(served, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bundle"
    ctr = str(served.pretrain / "ctr_model.pt")
    assert main(["export", "--run", str(tmp_path / "nope"), "--ctr", ctr, "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err

    # A CTR model of another width than the one the re-ranker was trained with.
    tables = load_ctr(ctr).tables
    other = build_ctr_model(
        PretrainConfig(hidden_dims=(8, 3)),
        Catalog(
            tables.profile.numpy(),
            tables.history.numpy(),
            tables.history_mask.numpy(),
            tables.item_features.numpy(),
        ),
    )
    save_ctr(other, PretrainConfig(hidden_dims=(8, 3)), tmp_path / "other.pt")
    other_args = ["export", "--run", str(served.run), "--ctr", str(tmp_path / "other.pt")]
    assert main([*other_args, "--out", str(out)]) == 2
    assert "PV has" in capsys.readouterr().err

    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    assert (
        main(
            ["export", "--run", str(served.run), "--ctr", ctr, "--out", str(tmp_path / "precious")]
        )
        == 2
    )
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
    assert not out.exists()
