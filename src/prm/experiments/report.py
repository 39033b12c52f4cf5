"""What a suite prints and writes: the markdown tables, the figure, and its section of
benchmarks/RESULTS.md with the protocol and the command."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prm.evaluation.report import markdown_table, p_value_cell
from prm.experiments.config import HEADLINE, LABELS, TIE_NOISE, BenchmarkConfig
from prm.experiments.plan import Table
from prm.experiments.summarize import metric_names, row_top_documents
from prm.io import atomic_path
from prm.rankers.initial_lists import FoldLists


def render_table(summary: dict[str, Any], config: BenchmarkConfig) -> str:
    """A markdown table: test metrics as mean ± std over seeds, the validation value that
    selected the epochs, then paired t-test p-values."""
    metrics = metric_names(config.evaluate, config.letor)
    references = summary["references"]
    header = ["model" if not summary["ablation"] else "variant"]
    header += [_metric_header(m, config) for m in metrics]
    valid = f"valid {config.train.selection_metric.upper()}"
    header.append(f"{valid} (own targets)" if summary["clicks"] else valid)
    if config.losses:
        header.append("loss (chosen on valid)")
    if config.tuning is not None:
        header.append("configuration chosen on valid")
    shares = any("label_gain_share" in row for row in summary["rows"].values())
    if shares:
        header.append("share of the label-trained gain")
    for reference in references.values():
        tested = " / ".join(_metric_header(m, config) for m in config.tested)
        header.append(f"p vs {LABELS.get(reference, reference)} ({tested})")
    lines = []
    for name, row in summary["rows"].items():
        cells = [LABELS.get(name, name)]
        cells += [f"{row[m]:.4f} ± {row[f'{m}_std']:.4f}" for m in metrics]
        cells.append("–" if row["valid"] is None else f"{row['valid']:.4f}")
        if config.losses:
            cells.append(row["loss"] or "–")
        if config.tuning is not None:
            chosen = row.get("chosen") or {}
            cells.append(", ".join(f"{k} {v}" for k, v in chosen.items()) or "–")
        if shares:
            cells.append(
                f"{100 * row['label_gain_share']:.0f} % ± {100 * row['label_gain_share_std']:.0f}"
                if "label_gain_share" in row
                else "–"
            )
        for label in references:
            pvalues = [row.get(f"p_{m}_vs_{label}") for m in config.tested]
            cells.append(
                "–" if pvalues[0] is None else " / ".join(p_value_cell(p) for p in pvalues)
            )
        lines.append(cells)
    return markdown_table(header, lines)


def _metric_header(metric: str, config: BenchmarkConfig) -> str:
    name, k = metric.upper().split("@")
    if name == "MAP":
        return f"MAP@{k} ({config.evaluate.map_convention})"
    if name == "FULL_NDCG":
        return f"NDCG@{k} (full query)"
    return f"{name}@{k} (cut list)" if name == "NDCG" and config.letor else f"{name}@{k}"


def plot_suite(summaries: list[dict[str, Any]], path: Path, title: str) -> None:
    """NDCG@10 mean ± std (over seeds) of every row of every table, one panel per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summaries)
    columns = min(n, 3)
    figure, axes = plt.subplots(
        -(-n // columns), columns, figsize=(5 * columns, 3.8 * -(-n // columns)), squeeze=False
    )
    for axis in axes.flat[n:]:
        axis.set_visible(False)
    for axis, summary in zip(axes.flat, summaries, strict=False):
        names = list(summary["rows"])
        means = np.array([summary["rows"][n][HEADLINE] for n in names])
        stds = np.array([summary["rows"][n][f"{HEADLINE}_std"] for n in names])
        colors = [
            "0.6" if n == "initial" else ("C3" if n.startswith("prm") else "C0") for n in names
        ]
        axis.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        axis.set_xticks(
            range(len(names)), [LABELS.get(n, n) for n in names], rotation=45, ha="right"
        )
        low, high = float((means - stds).min()), float((means + stds).max())
        margin = max(high - low, 0.01) * 0.3
        axis.set_ylim(low - margin, high + margin)  # differences are small: the axis is cut
        axis.set_ylabel("NDCG@10 (axis cut)")
        axis.set_title(summary["title"], fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def _tuning_text(config: BenchmarkConfig) -> str:
    tuning = config.tuning
    grids = "; ".join(
        f"{LABELS.get(kind, kind) if kind != 'prm' else 'PRM-BASE'}: "
        + ", ".join(f"{name} {values}" for name, values in grid.items())
        for kind, grid in tuning.grids.items()
    )
    seeds = ", ".join(str(s) for s in tuning.seeds)
    return (
        f"; equal tuning budget: each re-ranker was trained with the {tuning.budget} "
        f"configurations of its grid ({config.train.epochs} epochs at most each) on seed(s) "
        f"{seeds}, and the one of best mean validation {config.train.selection_metric} over "
        f"folds was then trained with every seed and reported (grids: {grids})"
    )


def _full_query_text(config: BenchmarkConfig, summary: dict[str, Any]) -> str:
    return (
        f" NDCG (cut list) judges the top {config.list_length} documents of the initial ranking "
        "against the best order of those documents, the re-ranking view; NDCG (full query) "
        "against the best order of all the query's documents (those below the cut follow it), "
        "as trec_eval's ndcg_cut_k on a run file, comparable with published LETOR figures; it "
        f"averages the {summary['queries_with_relevant']} test queries with a relevant document."
        + (
            " 'Initial ranker on all training queries' is the initial ranker with the same "
            "settings fitted on all of the fold's training queries (the re-rankers' half too): on "
            "the cut lists it orders the same documents, over the full query it ranks them all."
            if "full_data" in summary["rows"]
            else ""
        )
    )


def _protocol(config: BenchmarkConfig, summary: dict[str, Any]) -> str:
    folds = config.dataset.folds if config.letor else ()
    folds_text = (
        f"Test lists of fold(s) {', '.join(map(str, folds))} joined (each query is "
        "tested in one fold)"
        if folds
        else "One test split"
    )
    seeds = ", ".join(str(s) for s in config.seeds)
    return (
        f"{summary['lists_with_relevant']} of {summary['lists']} test lists have a relevant item "
        f"and are averaged; lists without one are excluded (every ordering scores 0 on them). "
        f"{folds_text}; mean ± std over seeds {seeds}; epochs selected on validation "
        f"{config.train.selection_metric}"
        + (
            f"; each re-ranker's list loss chosen among {', '.join(config.losses)} by its mean "
            "validation value"
            + (
                " (Seq2Slate keeps its own step-wise loss)"
                if "seq2slate" in config.baselines
                else ""
            )
            if config.losses
            else ""
        )
        + (_tuning_text(config) if config.tuning is not None else "")
        + f". MAP convention '{config.evaluate.map_convention}'"
        + (
            " (AP@k divides by the relevant items in the top k, as the PRM authors' code)."
            if config.evaluate.map_convention == "prm"
            else " (AP@k divides by all relevant items of the list, as trec_eval)."
        )
        + " p: paired t-test on per-list values averaged over seeds."
        + (_full_query_text(config, summary) if "queries_with_relevant" in summary else "")
    )


def _click_protocol(config: BenchmarkConfig) -> str:
    clicks, estimator = config.clicks, config.estimator
    diagnostics = {
        "click_probability": "p(y) as the target, what IPS converges to with unlimited sessions "
        "and the exact examination",
        "labels_random_ties": f"the expert labels plus uniform noise below {TIE_NOISE:g}, so "
        "ties between documents of one grade are broken at random (ListMLE breaks exact ties in "
        "the initial order; click targets rarely tie)",
    }
    notes = [f"'{LABELS[t]}': {text}" for t, text in diagnostics.items() if t in clicks.targets]
    return (
        f"Clicks: each training and validation list is shown {clicks.sessions} times in its "
        f"initial order; the document at rank k is examined with probability (1/k)^{clicks.eta:g} "
        f"and then clicked with probability {clicks.epsilon:g} + {1 - clicks.epsilon:g} "
        f"(2^y - 1) / (2^{clicks.max_grade} - 1) of its grade y (click seed {clicks.seed}). "
        "Every row is PRM-BASE. Click-trained rows learn from the click-through rates: raw "
        "(naive), divided by the true examination (IPS, known) or by the examination a learned "
        "PAL tower estimated from the training clicks (PRM-BASE "
        f"{'with' if estimator.use_pe else 'without'} PE plus the tower, lr "
        f"{estimator.train.lr:g}, batch {estimator.train.batch_size}, epoch chosen on the "
        "validation click likelihood). Each selects its epochs and loss on NDCG@10 against its "
        "own validation targets (raw, IPS-known or IPS-estimated clicks), never on the expert "
        "labels; the label-trained row selects on the validation labels. "
        + (f"Diagnostics, which read the labels: {'; '.join(notes)}. " if notes else "")
        + "Test lists are scored against the expert labels. Share of the label-trained gain: "
        "(NDCG@10 - initial) / (label-trained NDCG@10 - initial), mean ± std over seeds."
    )


def _examination_line(examination: dict[str, Any]) -> str:
    cells = (
        f"rank {k}: {mean:.3f} ± {std:.3f} (true {true:.3f})"
        for k, mean, std, true in zip(
            examination["ranks"],
            examination["estimated"],
            examination["estimated_std"],
            examination["true"],
            strict=True,
        )
    )
    return "Examination estimated by the PAL tower (mean ± std over folds and seeds): " + (
        "; ".join(cells) + "."
    )


def render_section(results: dict[str, Any], config: BenchmarkConfig) -> str:
    """The suite's section of RESULTS.md: how it was run, then every table."""
    minutes = results["seconds"]["total"] / 60
    parts = [
        f"## {config.name}" + (" (quick settings)" if results["quick"] else ""),
        "",
        f"- Command: `{results['command']}`",
        f"- Machine: {results['machine']}; torch threads: {config.threads}; "
        f"load average (1 min) at start / end: {results['load_average'][0]:.2f} / "
        f"{results['load_average'][1]:.2f} (other jobs share the machine)",
        f"- Wall time: {minutes:.1f} min for {results['runs']} training runs ("
        + ", ".join(f"{stage} {s:.0f} s" for stage, s in results["seconds"].items())
        + "); mean seconds per run: "
        + ", ".join(f"{LABELS.get(k, k)} {v:.1f}" for k, v in results["seconds_per_run"].items()),
        f"- Figure: `{results['figure']}`; numbers: `{results['json']}`",
    ]
    for summary in results["tables"]:
        parts += ["", f"### {summary['title']}", "", _protocol(config, summary), ""]
        if not summary["ablation"] and "best_baseline" in summary["references"]:
            best = summary["references"]["best_baseline"]
            parts += [
                f"Best baseline (best mean validation {config.train.selection_metric.upper()}): "
                f"{LABELS.get(best, best)}.",
                "",
            ]
        if summary["clicks"]:
            parts += [_click_protocol(config), ""]
        parts.append(render_table(summary, config))
        if "examination" in summary:
            parts += ["", _examination_line(summary["examination"])]
    return "\n".join(parts) + "\n"


RESULTS_HEADER = (
    "# Benchmarks on real data\n\n"
    "Written by `prm benchmark <suite>` (src/prm/experiments/): one section per suite, replaced "
    "when that suite runs again. Numbers are measured by the command shown in each section.\n"
)


def write_trec_files(
    config: BenchmarkConfig,
    tables: list[Table],
    lists: dict[str, FoldLists],
    records: dict[str, dict[str, Any]],
    folder: Path,
) -> None:
    """Per main table: ``qrels`` (every test document's label) and one TREC run file per row
    (its first seed; the top ranks of each test list), folds joined with query ids
    ``<fold>-<qid>``, so ``trec_eval -m ndcg_cut.10 qrels <row>.run`` gives the full-query
    NDCG of the table."""
    for table in (t for t in tables if not t.ablation):
        units = {fold: lists[f"{table.ranker}/{fold}"] for fold in config.fold_names()}
        qrels = []
        for fold, unit in units.items():
            queries = unit.queries["test"]
            for q, qid in enumerate(queries.qids[: len(unit.splits["test"])]):
                for doc in range(queries.offsets[q], queries.offsets[q + 1]):
                    qrels.append(f"{fold}-{qid} 0 d{doc} {queries.labels[doc]:g}")
        with atomic_path(folder / table.ranker / "qrels") as tmp:
            tmp.write_text("\n".join(qrels) + "\n")
        for row in table.rows:
            lines = []
            tops = row_top_documents(config, table, row, lists, records)
            for (fold, unit), top in zip(units.items(), tops, strict=True):
                for qid, docs in zip(unit.splits["test"].list_ids, top, strict=True):
                    for rank, doc in enumerate(d for d in docs if d >= 0):
                        lines.append(f"{fold}-{qid} Q0 d{doc} {rank + 1} {-rank} {row.name}")
            with atomic_path(folder / table.ranker / f"{row.name}.run") as tmp:
                tmp.write_text("\n".join(lines) + "\n")


def update_results_markdown(path: Path, suite: str, section: str) -> None:
    """Put ``section`` between the suite's markers in ``path``, keeping other suites' sections."""
    begin, end = f"<!-- benchmark:{suite} -->", f"<!-- /benchmark:{suite} -->"
    block = f"{begin}\n{section}{end}\n"
    text = path.read_text() if path.is_file() else RESULTS_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def expectation_lines(checks: list[dict[str, Any]]) -> str:
    """One line per expected figure: the range, the value, and whether it lies within."""
    lines = [
        f"expected {c['row']} {c['metric']} in [{c['low']}, {c['high']}]: "
        + ("not measured" if c["value"] is None else f"{c['value']:.4g}")
        + ("" if c["ok"] else "  <- OUTSIDE")
        for c in checks
    ]
    met = sum(c["ok"] for c in checks)
    return "\n".join([f"expected figures: {met} of {len(checks)} within range", *lines])


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU used"
    )
