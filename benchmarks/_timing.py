"""Shared helpers of the cost benchmarks (sampler_cost.py, train_cost.py): interleaved timing,
paired ratios, log-log slopes, environment notes and markdown tables.

The measure is CPU time: time.process_time() of this process, with torch at one thread
(single_thread()). The machine these run on is shared: its wall clock swung 7-12x under other
users' load while the CPU seconds a computation takes moved far less (it still moves with cache
and memory-bandwidth contention). Wall-clock seconds of the same calls are recorded beside, for
reference only. Every comparison is made within one run: the variants are timed round-robin (the
order rotates every round), each after a warm-up, for at least MIN_ROUNDS rounds; a variant is
reported as min / median / max over rounds, a ratio as the median over rounds of the per-round
ratio of two variants timed seconds apart (a paired ratio) with its min / max, and every verdict
is taken on a median.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

MIN_ROUNDS = 5  # timed rounds of a full (not --quick) run


def single_thread() -> None:
    """One torch thread: CPU time then measures the computation, not threads spinning on each other."""
    torch.set_num_threads(1)


def _once(fn: Callable[[], object], inner: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call, over `inner` consecutive calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.process_time() - cpu) / inner, (time.perf_counter() - wall) / inner


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                min_time: float = 0.05, wall: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """CPU seconds per call of every variant, one list entry per round, variants timed round-robin.

    Each variant is warmed up (allocator, lazy init, caches) with `warmup` calls; the last one
    sets how many calls a measurement takes (at least min_time CPU seconds). warmup = 0: no
    warm-up, one call per measurement (calls of many seconds). wall, when given, receives the
    wall-clock seconds of the same measurements."""
    inner = {}
    for name, fn in variants.items():
        single = math.inf
        for _ in range(warmup):
            single, _ = _once(fn, 1)
        inner[name] = max(1, math.ceil(min_time / max(single, 1e-7)))
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    walls: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            cpu, w = _once(variants[name], inner[name])
            times[name].append(cpu)
            walls[name].append(w)
    if wall is not None:
        wall.update(walls)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> dict[str, float]:
    """{'min', 'median', 'max'} of a list of seconds or ratios."""
    return {"min": float(min(xs)), "median": median(xs), "max": float(max(xs))}


def paired(times: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    """min / median / max over rounds of times[num][r] / times[den][r]."""
    return spread([a / b for a, b in zip(times[num], times[den])])


def fmt_spread(s: dict[str, float], scale: float = 1.0) -> str:
    """'median (min-max)' for a table cell."""
    return f"{scale * s['median']:.3g} ({scale * s['min']:.3g}-{scale * s['max']:.3g})"


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
            "python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "loadavg": load,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform.processor() elsewhere): ratios measured
    on different CPUs differ (bf16 autocast, for one, made the mnist U-Net's DMMD step 1.6x faster
    than float32 on a CPU with native bf16 instructions and 9x slower on an AVX2-only one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
