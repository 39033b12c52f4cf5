"""CTR pre-training: shapes, PV at padding, learning a planted task, save/load, edge cases."""

from __future__ import annotations

from dataclasses import replace
from itertools import product

import numpy as np
import pytest
import torch

from prm.config import PretrainConfig
from prm.evaluation.metrics import roc_auc
from prm.pretrain.ctr import BASE_FIELDS as N_FIELDS
from prm.pretrain.ctr import Catalog, build_ctr_model, load_ctr, save_ctr
from prm.pretrain.training import Impressions, compute_pv, evaluate_ctr, train_ctr

MODELS = ["fm", "deepfm", "dcn", "fnn"]
CONFIG = PretrainConfig(
    embedding_dim=8, hidden_dims=(32, 16), epochs=2, batch_size=256, lr=1e-2, seed=0
)
N_USERS, N_ITEMS, N_TOPICS, H = 500, 200, 5, 10


def expected_d_pv(model: str) -> int:
    k, h = CONFIG.embedding_dim, CONFIG.hidden_dims[-1]
    return {"fm": N_FIELDS + k, "deepfm": N_FIELDS + k + h, "dcn": N_FIELDS * k + h, "fnn": h}[
        model
    ]


def planted_task(seed: int = 0) -> tuple[Catalog, Impressions, Impressions]:
    """Users with a latent taste over topics, seen through a noisy profile and their history.

    Items carry a one-hot topic among their dense features; P(click) = sigmoid(2 taste[topic] - 1).
    """
    rng = np.random.default_rng(seed)
    taste = rng.normal(0.0, 1.5, (N_USERS, N_TOPICS))
    profile = taste @ rng.normal(size=(N_TOPICS, 6)) + 0.3 * rng.normal(size=(N_USERS, 6))
    topic = rng.integers(N_TOPICS, size=N_ITEMS)
    item_features = np.concatenate([np.eye(N_TOPICS)[topic], rng.normal(size=(N_ITEMS, 2))], 1)
    preference = np.exp(taste[:, topic])  # (n_users, n_items)
    preference /= preference.sum(1, keepdims=True)
    history = np.stack([rng.choice(N_ITEMS, H, p=p) for p in preference])
    history_mask = np.arange(H)[None] < rng.integers(0, H + 1, N_USERS)[:, None]
    tables = Catalog(
        profile.astype(np.float32), history, history_mask, item_features.astype(np.float32)
    )

    def impressions(n: int) -> Impressions:
        users, items = rng.integers(N_USERS, size=n), rng.integers(N_ITEMS, size=n)
        p_click = 1 / (1 + np.exp(-(2 * taste[users, topic[items]] - 1)))
        return Impressions(users, items, (rng.random(n) < p_click).astype(np.float32))

    return tables, impressions(20_000), impressions(5_000)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only adds sync, ~20x slower on a busy box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task() -> tuple[Catalog, Impressions, Impressions]:
    return planted_task()


@pytest.fixture(scope="module", params=MODELS)
def trained(request, task):
    tables, train, valid = task
    config = replace(CONFIG, model=request.param)
    model, history = train_ctr(config, tables, train, valid, progress=False)
    return config, model, history


def test_roc_auc_is_the_pairwise_win_rate_with_ties_as_half():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 4, 60).astype(float), rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in product(pos, neg)]
    assert roc_auc(scores, labels) == pytest.approx(np.mean(pairs))
    assert np.isnan(roc_auc(scores, np.zeros(60)))


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_pv_is_zero_at_padding(name, task):
    tables = task[0]
    model = build_ctr_model(replace(CONFIG, model=name), tables)
    assert model.d_pv == expected_d_pv(name)
    users, items = torch.arange(7), torch.arange(7) * 3
    hidden = model.hidden(users, items)
    assert hidden.shape == (7, model.d_pv)
    assert model(users, items).shape == (7,)

    item_ids = np.arange(12).reshape(3, 4)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    pv = compute_pv(model, np.array([5, 6, 7]), item_ids, mask, batch_size=2)
    assert pv.shape == (3, 4, model.d_pv) and pv.dtype == np.float32
    assert (pv[~mask] == 0).all()
    with torch.no_grad():
        expected = model.hidden(torch.tensor([5, 5, 5, 6]), torch.tensor([0, 1, 2, 4]))
    np.testing.assert_allclose(pv[mask], expected.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_empty_history_gives_finite_outputs_and_gradients(name, task):
    tables = task[0]
    empty = replace(tables, history_mask=np.zeros_like(tables.history_mask))
    model = build_ctr_model(replace(CONFIG, model=name), empty)
    users, items = torch.arange(16), torch.arange(16)
    assert torch.isfinite(model.hidden(users, items)).all()
    model(users, items).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_learns_the_planted_task_and_keeps_the_best_epoch(trained, task):
    config, model, history = trained
    assert [record["epoch"] for record in history] == list(range(1, config.epochs + 1))
    best = min(history, key=lambda record: record["valid_log_loss"])
    assert best["valid_auc"] > 0.75, history
    metrics = evaluate_ctr(model, task[2])
    assert metrics["log_loss"] == pytest.approx(best["valid_log_loss"], rel=1e-5)


def test_save_load_round_trip_gives_identical_pv(trained, tmp_path):
    config, model, _ = trained
    path = tmp_path / "ctr.pt"
    save_ctr(model, config, path)
    loaded = load_ctr(path)
    assert type(loaded) is type(model) and loaded.d_pv == model.d_pv
    assert [p.name for p in tmp_path.iterdir()] == ["ctr.pt"]  # no temporary file left
    users, items = np.arange(40) % N_USERS, (np.arange(40 * 5) % N_ITEMS).reshape(40, 5)
    mask = np.arange(5)[None] < (np.arange(40) % 6)[:, None]
    np.testing.assert_array_equal(
        compute_pv(loaded, users, items, mask), compute_pv(model, users, items, mask)
    )


def test_training_is_seeded_and_leaves_the_global_rng_alone(task):
    tables, train, valid = task
    config = replace(CONFIG, model="fnn", epochs=1)
    state = torch.random.get_rng_state()
    runs = [train_ctr(config, tables, train, valid, progress=False)[1] for _ in range(2)]
    assert torch.equal(state, torch.random.get_rng_state())
    strip = [{k: v for k, v in run[0].items() if k != "seconds"} for run in runs]
    assert strip[0] == strip[1]


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="history"):
        Catalog(
            np.zeros((3, 2), np.float32),
            np.full((3, 4), 9),
            np.ones((3, 4), bool),
            np.zeros((5, 2), np.float32),
        )
    with pytest.raises(ValueError, match="1-D"):
        Impressions(np.zeros(3, int), np.zeros(4, int), np.zeros(3, np.float32))


def test_topic_affinity_is_the_smoothed_log_share_of_the_history(task):
    tables = task[0]
    topic = tables.item_features[:, :N_TOPICS].argmax(1)
    with_topics = replace(tables, item_topic=topic)
    model = build_ctr_model(replace(CONFIG, topic_affinity=True), with_topics)
    users, items = torch.arange(20), torch.arange(20) * 7
    affinity = model.tables(users, items).topic_affinity[:, 0].numpy()
    for user, item, value in zip(users.numpy(), items.numpy(), affinity, strict=True):
        history = tables.history[user][tables.history_mask[user]]
        same = (topic[history] == topic[item]).sum()
        expected = np.log((same + 1) / (len(history) + N_TOPICS))
        assert value == pytest.approx(expected, rel=1e-5)
    assert model.d_pv == expected_d_pv("deepfm") + 1  # one more first-order field
    with pytest.raises(ValueError, match="item_topic"):
        build_ctr_model(replace(CONFIG, topic_affinity=True), tables)


def test_list_context_learns_a_saturation_and_passes_it_in_pv(task):
    """Clicks fall by 1 logit per same-topic item above; the model's s(u), PV's last unit,
    must take that up (it starts near softplus(0) = 0.7 and must move toward 1)."""
    tables, train, valid = task
    rng = np.random.default_rng(3)

    def with_context(data: Impressions) -> Impressions:
        same = rng.integers(0, 4, len(data)).astype(np.float32)
        keep = rng.random(len(data)) < np.exp(-same)  # each same-topic item above: 1/e
        return replace(data, clicks=data.clicks * keep, same_topic_above=same)

    config = replace(CONFIG, list_context=True, epochs=3)
    model, _ = train_ctr(config, tables, with_context(train), with_context(valid), progress=False)
    assert model.d_pv == expected_d_pv("deepfm") + 1
    with torch.no_grad():
        saturation = model.hidden(torch.arange(N_USERS), torch.zeros(N_USERS, dtype=torch.int64))
    assert 0.8 < saturation[:, -1].mean().item() < 1.6
    with pytest.raises(ValueError, match="same_topic_above"):
        train_ctr(config, tables, train, valid, progress=False)
