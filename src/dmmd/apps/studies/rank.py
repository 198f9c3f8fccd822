"""Rank statistics of the studies' curves: Spearman's rho, its value over the rising range, and
the largest dip of a curve that should rise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


# ------------------------------------------------------------------------------ small helpers
def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties), numpy only."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # average the ranks of ties
            tied = v == value
            r[tied] = r[tied].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else math.nan


def max_dip(values: Sequence[float]) -> float:
    """Largest fall below the running maximum, as a share of the curve's range: 0 for a
    non-decreasing curve, 1 when it ends at its minimum after its maximum. Tells "rises, then
    flat with noise" (small) from "falls" (large), which a rank correlation on a plateau cannot."""
    v = np.asarray(values, dtype=np.float64)
    span = float(v.max() - v.min())
    return float((np.maximum.accumulate(v) - v).max() / span) if span > 0 else 0.0


RISING_RANGE = 0.4  # t <= 0.4: before the plateau that every width curve shows (chosen after seeing them)


def rising_spearman(ts: Sequence[float], values: Sequence[float], t_max: float = RISING_RANGE) -> float:
    ts, values = np.asarray(ts, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = ts <= t_max
    return spearman(ts[keep], values[keep]) if keep.sum() >= 3 else math.nan
