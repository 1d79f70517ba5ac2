"""Intervals for bench figures: a claim "A beats B" is made only when these say so."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086]  # Student t 0.975 quantile, df 1..20


def mean_ci(xs: Sequence[float | None]) -> dict[str, Any]:
    """Mean and 95 % t half-width over the non-null values (``ci95`` null below 2 values)."""
    v = [float(x) for x in xs if x is not None]
    if not v:
        return {"mean": None, "ci95": None, "n": 0}
    m = float(np.mean(v))
    if len(v) < 2:
        return {"mean": round(m, 3), "ci95": None, "n": 1}
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96
    return {"mean": round(m, 3), "ci95": round(t * float(np.std(v, ddof=1)) / math.sqrt(len(v)), 3), "n": len(v)}


def bootstrap_ci(data: np.ndarray, stat: Callable[[np.ndarray], float], n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): percentile 95 % interval of ``stat`` over rows of ``data``
    resampled with replacement (rows = the independent units: prompts, rounds)."""
    rng = np.random.default_rng(seed)
    n = len(data)
    est = float(stat(data))
    boots = np.array([stat(data[rng.integers(0, n, n)]) for _ in range(n_boot)])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return est, float(lo), float(hi)
