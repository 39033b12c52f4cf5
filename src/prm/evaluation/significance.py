"""Paired significance tests and mean ± std over seeds, for comparing two rankers.

Two rankers are compared on the same lists (or the same seeds), so the tests are paired: they
look at the per-list differences ``a - b``, not at the two samples independently.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` against ``b``, both (n,) float.

    Returns ``n``, ``mean_diff`` = mean(a - b), ``t_pvalue`` (scipy's ``ttest_rel``) and
    ``wilcoxon_pvalue`` (scipy's ``wilcoxon``), both two-sided.

    Where a test is undefined (every difference zero, as for identical arrays, or fewer than two
    pairs) scipy gives NaN; we report p = 1.0 instead. The data then hold no evidence against
    equality, and a NaN would fail every ``p < alpha`` check silently and poison result tables.
    Non-finite inputs are rejected: per-list metrics are never NaN, so one is a bug upstream.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D of the same length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite")
    diff = a - b
    t_p = w_p = 1.0
    if len(diff) >= 2 and np.any(diff != 0):
        with warnings.catch_warnings():
            # scipy warns on near-constant differences; the p-values it returns are still right
            warnings.simplefilter("ignore", RuntimeWarning)
            t_p = float(stats.ttest_rel(a, b).pvalue)
            w_p = float(stats.wilcoxon(a, b).pvalue)
    return {
        "n": len(diff),
        "mean_diff": float(diff.mean()) if len(diff) else 0.0,
        "t_pvalue": t_p,
        "wilcoxon_pvalue": w_p,
    }


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of (n,) values; std is 0.0 when n == 1."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std


def format_mean_std(values: np.ndarray, digits: int = 4) -> str:
    """``"mean ± std"`` with ``digits`` decimals, e.g. ``"0.4123 ± 0.0031"``."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
