"""Where the oracle's gain comes from: simple orderings scored by the true click model.

    .venv/bin/python benchmarks/simulator_stats.py [--config configs/demo.yaml] [--lists 10000]

Prints two markdown tables of the share of the greedy oracle's gain over the initial ranking.
The first scores orderings that each use one kind of hidden knowledge, and a point-wise plug-in
of what a re-ranker observes (taste from the click history, quality from the noisy feature).
The second asks what a scorer trained on the logged clicks can reach: it sorts by plug-in
attractiveness with the saturation counted as in the logged lists (what the clicks teach) or
among better-scored items (the one-pass form of the oracle's rule), for estimates from hidden
truth down to what the observables give.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import norm

from prm.config import ExperimentConfig, SimulatorConfig, load_config
from prm.data.simulator import (
    ClickModel,
    World,
    diversified_scores,
    history_topic_counts,
    initial_lists,
    simulated_world,
)
from prm.evaluation.report import markdown_table

QUALITY_GRID = np.linspace(-4.0, 4.0, 81)  # values of q_i for the posterior on the clicks


def history_taste(config: SimulatorConfig, world: World, users: np.ndarray) -> np.ndarray:
    """(N, T) MAP estimate of each user's taste from the topics of their history clicks.

    History topics are drawn from softmax(theta_u) with prior theta_u ~ N(0, s^2 I) (Eq. 3, 5),
    so the log-posterior is sum_t c_t theta_t - H logsumexp(theta) - |theta|^2 / (2 s^2);
    it is concave, and gradient ascent finds its maximum.
    """
    counts = history_topic_counts(world, users)
    taste = np.zeros_like(counts)
    for _ in range(300):
        shown = np.exp(taste - taste.max(axis=1, keepdims=True))
        shown /= shown.sum(axis=1, keepdims=True)
        taste += 0.05 * (counts - config.history_length * shown - taste / config.taste_scale**2)
    return taste


def feature_quality(world: World, items: np.ndarray) -> np.ndarray:
    """E[q | x] = x / (1 + 0.5^2) for the noisy quality feature x = q + 0.5 eps (Eq. 2)."""
    return world.item_dense[items, -1] / 1.25


def profile_saturation(config: SimulatorConfig, world: World, users: np.ndarray) -> np.ndarray:
    """(N, 1) E[lambda_u | profile]: the profile's last entry is zeta_u + rho eta (Eq. 3, 4),
    so zeta | p ~ N(p / (1 + rho^2), rho^2 / (1 + rho^2)), and lambda is log-normal in zeta."""
    rho2, sigma = config.profile_noise**2, config.saturation_spread
    zeta_mean, zeta_var = world.profile[users, -1] / (1 + rho2), rho2 / (1 + rho2)
    log_lambda = sigma * zeta_mean - sigma**2 / 2 + sigma**2 * zeta_var / 2
    return (config.saturation_mean * np.exp(log_lambda))[:, None]


def expected_same_topic_above(
    config: SimulatorConfig, world: World, items: np.ndarray
) -> np.ndarray:
    """(N, L) expected n of Eq. 8 in the logged order, given only the features.

    Within a topic the ranker's scores (Eq. 6) differ by the quality features plus noise of
    variance 2 nu^2, so item j is above item i with chance Phi((x_j - x_i) / (nu sqrt 2)): what
    a scorer that does not see the initial rank can know of the logged context.
    """
    quality = world.item_dense[items, -1]
    topics = world.item_topic[items]
    same_topic = topics[:, :, None] == topics[:, None, :]
    spread = max(config.initial_noise * 2**0.5, 1e-9)  # a noiseless ranker: a hard count
    above = norm.cdf((quality[:, None, :] - quality[:, :, None]) / spread)
    return (same_topic * above).sum(axis=2) - 0.5  # less the item itself, Phi(0) = 1/2


def click_quality(
    config: SimulatorConfig, world: World, model: ClickModel, rng: np.random.Generator
) -> np.ndarray:
    """(n_items,) posterior mean of each q_i from ``n_train_lists`` logged lists and the prior
    N(E[q | x], 0.2), with the rest of the click model known: more than any learner can know
    of the quality from these logs, so an upper bound for what the training clicks add."""
    users = rng.integers(0, config.n_users, config.n_train_lists)
    items = initial_lists(config, world, users, rng)
    mask = np.ones(items.shape, dtype=bool)
    clicks = rng.random(items.shape) < model.click_probabilities(users, items, mask)
    same, lifted = model.list_context(items, mask)
    logit_less_quality = (
        model.attractiveness_logit(users, items, same, lifted)
        - config.quality_weight * world.quality[items]
    )
    log_post = (
        -0.5
        * (QUALITY_GRID - feature_quality(world, np.arange(config.n_items))[:, None]) ** 2
        / 0.2
    )
    examination = np.broadcast_to(model.examination(items.shape[1]), items.shape)
    flat = (items.ravel(), logit_less_quality.ravel(), examination.ravel(), clicks.ravel())
    for start in range(0, items.size, 500_000):
        item, logit, exam, click = (column[start : start + 500_000] for column in flat)
        p = exam[:, None] / (1 + np.exp(-(logit[:, None] + config.quality_weight * QUALITY_GRID)))
        np.add.at(log_post, item, np.where(click[:, None], np.log(p), np.log1p(-p)))
    posterior = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    return posterior @ QUALITY_GRID / posterior.sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="experiment config; defaults if omitted")
    parser.add_argument("--lists", type=int, default=10_000)
    args = parser.parse_args()
    config = (load_config(args.config) if args.config else ExperimentConfig()).simulator
    world, rng = simulated_world(config)  # the world of `prm simulate` with this config
    model = ClickModel(world, config)
    users = rng.integers(0, config.n_users, args.lists)
    items = initial_lists(config, world, users, rng)
    mask = np.ones(items.shape, dtype=bool)
    no_context = np.zeros(items.shape)
    initial = float(model.expected_clicks(users, items, mask).mean())
    oracle_order = np.take_along_axis(items, model.greedy_oracle(users, items, mask), 1)
    oracle = float(model.expected_clicks(users, oracle_order, mask).mean())

    def gain_when_sorted_by(key: np.ndarray) -> float:
        order = np.argsort(-key, axis=1, kind="stable")
        clicks = model.expected_clicks(users, np.take_along_axis(items, order, 1), mask).mean()
        return 100 * (clicks - initial) / (oracle - initial)

    topics = world.item_topic[items]
    history = np.take_along_axis(history_taste(config, world, users), topics, axis=1)
    observed = config.relevance_weight * history + config.quality_weight * feature_quality(
        world, items
    )
    simple = {
        "initial ranking (point-wise, weakly personalized)": 0.0,
        "sort by observable noisy quality": gain_when_sorted_by(world.item_dense[items, -1]),
        "sort by true taste only": gain_when_sorted_by(
            world.taste[users[:, None], world.item_topic[items]]
        ),
        "sort by true point-wise attractiveness (no list context)": gain_when_sorted_by(
            model.attractiveness_logit(users, items, no_context, no_context)
        ),
        "observable plug-in, point-wise (history taste + quality feature)": gain_when_sorted_by(
            observed
        ),
        "greedy oracle (true model, list context)": 100.0,
    }
    print(f"{args.lists} lists of {config.list_length} items, simulator seed {config.seed}")
    print(f"expected clicks per list: initial {initial:.4f}, greedy oracle {oracle:.4f}\n")
    print(
        markdown_table(
            ["ordering", "% of oracle gain"], [[k, f"{v:.1f}"] for k, v in simple.items()]
        )
    )

    logged_same, _ = model.list_context(items, mask)
    expected_same = expected_same_topic_above(config, world, items)
    learned_quality = click_quality(config, world, model, rng)
    saturation_from_profile = profile_saturation(config, world, users)
    estimates = {
        "hidden truth (taste, quality, saturation of each user)": (
            model.attractiveness_logit(users, items, no_context, no_context),
            world.saturation[users][:, None],
        ),
        "history taste, E[q] from the feature, mean saturation": (observed, config.saturation_mean),
        "history taste, E[q] from the feature, saturation from the profile": (
            observed,
            saturation_from_profile,
        ),
        "history taste, quality from the training clicks (upper bound), profile saturation": (
            config.relevance_weight * history + config.quality_weight * learned_quality[items],
            saturation_from_profile,
        ),
    }
    rows = [
        [
            name,
            f"{gain_when_sorted_by(score - saturation * logged_same):.1f}",
            f"{gain_when_sorted_by(score - saturation * expected_same):.1f}",
            f"{gain_when_sorted_by(diversified_scores(score, topics, saturation)):.1f}",
        ]
        for name, (score, saturation) in estimates.items()
    ]
    print(
        "\nPlug-in attractiveness less the saturation per same-topic item, % of oracle gain; the "
        "items counted are those above it in the logged (initial) order, those expected above it "
        "given the features, or those scored higher (the oracle's rule, one pass)\n"
    )
    header = ["estimates", "logged order", "expected from features", "scored higher"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
