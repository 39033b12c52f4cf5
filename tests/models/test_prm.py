"""PRM and its layers: masks, padding, permutations, PV/PE switches, and a list-context task."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from list_batches import random_list_batch
from torch import nn

from prm.config import PRMConfig
from prm.data.batch import ListBatch
from prm.models.layers import Dropout, EncoderBlock, MultiHeadSelfAttention
from prm.models.prm import PRM, list_softmax
from prm.training.losses import LOSSES, softmax_cross_entropy

D_FEATURE, D_PV = 5, 3
CONFIG = PRMConfig(d_model=16, n_heads=2, n_blocks=2, d_ff=32, dropout=0.1, max_positions=16)


def make_batch(lengths: list[int], length: int, *, seed: int = 0) -> ListBatch:
    """Random padded lists, one click per list."""
    return random_list_batch(
        lengths, length, d_feature=D_FEATURE, d_pv=D_PV, seed=seed, click="random"
    )


def make_model(seed: int = 0, **overrides: object) -> PRM:
    torch.manual_seed(seed)
    return PRM(dataclasses.replace(CONFIG, **overrides), D_FEATURE, D_PV).eval()


def test_scores_are_minus_inf_exactly_at_padding() -> None:
    batch = make_batch([4, 1, 6], 6)
    scores = make_model()(batch)
    assert scores.shape == (3, 6)
    assert torch.isfinite(scores[batch.mask]).all()
    assert torch.isneginf(scores[~batch.mask]).all()


def test_attention_weights_skip_padded_keys_and_sum_to_one() -> None:
    batch = make_batch([4, 1, 6], 6)
    model = make_model()
    scores, weights = model.forward_with_attention(batch)
    assert len(weights) == CONFIG.n_blocks
    torch.testing.assert_close(scores, model(batch))
    for w in weights:
        assert w.shape == (3, CONFIG.n_heads, 6, 6)
        padded_keys = ~batch.mask[:, None, None, :].expand_as(w)
        assert (w[padded_keys] == 0).all()
        real_queries = batch.mask[:, None, :].expand(w.shape[:3])
        torch.testing.assert_close(w.sum(-1)[real_queries], torch.ones(int(real_queries.sum())))


def test_fused_attention_equals_explicit_attention() -> None:
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(d_model=8, n_heads=2)
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    fused, no_weights = attention(x, mask)
    explicit, weights = attention(x, mask, need_weights=True)
    assert no_weights is None
    torch.testing.assert_close(fused, explicit)
    assert weights.shape == (3, 2, 5, 5)
    # The list with no real item attends to every key rather than dividing by zero.
    assert (weights[1] > 0).all()
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(2, 5))


def test_bf16_attention_on_cpu_is_explicit_and_matches_fp32(monkeypatch) -> None:
    """bf16 on a CPU takes the explicit path (softmax in fp32, not the fused kernel): the fp32
    result to bf16's precision, and no weights unless asked for."""
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(d_model=8, n_heads=2)
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    fp32, _ = attention(x, mask)

    def fused(*args, **kwargs):
        raise AssertionError("the fused kernel ran on bf16")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", fused)
    bf16, no_weights = copy.deepcopy(attention).bfloat16()(x.bfloat16(), mask)
    assert no_weights is None
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, atol=0.03, rtol=0.03)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_bf16_dropout_keeps_the_expectation_at_a_nearby_rate(p: float) -> None:
    """bf16 masks from 15-bit lanes: the drop rate is the one whose scale bf16 holds exactly, so
    the mean is kept; the kept units are scaled by exactly that; eval mode is the identity."""
    dropout = Dropout(p).train()
    x = torch.ones(1000, 1000, dtype=torch.bfloat16)
    torch.manual_seed(0)
    out = dropout(x)
    dropped = (out == 0).double().mean().item()
    rate = dropout.bf16_threshold / 32768
    assert abs(rate - p) < 0.02 * p
    assert abs(dropped - rate) < 5 * (rate * (1 - rate) / x.numel()) ** 0.5
    assert torch.equal(out[out != 0], torch.full_like(out[out != 0], dropout.bf16_scale))
    assert (1 - rate) * dropout.bf16_scale == pytest.approx(1, abs=1e-4)
    assert torch.equal(dropout.eval()(x), x)


def test_fp32_dropout_draws_as_nn_dropout() -> None:
    """fp32 keeps nn.Dropout's draws, so fp32 runs repeat results made with it."""
    x = torch.randn(64, 30, 16)
    torch.manual_seed(3)
    ours = Dropout(0.1).train()(x)
    torch.manual_seed(3)
    torch.testing.assert_close(ours, nn.Dropout(0.1).train()(x), rtol=0, atol=0)


def test_d_model_must_split_into_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(d_model=10, n_heads=3)


def test_encoder_block_is_post_norm() -> None:
    """Each output row is LayerNorm'd: mean 0 and variance 1 over d_model (default affine)."""
    block = EncoderBlock(d_model=8, n_heads=2, d_ff=16, dropout=0.0)
    out, _ = block(torch.randn(2, 4, 8) * 5 + 3, torch.ones(2, 4, dtype=torch.bool))
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-3, rtol=0)


def test_padded_slots_change_no_real_score() -> None:
    """Real items scattered among padded slots full of garbage score exactly as before."""
    batch = make_batch([5, 3, 1], 5)
    model = make_model()
    g = torch.Generator().manual_seed(1)
    wide = 9
    slots = torch.stack([torch.randperm(wide, generator=g)[:5].sort().values for _ in range(3)])
    garbage = {
        "features": torch.randn(3, wide, D_FEATURE, generator=g) * 10,
        "pv": torch.randn(3, wide, D_PV, generator=g) * 10,
        "mask": torch.zeros(3, wide, dtype=torch.bool),
        "labels": torch.zeros(3, wide),
        "positions": torch.randint(-100, 10 * CONFIG.max_positions, (3, wide), generator=g),
        "item_ids": torch.zeros(3, wide, dtype=torch.long),
    }
    for name, field in garbage.items():
        for row in range(3):
            field[row, slots[row]] = getattr(batch, name)[row]
    padded = dataclasses.replace(batch, **garbage)
    scores, padded_scores = model(batch), model(padded)
    moved = padded_scores.gather(1, slots)  # (B, 5): the same items, at their new slots
    torch.testing.assert_close(moved[batch.mask], scores[batch.mask])
    assert torch.isneginf(padded_scores[~padded.mask]).all()


def permute_items(batch: ListBatch, order: torch.Tensor, *, keep_positions: bool) -> ListBatch:
    """The batch with its first ``len(order)`` slots reordered by ``order``.

    The initial ranks travel with the items, or with ``keep_positions`` stay with the slots
    (the items are then shown at other initial ranks)."""
    full = torch.cat([order, torch.arange(len(order), batch.mask.shape[1])])
    permuted = {
        name: getattr(batch, name)[:, full]
        for name in ["features", "pv", "mask", "labels", "positions", "item_ids"]
    }
    if keep_positions:
        permuted["positions"] = batch.positions
    return dataclasses.replace(batch, **permuted)


@cache
def model_without_pe() -> PRM:
    return make_model(use_pe=False)


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    n_items=st.integers(1, 8),
    n_padded=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_without_pe_scores_are_permutation_equivariant(
    data: st.DataObject, n_items: int, n_padded: int, seed: int
) -> None:
    order = torch.tensor(data.draw(st.permutations(range(n_items))))
    batch = make_batch([n_items, max(n_items - 1, 0)], n_items + n_padded, seed=seed)
    model = model_without_pe()
    scores = model(batch)
    permuted = model(permute_items(batch, order, keep_positions=True))
    slots = torch.cat([order, torch.arange(n_items, n_items + n_padded)])
    torch.testing.assert_close(permuted, scores[:, slots])


def test_with_pe_the_initial_rank_matters() -> None:
    """Moving items to other initial ranks changes their scores; moving them with their ranks
    does not, since PE is looked up by ``positions``, not by slot."""
    batch = make_batch([6], 6)
    model = make_model()
    nn.init.normal_(model.input.position.weight)
    scores = model(batch)
    order = torch.tensor([5, 4, 3, 2, 1, 0])
    with_ranks = model(permute_items(batch, order, keep_positions=False))
    torch.testing.assert_close(with_ranks, scores[:, order])
    new_ranks = model(permute_items(batch, order, keep_positions=True))
    assert not torch.allclose(new_ranks, scores[:, order], atol=1e-3)


def test_without_pv_the_personalized_vectors_are_ignored() -> None:
    batch = make_batch([4, 2], 5)
    other_pv = dataclasses.replace(batch, pv=torch.randn(2, 5, 7))  # even another width
    base = make_model(use_pv=False)
    torch.testing.assert_close(base(other_pv), base(batch))
    full = make_model()
    changed = dataclasses.replace(batch, pv=torch.randn(2, 5, D_PV))
    assert not torch.allclose(full(changed)[batch.mask], full(batch)[batch.mask])


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_an_all_padding_list_gives_no_nan_forward_or_backward(loss: str) -> None:
    batch = make_batch([0, 3, 0], 4)
    model = make_model().train()
    scores, weights = model.forward_with_attention(batch)
    assert torch.isneginf(scores[0]).all() and torch.isneginf(scores[2]).all()
    assert torch.isfinite(scores[1, :3]).all()
    assert all(torch.isfinite(w).all() for w in weights)
    LOSSES[loss](model(batch), batch.labels, mask=batch.mask).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(list_softmax(scores, batch.mask)).all()


def test_initial_positions_out_of_range_are_rejected() -> None:
    model = make_model()
    batch = make_batch([3], 4)
    too_far = batch.positions.clone()
    too_far[0, 2] = CONFIG.max_positions
    with pytest.raises(ValueError, match="max_positions"):
        model(dataclasses.replace(batch, positions=too_far))
    too_far[0, 2] = 2
    too_far[0, 3] = 10_000  # a padded slot: ignored
    model(dataclasses.replace(batch, positions=too_far))
    make_model(use_pe=False)(dataclasses.replace(batch, positions=too_far * 1000))


def test_wrong_feature_width_is_rejected() -> None:
    batch = make_batch([3], 4)
    with pytest.raises(ValueError, match="features"):
        make_model()(dataclasses.replace(batch, features=torch.zeros(1, 4, D_FEATURE + 1)))


def test_rerank_sorts_by_score_with_padding_last() -> None:
    batch = make_batch([4, 2, 0], 5)
    model = make_model()
    order = model.rerank(batch)
    scores = model(batch)
    assert order.dtype == torch.long
    assert (order.sort(-1).values == torch.arange(5)).all()  # a permutation of the slots
    ranked = scores.gather(1, order)
    assert (ranked[:, :-1] >= ranked[:, 1:]).all()
    assert (order[1, 2:] == torch.tensor([2, 3, 4])).all()


def test_list_softmax_is_a_distribution_over_real_items() -> None:
    batch = make_batch([4, 1, 0], 5)
    probs = list_softmax(make_model()(batch), batch.mask)
    torch.testing.assert_close(probs.sum(-1), torch.tensor([1.0, 1.0, 0.0]))
    assert (probs[~batch.mask] == 0).all()


N_TOPICS, LIST_LENGTH = 4, 6


def unique_topic_lists(n: int, rng: np.random.Generator) -> ListBatch:
    """Lists of 4-6 items, each with a one-hot topic; the click is on the one item whose topic
    appears nowhere else in its list. Whether an item is clicked depends on the rest of the
    list only, so a point-wise scorer cannot do much better than guess a topic."""
    topics = rng.integers(0, N_TOPICS, size=(8 * n, LIST_LENGTH))  # (N', L)
    mask = np.arange(LIST_LENGTH) < rng.integers(4, LIST_LENGTH + 1, size=(8 * n, 1))  # (N', L)
    counts = np.stack([((topics == t) & mask).sum(1) for t in range(N_TOPICS)], 1)  # (N', T)
    keep = (counts == 1).sum(1) == 1  # exactly one singleton topic
    topics, mask, counts = topics[keep][:n], mask[keep][:n], counts[keep][:n]
    labels = (np.take_along_axis(counts, topics, 1) == 1) & mask  # (N, L)
    features = np.eye(N_TOPICS, dtype=np.float32)[topics] * mask[..., None]  # (N, L, T)
    positions = np.tile(np.arange(LIST_LENGTH), (n, 1)) * mask  # (N, L)
    ids = torch.arange(n)
    return ListBatch(
        features=torch.from_numpy(features),
        pv=torch.zeros(n, LIST_LENGTH, 0),
        mask=torch.from_numpy(mask),
        labels=torch.from_numpy(labels.astype(np.float32)),
        positions=torch.from_numpy(positions),
        user_ids=ids,
        list_ids=ids,
        item_ids=torch.from_numpy(positions + 1) * torch.from_numpy(mask),
    )


class PointwiseMLP(nn.Module):
    """Scores each item from its own features only: the baseline a list-context model beats."""

    def __init__(self, d_feature: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_feature, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, batch: ListBatch) -> torch.Tensor:
        return self.net(batch.features).squeeze(-1).masked_fill(~batch.mask, float("-inf"))


def top1_accuracy(model: nn.Module, batch: ListBatch) -> float:
    with torch.no_grad():
        best = model.eval()(batch).argmax(-1, keepdim=True)  # (B, 1)
    return batch.labels.gather(1, best).mean().item()


def train(model: nn.Module, data: ListBatch, *, steps: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        index = torch.randint(0, len(data.mask), (128,), generator=g)
        batch = ListBatch(*(getattr(data, f.name)[index] for f in dataclasses.fields(data)))
        loss = softmax_cross_entropy(model(batch), batch.labels, mask=batch.mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine the thread handoffs
    can make this training 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_prm_learns_a_list_context_task_that_a_pointwise_model_cannot() -> None:
    rng = np.random.default_rng(0)
    train_lists, test_lists = unique_topic_lists(4096, rng), unique_topic_lists(1000, rng)
    torch.manual_seed(0)
    config = PRMConfig(
        d_model=16, n_heads=2, n_blocks=2, d_ff=32, dropout=0.0, use_pv=False, use_pe=False
    )
    prm = PRM(config, N_TOPICS, 0)
    mlp = PointwiseMLP(N_TOPICS, hidden=64)
    assert sum(p.numel() for p in mlp.parameters()) > sum(p.numel() for p in prm.parameters()) / 2
    prm_accuracy = top1_accuracy(train(prm, train_lists, steps=200, seed=0), test_lists)
    mlp_accuracy = top1_accuracy(train(mlp, train_lists, steps=200, seed=0), test_lists)
    assert prm_accuracy > 0.9
    assert mlp_accuracy < 0.5
    assert prm_accuracy > mlp_accuracy + 0.4


def test_position_bias_tower_enters_the_loss_but_not_the_ranking() -> None:
    batch = make_batch([5, 3], 6)
    plain = make_model(use_pe=False).eval()
    towered = make_model(use_pe=False, position_bias_tower=True).eval()
    towered.load_state_dict(plain.state_dict(), strict=False)
    examination = torch.tensor([1.0, 0.5, 0.25, 0.25, 0.125, 0.125])
    towered.position_bias.fix(examination)
    torch.testing.assert_close(towered(batch), plain(batch))
    offsets = towered.click_logits(batch) - towered(batch)
    real = batch.mask
    expected = torch.log(examination)[batch.positions]
    torch.testing.assert_close(offsets[real], expected[real])
    assert torch.isneginf(towered.click_logits(batch)[~real]).all()
