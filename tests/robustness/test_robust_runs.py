"""Bad artifacts and paths: checkpoints, PV caches, resumed runs with another config, bundles,
output paths, LETOR files and benchmark suites. Each refused with exit 2, the file or flag and
what is wrong, and nothing written."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from bad_input import Built, Case, copy_tree, edit_table, rewrite, write_config

# --- checkpoints: in evaluate, export and train --resume -------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _checkpoint(defect: str, path: Path) -> None:
    """Replace the run's checkpoint with a defective one."""
    good = path.read_bytes()
    if defect == "missing":
        path.unlink()
    elif defect == "empty":
        rewrite(path, b"")
    elif defect == "truncated":
        rewrite(path, good[: len(good) // 2])
    elif defect == "garbage":
        rewrite(path, b"this is not a checkpoint\n" * 20)
    elif defect == "crafted":
        rewrite(path, pickle.dumps({"model_spec": _RunsCode()}))
    else:
        state = torch.load(path, weights_only=True)
        path.unlink()
        if defect == "other_dict":
            state = {"epoch": 3}
        elif defect == "tensor":
            state = torch.zeros(3)
        elif defect == "unknown_kind":
            state["model_spec"]["kind"] = "transformer_xl"
        elif defect == "wrong_shapes":
            state["model_spec"]["config"]["d_model"] = 32
        elif defect == "no_weights":
            del state["weights"]
        torch.save(state, path)


CHECKPOINT_DEFECTS = [
    "missing",
    "empty",
    "truncated",
    "garbage",
    "crafted",
    "other_dict",
    "tensor",
    "unknown_kind",
    "wrong_shapes",
    "no_weights",
]


CHECKPOINT_CASES = [
    (command, defect)
    for command in ("evaluate", "export", "resume")
    for defect in CHECKPOINT_DEFECTS
    if (command, defect) != ("resume", "missing")  # starts the run, by design
]


@pytest.mark.parametrize(("command", "defect"), CHECKPOINT_CASES)
def test_bad_checkpoint(command: str, defect: str, built: Built, tmp_path: Path, refused) -> None:
    run = copy_tree(built.prm_run, tmp_path / "run")
    _checkpoint(defect, run / "checkpoint.pt")
    config = ["--config", str(built.config), "--quiet"]
    data = ["--data", str(built.data), "--pv", str(built.pv)]
    absent: tuple[Path, ...] = ()
    if command == "evaluate":
        argv = ["evaluate", *config, *data, "--run", str(run)]
    elif command == "export":
        out = tmp_path / "bundle"
        ctr = ["--ctr", str(built.pv / "ctr_model.pt")]
        argv, absent = ["export", "--run", str(run), *ctr, "--out", str(out)], (out,)
    else:
        argv = ["train", *config, *data, "--out", str(run), "--resume"]
    expect = ("checkpoint.pt", "not found" if defect == "missing" else "")
    refused(Case(tmp_path, argv, expect, (*absent, tmp_path / "pwned")))


# --- train --resume with another config ------------------------------------------------------

RESUME_CHANGES = [
    ("train.lr", 0.01),
    ("train.batch_size", 32),
    ("train.seed", 7),
    ("train.loss", "list_mle"),
    ("train.lr_schedule", "linear"),
    ("model.d_ff", 64),
    ("model.dropout", 0.3),
]


@pytest.mark.parametrize(("key", "value"), RESUME_CHANGES, ids=[k for k, _ in RESUME_CHANGES])
def test_resume_with_another_config_is_refused(
    key: str, value, built: Built, tmp_path: Path, refused
) -> None:
    run = copy_tree(built.base_run, tmp_path / "run")
    config = write_config(tmp_path, {key: value}, base=built.config)
    argv = ["train", "--config", str(config), "--data", str(built.data), "--base", "--quiet"]
    refused(Case(tmp_path, [*argv, "--out", str(run), "--resume"], ("--resume", key)))


# --- PV caches -------------------------------------------------------------------------------


def _pv(defect: str, path: Path) -> None:
    pv = np.load(path)
    path.unlink()
    if defect == "nan":
        pv[3, 0, 0] = np.nan
    elif defect == "inf":
        pv[3, 1, 2] = np.inf
    elif defect == "huge":
        pv[3, 0, 0] = 1e30
    elif defect == "fewer_lists":
        pv = pv[:-1]
    elif defect == "fewer_dims":
        pv = pv[..., :-1]
    elif defect == "flat":
        pv = pv[:, :, 0]
    elif defect == "float64":
        pv = pv.astype(np.float64)
        pv[0, 0, 0] = np.nan
    if defect == "garbage":
        path.write_bytes(b"\x93NUMPY garbage")
    elif defect == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(path, pv)


PV_DEFECTS = ["nan", "inf", "huge", "fewer_lists", "fewer_dims", "flat", "garbage", "pickled"]


@pytest.mark.parametrize("defect", PV_DEFECTS)  # a missing cache is computed: no defect
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_pv_cache(command: str, defect: str, built: Built, tmp_path: Path, refused) -> None:
    pv = copy_tree(built.pv, tmp_path / "pv")
    split = "train" if command == "train" else "test"
    _pv(defect, pv / f"pv_{split}.npy")
    common = ["--config", str(built.config), "--data", str(built.data), "--pv", str(pv)]
    if command == "train":
        out = tmp_path / "run"
        argv, absent = ["train", *common, "--quiet", "--out", str(out)], (out,)
    else:
        run = copy_tree(built.prm_run, tmp_path / "run")
        argv, absent = ["evaluate", *common, "--run", str(run)], (run / "eval_test.json",)
    refused(Case(tmp_path, argv, (f"pv_{split}.npy",), absent))


def test_evaluating_prm_without_pv_asks_for_it(built: Built, tmp_path: Path, refused) -> None:
    run = copy_tree(built.prm_run, tmp_path / "run")
    argv = ["evaluate", "--config", str(built.config), "--data", str(built.data)]
    refused(Case(tmp_path, [*argv, "--run", str(run)], ("--pv",), (run / "eval_test.json",)))


# --- lists that load but cannot train or be measured -----------------------------------------


def _unclicked(table: pa.Table) -> pa.Table:
    clicks = [[0] * len(c) for c in table.column("clicks").to_pylist()]
    index = table.schema.get_field_index("clicks")
    return table.set_column(index, "clicks", pa.array(clicks, table.column("clicks").type))


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_a_split_without_a_click(split: str, built: Built, tmp_path: Path, refused) -> None:
    data = copy_tree(built.data, tmp_path / "data")
    edit_table(data / f"lists_{split}.parquet", _unclicked)
    config = ["--config", str(built.config), "--data", str(data), "--quiet"]
    if split == "test":
        run = copy_tree(built.base_run, tmp_path / "run")
        argv, absent = ["evaluate", *config, "--run", str(run)], (run / "eval_test.json",)
    else:
        out = tmp_path / "out"
        argv, absent = ["train", *config, "--base", "--out", str(out)], (out,)
    refused(Case(tmp_path, argv, (f"lists_{split}.parquet", "click"), absent))


def test_features_that_make_the_loss_nan(built: Built, tmp_path: Path, refused) -> None:
    """Finite inputs, a learning rate that blows the weights up: training stops at the first
    non-finite loss instead of reporting a best metric."""
    config = write_config(tmp_path, {"train.lr": 1e30}, base=built.config)
    out = tmp_path / "out"
    argv = ["train", "--config", str(config), "--data", str(built.data), "--base", "--quiet"]
    refused(Case(tmp_path, [*argv, "--out", str(out)], ("loss", "epoch 1"), (out,)))


# --- output paths ----------------------------------------------------------------------------

OUT_IS_A_FILE = ["simulate", "pretrain", "train", "export", "demo", "loop", "benchmark"]


@pytest.mark.parametrize("command", OUT_IS_A_FILE)
def test_out_that_is_a_file(command: str, built: Built, tmp_path: Path, refused) -> None:
    out = tmp_path / "taken"
    out.write_text("a file the user keeps\n")
    config = ["--config", str(built.config), "--quiet"]
    data = ["--data", str(built.data)]
    argv = {
        "simulate": ["simulate", *config],
        "pretrain": ["pretrain", *config, *data],
        "train": ["train", *config, *data, "--base"],
        "export": ["export", "--run", str(built.prm_run), "--ctr", str(built.pv / "ctr_model.pt")],
        "demo": ["demo", *config],
        "loop": ["loop", *config],
        "benchmark": ["benchmark", "mq2008", "--quick", "--quiet"],
    }[command]
    refused(Case(tmp_path, [*argv, "--out", str(out)], ("--out", "taken", "not a folder")))


def test_evaluate_run_that_is_a_file(built: Built, tmp_path: Path, refused) -> None:
    run = tmp_path / "run"
    run.write_text("not a run\n")
    argv = ["evaluate", "--config", str(built.config), "--data", str(built.data), "--base"]
    argv = ["evaluate", "--config", str(built.config), "--data", str(built.data)]
    refused(Case(tmp_path, [*argv, "--run", str(run)], ("run", "not a folder")))


# --- model bundles and offline re-ranking ----------------------------------------------------

BUNDLE_DEFECTS = {
    "manifest_garbage": ("manifest.json", b"{not json"),
    "manifest_missing": ("manifest.json", None),
    "manifest_list": ("manifest.json", b"[1, 2]"),
    "onnx_garbage": ("reranker.onnx", b"not onnx"),
    "catalog_missing": ("catalog.npz", None),
    "catalog_garbage": ("catalog.npz", b"PK\x03\x04 nope"),
    "pv_graph_missing": ("pv.onnx", None),
}


@pytest.mark.parametrize("defect", sorted(BUNDLE_DEFECTS))
def test_bad_bundle_in_rerank(defect: str, built: Built, bundle: Path, tmp_path, refused) -> None:
    model = copy_tree(bundle, tmp_path / "bundle")
    name, content = BUNDLE_DEFECTS[defect]
    if content is None:
        (model / name).unlink()
    else:
        rewrite(model / name, content)
    out = tmp_path / "new" / "ranked.parquet"
    lists = str(built.data / "lists_test.parquet")
    argv = ["rerank", "--model", str(model), "--lists", lists, "--out", str(out), "--quiet"]
    # The bundle folder is named; naming the file needs prm.serving.bundle (outside this change).
    refused(Case(tmp_path, argv, (str(model),), (tmp_path / "new",)))


def _float_items(table: pa.Table) -> pa.Table:
    items = [[i + 0.5 for i in row] for row in table.column("item_ids").to_pylist()]
    index = table.schema.get_field_index("item_ids")
    return table.set_column(index, "item_ids", pa.array(items, pa.list_(pa.float64())))


def _duplicate(table: pa.Table) -> pa.Table:
    items = table.column("item_ids").to_pylist()
    items[3] = [items[3][1], *items[3][1:]]
    index = table.schema.get_field_index("item_ids")
    return table.set_column(index, "item_ids", pa.array(items, table.column("item_ids").type))


@pytest.mark.parametrize(
    ("defect", "expect"),
    [
        ("float_item_ids", ("item_ids",)),
        ("duplicate", ("row 3", "duplicate")),
        ("garbage", ("not a readable Parquet",)),
        ("missing", ("not found",)),
        ("out_is_a_folder", ("--out", "folder")),
        ("threads_0", ("--threads",)),
        ("chunk_size_0", ("--chunk-size",)),
    ],
)
def test_bad_rerank_input(defect, expect, built: Built, bundle: Path, tmp_path, refused) -> None:
    lists = tmp_path / "lists.parquet"
    os.link(built.data / "lists_test.parquet", lists)
    out = tmp_path / "new" / "ranked.parquet"
    extra: list[str] = []
    if defect == "float_item_ids":
        edit_table(lists, _float_items)
    elif defect == "duplicate":
        edit_table(lists, _duplicate)
    elif defect == "garbage":
        rewrite(lists, b"garbage")
    elif defect == "missing":
        lists.unlink()
    elif defect == "out_is_a_folder":
        out = tmp_path / "folder"
        out.mkdir()
    elif defect == "threads_0":
        extra = ["--threads", "0"]
    elif defect == "chunk_size_0":
        extra = ["--chunk-size", "0"]
    argv = ["rerank", "--model", str(bundle), "--lists", str(lists), "--out", str(out), *extra]
    refused(Case(tmp_path, [*argv, "--quiet"], expect, (tmp_path / "new",)))


@pytest.mark.parametrize("defect", ["ctr_missing", "ctr_garbage", "ctr_is_pv"])
def test_bad_ctr_in_export(defect: str, built: Built, tmp_path: Path, refused) -> None:
    ctr = tmp_path / "ctr_model.pt"
    if defect == "ctr_garbage":
        ctr.write_bytes(b"garbage")
    elif defect == "ctr_is_pv":
        os.link(built.pv / "pv_test.npy", ctr)
    out = tmp_path / "bundle"
    argv = ["export", "--run", str(built.prm_run), "--ctr", str(ctr), "--out", str(out)]
    refused(Case(tmp_path, argv, ("ctr_model.pt",), (out,)))


# --- LETOR files and benchmark suites --------------------------------------------------------

GOOD_LINES = [f"{i % 3} 1:0.{i} 2:1.5 3:{i}\n" for i in range(12)]
LETOR_DEFECTS = {
    "non_utf8": (b"1 1:0.5 2:\xff\xfe 3:1\n", ":2:", "UTF-8"),
    "feature_1e39": (b"1 1:1e39 2:0 3:1\n", ":2:", "1e39"),
    "label_1e300": (b"1e300 1:0.5 2:0 3:1\n", ":2:", "1e300"),
    "label_nan": (b"nan 1:0.5 2:0 3:1\n", ":2:", "label"),
    "feature_inf": (b"1 1:inf 2:0 3:1\n", ":2:", "inf"),
    "no_colon": (b"1 1:0.5 2 3:1\n", ":2:", "feature"),
    "decreasing": (b"1 3:0.5 2:0.1\n", ":2:", "non-increasing"),
}


@pytest.mark.parametrize("defect", sorted(LETOR_DEFECTS))
def test_bad_letor_file_in_benchmark(defect: str, tmp_path: Path, refused) -> None:
    bad_line, where, what = LETOR_DEFECTS[defect]
    folder = tmp_path / "data" / "lgbm_rank"
    folder.mkdir(parents=True)
    lines = [line.encode() for line in GOOD_LINES]
    (folder / "rank.train").write_bytes(lines[0] + bad_line + b"".join(lines[2:]))
    (folder / "rank.train.query").write_text("4\n4\n4\n")
    (folder / "rank.test").write_bytes(b"".join(lines[:6]))
    (folder / "rank.test.query").write_text("3\n3\n")
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["benchmark", "lgbm_rank", "--quick", "--quiet", "--data-dir", str(tmp_path / "data")]
    argv += ["--out", str(out), "--work", str(work)]
    refused(Case(tmp_path, argv, (f"rank.train{where}", what), (out, work)))


def test_benchmark_unknown_suite_and_bad_suite_file(tmp_path: Path, refused) -> None:
    out = tmp_path / "out"
    argv = ["benchmark", "--quick", "--quiet", "--out", str(out), "--work", str(tmp_path / "w")]
    refused(Case(tmp_path, ["benchmark", "mq2009", *argv[1:]], ("mq2009", "not found"), (out,)))
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({"name": "x", "dataset": "mq2008", "trian": {}}))
    refused(Case(tmp_path, ["benchmark", str(suite), *argv[1:]], ("trian",), (out,)))
    missing = ["--data-dir", str(tmp_path / "nowhere")]
    refused(Case(tmp_path, ["benchmark", "lgbm_rank", *argv[1:], *missing], ("nowhere",), (out,)))
