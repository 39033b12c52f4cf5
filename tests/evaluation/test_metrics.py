from functools import partial

import numpy as np
import pytest
import pytrec_eval

from prm.evaluation.metrics import (
    lists_with_click,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    rank_order,
    ranking_metrics,
    summarize,
)
from prm.evaluation.significance import format_mean_std, mean_std, paired_test

METRICS = {
    "p": precision_at_k,
    "map_prm": partial(map_at_k, convention="prm"),
    "map_trec": partial(map_at_k, convention="trec"),
    "ndcg": ndcg_at_k,
}
TREC_MEASURE = {"p": "P", "map_trec": "map_cut", "ndcg": "ndcg_cut"}


def random_lists(rng, n=200, max_len=40, graded=False):
    """Padded lists of lengths 1..max_len with distinct scores; padding holds decoys."""
    lengths = rng.integers(1, max_len + 1, size=n)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    scores = rng.standard_normal((n, max_len))
    high = 5 if graded else 2
    labels = rng.integers(0, high, size=(n, max_len)) * (rng.random((n, max_len)) < 0.3)
    labels[rng.random(n) < 0.2] = 0  # lists without any relevant item
    # decoys at padded slots: they would win every rank and every label if they counted
    scores[~mask] = 1e9
    labels[~mask] = high - 1
    positions = np.tile(np.arange(max_len), (n, 1))
    return scores, labels.astype(np.float64), mask, positions


def trec_eval(scores, labels, mask, measures):
    qrels, run = {}, {}
    for i in range(len(scores)):
        real = np.flatnonzero(mask[i])
        assert len(np.unique(scores[i, real])) == len(real)  # trec_eval breaks ties by doc id
        qrels[f"q{i}"] = {f"d{j}": int(labels[i, j]) for j in real}
        run[f"q{i}"] = {f"d{j}": float(scores[i, j]) for j in real}
    result = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    return {m: np.array([result[f"q{i}"][m] for i in range(len(scores))]) for m in measures}


@pytest.mark.parametrize("graded", [False, True], ids=["binary", "graded"])
def test_matches_trec_eval(graded):
    rng = np.random.default_rng(7 + graded)
    scores, labels, mask, positions = random_lists(rng, graded=graded)
    ks = (1, 5, 10)
    measures = {f"{TREC_MEASURE[name]}_{k}" for name in TREC_MEASURE for k in ks}
    expected = trec_eval(scores, labels, mask, measures)
    no_relevant = ~lists_with_click(labels, mask)
    assert no_relevant.sum() >= 20
    for name, trec_name in TREC_MEASURE.items():
        for k in ks:
            ours = METRICS[name](scores, labels, mask=mask, k=k, positions=positions)
            want = expected[f"{trec_name}_{k}"]
            np.testing.assert_allclose(ours, want, rtol=0, atol=1e-12, err_msg=f"{name}@{k}")
            # trec_eval scores a list without relevant items 0 on every measure; so do we
            assert np.all(ours[no_relevant] == 0.0)
            assert np.all(want[no_relevant] == 0.0)


def test_full_query_ndcg_is_trec_eval_of_the_cut_list_over_the_query_judgments():
    """A list cut from a longer query, with ``ideal_labels`` the whole query's: NDCG@k is
    trec_eval's ndcg_cut_k of the list as a run against every judgment of the query."""
    rng = np.random.default_rng(3)
    scores, labels, mask, positions = random_lists(rng, max_len=30, graded=True)
    cut = 12
    lists = (scores[:, :cut], labels[:, :cut], mask[:, :cut], positions[:, :cut])
    query_labels = np.where(mask, labels, 0)
    full = ranking_metrics(
        *lists[:2], mask=lists[2], positions=lists[3], ks=(5, 10), ideal_labels=query_labels
    )
    qrels = {
        f"q{i}": {f"d{j}": int(labels[i, j]) for j in np.flatnonzero(mask[i])}
        for i in range(len(scores))
    }
    run = {
        f"q{i}": {f"d{j}": float(scores[i, j]) for j in np.flatnonzero(mask[i, :cut])}
        for i in range(len(scores))
    }
    result = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_5", "ndcg_cut_10"}).evaluate(run)
    for k in (5, 10):
        want = np.array([result[f"q{i}"][f"ndcg_cut_{k}"] for i in range(len(scores))])
        np.testing.assert_allclose(full[f"ndcg@{k}"], want, rtol=0, atol=1e-12)
    own = ranking_metrics(*lists[:2], mask=lists[2], positions=lists[3], ks=(10,))
    assert (full["ndcg@10"] <= own["ndcg@10"] + 1e-12).all()
    assert (full["ndcg@10"] < own["ndcg@10"]).any()  # relevant documents below the cut


def test_map_prm_convention_by_hand():
    # ranked labels: 0 1 0 1 1 0 1 (one list), stored shuffled so the sort matters
    ranked_labels = np.array([0, 1, 0, 1, 1, 0, 1], dtype=float)
    perm = np.array([3, 6, 0, 5, 1, 4, 2])
    scores = -np.arange(7, dtype=float)[perm][None]  # rank r gets score -r
    labels = ranked_labels[perm][None]
    mask = np.ones_like(labels, dtype=bool)

    def ap(k, convention):
        return map_at_k(scores, labels, mask=mask, k=k, convention=convention)[0]

    # clicks at ranks 2, 4, 5, 7; precision there: 1/2, 2/4, 3/5, 4/7
    assert ap(1, "prm") == 0.0  # no click in the top 1: 0, not NaN
    assert ap(3, "prm") == pytest.approx(0.5)  # one click in top 3: (1/2) / 1
    assert ap(5, "prm") == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert ap(3, "trec") == pytest.approx(0.5 / 4)  # divided by all 4 relevant items
    assert ap(5, "trec") == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 4)
    assert ap(7, "prm") == pytest.approx(ap(7, "trec"))  # every click inside the cutoff


def test_map_conventions_agree_when_all_clicks_in_top_k():
    rng = np.random.default_rng(3)
    scores, labels, mask, positions = random_lists(rng, max_len=8)
    prm = map_at_k(scores, labels, mask=mask, k=10, positions=positions, convention="prm")
    trec = map_at_k(scores, labels, mask=mask, k=10, positions=positions, convention="trec")
    np.testing.assert_allclose(prm, trec, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="convention"):
        map_at_k(scores, labels, mask=mask, k=5, convention="mean")


def test_rank_order_sorts_by_score_then_initial_position_padding_last():
    scores = np.array([[0.5, 0.9, 0.5, 7.0, 0.5]])
    mask = np.array([[True, True, True, False, True]])
    positions = np.array([[2, 0, 1, 3, 4]])
    # 0.9 first; the three 0.5 ties by initial position 1, 2, 4; the padded slot last
    np.testing.assert_array_equal(rank_order(scores, mask, positions), [[1, 2, 0, 4, 3]])
    np.testing.assert_array_equal(rank_order(scores, mask), [[1, 0, 2, 4, 3]])


# ---- edge cases, run over every metric at once ----------------------------------------------

EDGE = pytest.mark.parametrize("name", list(METRICS))
KS = pytest.mark.parametrize("k", [1, 3, 10])


@pytest.mark.filterwarnings("error")
@EDGE
@KS
def test_all_masked_list_scores_zero(name, k):
    scores = np.array([[1e9, -3.0, np.nan], [0.2, 0.1, 0.0]])
    labels = np.array([[4.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    mask = np.array([[False, False, False], [True, True, False]])
    out = METRICS[name](scores, labels, mask=mask, k=k)
    assert out.dtype == np.float64 and out.shape == (2,)
    assert out[0] == 0.0
    assert out[1] > 0.0


@EDGE
@KS
@pytest.mark.parametrize("label", [0.0, 1.0, 3.0])
def test_single_item(name, k, label):
    out = METRICS[name](np.array([[0.3]]), np.array([[label]]), mask=np.array([[True]]), k=k)
    hit = 1.0 / k if name == "p" else 1.0  # P@k divides by k even for a one-item list
    expected = hit if label > 0 else 0.0
    assert out[0] == pytest.approx(expected)


@EDGE
@KS
def test_padding_invariance(name, k):
    rng = np.random.default_rng(11)
    scores, labels, mask, positions = random_lists(rng, n=50, max_len=12, graded=True)
    base = METRICS[name](scores, labels, mask=mask, k=k, positions=positions)
    extra = 6
    padded = METRICS[name](
        np.pad(scores, ((0, 0), (0, extra)), constant_values=1e12),
        np.pad(labels, ((0, 0), (0, extra)), constant_values=4.0),
        mask=np.pad(mask, ((0, 0), (0, extra)), constant_values=False),
        k=k,
        positions=np.pad(positions, ((0, 0), (0, extra)), constant_values=-1),
    )
    np.testing.assert_array_equal(padded, base)
    # where a list's items sit among its slots does not matter either, only their positions
    perm = rng.permutation(scores.shape[1])
    shuffled = METRICS[name](
        scores[:, perm], labels[:, perm], mask=mask[:, perm], k=k, positions=positions[:, perm]
    )
    np.testing.assert_allclose(shuffled, base, rtol=0, atol=1e-12)


@EDGE
@KS
def test_ties_broken_by_initial_position(name, k):
    rng = np.random.default_rng(5)
    n, length = 30, 8
    positions = np.array([rng.permutation(length) for _ in range(n)])
    labels = rng.integers(0, 3, size=(n, length)).astype(float)
    mask = np.ones((n, length), dtype=bool)
    tied = METRICS[name](np.zeros((n, length)), labels, mask=mask, k=k, positions=positions)
    initial = METRICS[name](-positions.astype(float), labels, mask=mask, k=k, positions=positions)
    np.testing.assert_array_equal(tied, initial)


@EDGE
def test_k_must_be_positive(name):
    with pytest.raises(ValueError, match="k must be"):
        METRICS[name](np.zeros((1, 2)), np.ones((1, 2)), mask=np.ones((1, 2), bool), k=0)


# ---- the bundle and its averaging ------------------------------------------------------------


def test_ranking_metrics_matches_single_metrics_and_summarize():
    rng = np.random.default_rng(2)
    scores, labels, mask, positions = random_lists(rng, n=60, max_len=35)
    per_list = ranking_metrics(scores, labels, mask=mask, positions=positions, ks=(5, 30))
    assert set(per_list) == {"p@5", "map@5", "ndcg@5", "p@30", "map@30", "ndcg@30"}
    args = dict(mask=mask, positions=positions)
    np.testing.assert_array_equal(per_list["p@5"], precision_at_k(scores, labels, k=5, **args))
    np.testing.assert_array_equal(per_list["map@30"], map_at_k(scores, labels, k=30, **args))
    np.testing.assert_array_equal(per_list["ndcg@5"], ndcg_at_k(scores, labels, k=5, **args))

    clicked = lists_with_click(labels, mask)
    np.testing.assert_array_equal(clicked, ((labels > 0) & mask).any(axis=1))
    summary = summarize(per_list, clicked)
    assert summary["ndcg@5"] == pytest.approx(per_list["ndcg@5"][clicked].mean())
    assert summarize(per_list, np.zeros(len(scores), bool)) == dict.fromkeys(per_list, 0.0)


# ---- significance ----------------------------------------------------------------------------


def test_paired_test_detects_a_clear_shift():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = a - 0.05 + 0.02 * rng.standard_normal(200)
    result = paired_test(a, b)
    assert result["n"] == 200
    assert result["mean_diff"] == pytest.approx(np.mean(a - b))
    assert result["t_pvalue"] < 0.01
    assert result["wilcoxon_pvalue"] < 0.01


@pytest.mark.filterwarnings("error")
def test_paired_test_identical_arrays_give_p_one():
    a = np.random.default_rng(1).random(50)
    result = paired_test(a, a.copy())
    assert result["t_pvalue"] == 1.0
    assert result["wilcoxon_pvalue"] == 1.0
    assert result["mean_diff"] == 0.0


def test_mean_std():
    assert mean_std(np.array([1.0, 2.0, 3.0])) == (2.0, 1.0)
    assert mean_std(np.array([0.5])) == (0.5, 0.0)
    assert format_mean_std(np.array([1.0, 2.0, 3.0])) == "2.0000 ± 1.0000"
    assert format_mean_std(np.array([0.41234]), digits=2) == "0.41 ± 0.00"
