"""Result tables as markdown, the form they take in README.md and benchmarks/RESULTS.md."""

from __future__ import annotations

from typing import Any

LABELS = {
    "initial": "initial ranking",
    "ctr_sort": "CTR-model sort",
    "prm_base": "PRM-BASE",
    "prm": "PRM",
    "oracle": "greedy oracle",
}


def _cell(row: dict[str, float], key: str, digits: int) -> str:
    value = row[key]
    std = row.get(f"{key}_std", 0.0)
    return f"{value:.{digits}f} ± {std:.{digits}f}" if row["seeds"] > 1 else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def results_table(results: dict[str, Any]) -> str:
    """One row per model: expected clicks, share of oracle gain, NDCG@10, MAP@10, p vs initial."""
    lines = [
        "| model | expected clicks | % of oracle gain | NDCG@10 | MAP@10 | p vs initial |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        lines.append(
            f"| {LABELS.get(name, name)} | {_cell(row, 'expected_clicks', 4)} "
            f"| {_cell(row, 'oracle_gain_pct', 1)} | {_cell(row, 'ndcg@10', 4)} "
            f"| {_cell(row, 'map@10', 4)} | {_p(row.get('p_value_vs_initial'))} |"
        )
    return "\n".join(lines)


def tests_table(tests: list[dict[str, Any]]) -> str:
    """Paired t-tests across test lists: claim, mean difference, p-value."""
    lines = [
        "| claim | metric | mean difference | t-test p | Wilcoxon p |",
        "|---|---|---|---|---|",
    ]
    for test in tests:
        claim = f"{LABELS.get(test['a'], test['a'])} > {LABELS.get(test['b'], test['b'])}"
        lines.append(
            f"| {claim} | {test['metric']} | {test['mean_diff']:+.4f} "
            f"| {_p(test['t_pvalue'])} | {_p(test['wilcoxon_pvalue'])} |"
        )
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def p_value_cell(value: float | None) -> str:
    """A p-value as every table here prints it: 3 decimals, scientific below 0.001."""
    return _p(value)


def _interval(estimate: dict[str, Any]) -> list[str]:
    if estimate["value"] is None:
        return ["–", estimate["note"]]
    return [f"{estimate['value']:.4f}", f"[{estimate['low']:.4f}, {estimate['high']:.4f}]"]


def offpolicy_table(report: dict[str, Any]) -> str:
    """One row per off-policy estimator: clicks per list and gain over the initial order, each
    with its 95 % interval (``prm evaluate --offpolicy``), and the truth when known."""
    rows = [
        [name, *_interval(estimate), *_interval(report["gain_over_initial"][name])]
        for name, estimate in report["estimates"].items()
    ]
    if "truth" in report:
        truth = report["truth"]
        clicks, gain = f"{truth['expected_clicks']:.4f}", f"{truth['gain_over_initial']:+.4f}"
        rows.append(["truth (simulator)", clicks, "", gain, ""])
    header = ["estimator", "clicks per list", "95 % interval", "gain over initial", "95 % interval"]
    bucket = "uniformly shuffled" if report["uniform_bucket"] else "logged propensities"
    return (
        markdown_table(header, rows)
        + f"\n\n{report['lists']} exploration-bucket lists ({bucket}); "
        "intervals: bootstrap over lists."
    )
