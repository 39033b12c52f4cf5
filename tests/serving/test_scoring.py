"""Scoring off the event loop: the lists of concurrent requests are scored in batches, and each
request gets what scoring its list alone gives."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from prm.serving.app import ScoringThread
from prm.serving.predictor import CandidateLists, Predictor


class Recording:
    """A predictor that records each batch it scores; the first call waits for ``gate``, so
    the lists sent meanwhile queue up as concurrent requests' would."""

    def __init__(self, predictor: Predictor, gate: threading.Event) -> None:
        self.predictor = predictor
        self.gate = gate
        self.batches: list[tuple[int, int]] = []

    def score(self, inputs: CandidateLists) -> np.ndarray:
        self.gate.wait(timeout=10)
        self.batches.append(inputs.item_ids.shape)
        return self.predictor.score(inputs)


def candidate_lists(predictor: Predictor, lengths: list[int]) -> list[CandidateLists]:
    rng = np.random.default_rng(0)
    catalog = predictor.catalog
    return [
        predictor.known_user_lists(
            rng.integers(catalog.n_users, size=1),
            rng.choice(catalog.n_items, size=(1, length), replace=False),
            np.ones((1, length), bool),
        )
        for length in lengths
    ]


def score_concurrently(
    scoring: ScoringThread, lists: list, gate: threading.Event, leaving: int | None = None
) -> list:
    """Each list's scores (or error): the first holds the thread at the gate while the rest
    queue up; the request at index ``leaving`` is cancelled (its client left) meanwhile, and
    left out of the answer."""

    async def all_of_them() -> list:
        first = asyncio.ensure_future(scoring.score(lists[0]))
        await asyncio.sleep(0.05)
        waiting = [first] + [asyncio.ensure_future(scoring.score(x)) for x in lists[1:]]
        await asyncio.sleep(0.05)
        if leaving is not None:
            waiting.pop(leaving).cancel()
        gate.set()
        return await asyncio.gather(*waiting, return_exceptions=True)

    return asyncio.run(all_of_them())


def test_lists_that_wait_together_are_scored_together_by_shape(onnx_predictor: Predictor) -> None:
    lengths = [6, 6, 9, 6, 9, 6, 6, 9, 6, 6, 6]
    lists = candidate_lists(onnx_predictor, lengths)
    gate = threading.Event()
    recording = Recording(onnx_predictor, gate)
    results = score_concurrently(ScoringThread(recording, max_batch=4), lists, gate)

    assert recording.batches[0] == (1, 6)  # the first came alone
    assert all(rows <= 4 for rows, _ in recording.batches)
    assert len(recording.batches) < len(lists)
    assert sorted(length for rows, length in recording.batches for _ in range(rows)) == sorted(
        lengths
    )
    for inputs, scores in zip(lists, results, strict=True):
        assert scores.shape == inputs.mask.shape
        np.testing.assert_allclose(scores, onnx_predictor.score(inputs), rtol=1e-5, atol=1e-6)


def test_max_batch_one_scores_each_list_alone_to_the_bit(onnx_predictor: Predictor) -> None:
    lists = candidate_lists(onnx_predictor, [8] * 6)
    gate = threading.Event()
    recording = Recording(onnx_predictor, gate)
    results = score_concurrently(ScoringThread(recording, max_batch=1), lists, gate)
    assert recording.batches == [(1, 8)] * 6
    for inputs, scores in zip(lists, results, strict=True):
        np.testing.assert_array_equal(scores, onnx_predictor.score(inputs))


def test_a_failure_reaches_every_request_of_its_batch(onnx_predictor: Predictor) -> None:
    class FailingSecond(Recording):
        def score(self, inputs: CandidateLists) -> np.ndarray:
            scores = super().score(inputs)
            if len(self.batches) == 2:
                raise ValueError("the backend failed")
            return scores

    lists = candidate_lists(onnx_predictor, [5] * 4)
    gate = threading.Event()
    recording = FailingSecond(onnx_predictor, gate)
    scoring = ScoringThread(recording)
    scored, *failed = score_concurrently(scoring, lists, gate)
    assert recording.batches == [(1, 5), (3, 5)]
    np.testing.assert_array_equal(scored, onnx_predictor.score(lists[0]))
    assert all(isinstance(e, ValueError) and "backend failed" in str(e) for e in failed)

    async def afterwards() -> np.ndarray:  # the thread goes on serving
        return await scoring.score(lists[0])

    np.testing.assert_array_equal(asyncio.run(afterwards()), onnx_predictor.score(lists[0]))


def test_a_request_whose_client_left_does_not_stop_the_others(onnx_predictor: Predictor) -> None:
    lists = candidate_lists(onnx_predictor, [5] * 4)
    gate = threading.Event()
    scoring = ScoringThread(Recording(onnx_predictor, gate), max_batch=8)
    kept = score_concurrently(scoring, lists, gate, leaving=1)
    for inputs, scores in zip([lists[0], lists[2], lists[3]], kept, strict=True):
        np.testing.assert_allclose(scores, onnx_predictor.score(inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_batch", ["0", "-3"])
def test_prm_serve_refuses_a_max_batch_below_one(max_batch: str, capsys) -> None:
    from prm.cli.main import main

    assert main(["serve", "--model", "any", "--max-batch", max_batch]) == 2
    assert "--max-batch" in capsys.readouterr().err
