"""Shared helpers of the cost benchmarks (sampler_cost.py, train_cost.py): interleaved timing,
paired ratios, log-log slopes, environment notes and markdown tables.

The machine these run on is shared, so absolute times drift with the load. Every comparison is
therefore made within one run: the variants are timed round-robin (the order rotates every
round), each after a warm-up, and a ratio is the median over rounds of the per-round ratio of
two variants timed seconds apart (a paired ratio), reported next to the ratio of the medians.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def _once(fn: Callable[[], object], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def calibrate_inner(fn: Callable[[], object], min_time: float) -> int:
    """Calls per measurement so that one measurement lasts at least min_time seconds."""
    single = _once(fn, 1)
    return max(1, math.ceil(min_time / max(single, 1e-7)))


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                min_time: float = 0.05) -> dict[str, list[float]]:
    """Seconds per call of every variant, one list entry per round, variants timed round-robin."""
    for fn in variants.values():  # warm-up (allocator, lazy init, caches)
        for _ in range(warmup):
            fn()
    inner = {name: calibrate_inner(fn, min_time) for name, fn in variants.items()}
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_once(variants[name], inner[name]))
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of times[num][r] / times[den][r]."""
    return median([a / b for a, b in zip(times[num], times[den])])


def ratio_spread(times: dict[str, list[float]], num: str, den: str) -> tuple[float, float]:
    """(min, max) of the per-round ratios: how much the load moved them."""
    rs = [a / b for a, b in zip(times[num], times[den])]
    return float(min(rs)), float(max(rs))


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x (nan for fewer than two points)."""
    if len(xs) < 2:
        return float("nan")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def environment() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "machine": platform.machine(), "loadavg": load,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, lo: float | None = None, hi: float | None = None) -> str:
    ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    return "holds" if ok else "MISSED"
