"""The tables of `dmmd compare`: compare.md and compare.json from a race's rows (docs/compare.md).

Pure functions of the result dict that `dmmd.apps.compare.run_compare` builds: the verdict per NFE,
the view at equal sampling CPU, and DMMD's gap at each point of the budget (does it narrow with
training?). A long race rewrites both files after every method's every point ("partial": true).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dmmd.runtime.checkpoint import atomic_write_text


def write_tables(out: Path, result: dict) -> dict:
    """Add the verdicts to `result` and write OUT/compare.json and OUT/compare.md (atomically)."""
    result["verdict"] = verdict_lines(result)
    result["equal_sampling_cpu"] = equal_sampling_cpu(result)
    atomic_write_text(out / "compare.json", json.dumps(result, indent=2, default=float) + "\n")
    atomic_write_text(out / "compare.md", markdown(result))
    return result


def markdown(result: dict) -> str:
    rows, last = result["rows"], max(result["points"])
    name = rows[0]["metric_name"] if rows else "metric"
    nfes = result["nfes"]

    def cell(method, point, nfe, key):
        r = next((r for r in rows if r["method"] == method and r["budget_point"] == point and r["nfe"] == nfe
                  and r[key]), None)
        return "-" if r is None else f"{r['metric']:.3g}" + (f" ({r['setting']})" if key == "chosen" else "")

    methods = list(dict.fromkeys(r["method"] for r in rows))
    head = "| method | sampler | CPU s of training (steps) | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    sep = "|---" * (3 + len(nfes)) + "|"
    lines = [f"# DMMD vs DDPM vs flow matching on {result['data']} (same backbone, equal CPU budget)", "",
             f"{name} on held-out data, {result['num_samples']} samples per cell; budget {result['budget_cpu_s']:.0f} "
             f"CPU-s per method (one thread), scored at {', '.join(f'{p:.0%}' for p in result['points'])} of it. "
             f"'tuned': the best of each method's {len(next(iter(result['candidates'].values())))} sampler settings "
             "by the same metric against the training split."]
    if result.get("latent"):
        floor = result["reconstruction_floor"]
        value = floor.get("fd_fashion", floor.get("fd_digits", floor["fd"]))
        lines += ["", f"Every method in the latents of {result['latent']} (encoding and the autoencoder's training "
                  f"outside the budget); samples decoded and scored in pixels. Reconstruction floor "
                  f"({floor['num_images']} held-out images through the autoencoder): {name} {value:.3g}."]
    lines += ["", head, sep]
    for m in methods:
        for point in result["points"]:
            run = next((s for s in result["runs"][m] if s["point"] == point), None)
            for key, label in () if run is None else (("default", "default"), ("chosen", "tuned")):
                lines.append(f"| {m} | {label} | {run['train_cpu_s']:.0f} ({run['step']}) | "
                             + " | ".join(cell(m, point, n, key) for n in nfes) + " |")
    if result.get("partial"):
        lines += ["", "**Partial: the race is still running; this file is rewritten as each method reaches each "
                  "point.** The verdicts below compare the methods scored so far at the largest point reached."]
    lines += ["", "Verdict at the full budget (tuned samplers, held-out data):", ""]
    lines += [f"- {v}" for v in verdict_lines(result)]
    gaps = gap_by_point(result)
    if len(result["points"]) > 1 and gaps:
        lines += ["", "DMMD's tuned metric over the best other method's, at each point of the budget (above 1: "
                  "DMMD behind); does the gap narrow with training?", "",
                  "| CPU-s of training | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (1 + len(nfes)) + "|"]
        for point, ratios in gaps:
            lines.append(f"| {point * result['budget_cpu_s']:.0f} | "
                         + " | ".join("-" if ratios.get(n) is None else f"{ratios[n]:.2f}" for n in nfes) + " |")
    view = equal_sampling_cpu(result)
    if view and view[0]["others"]:
        others = list(view[0]["others"])
        lines += ["", "At equal sampling CPU (full budget, tuned samplers): each other method's best NFE whose "
                  "sampling CPU per 1000 samples (one thread) is at most DMMD's; '!' marks a method with no NFE "
                  "that cheap (its cheapest shown).", "",
                  "| DMMD NFE | DMMD CPU-s / 1000 | dmmd | " + " | ".join(others) + " |",
                  "|---" * (3 + len(others)) + "|"]
        for e in view:
            cells = [f"{o['metric']:.3g} (NFE {o['nfe']}, {o['cpu_s_per_1000']:.2g} s){'' if o['within'] else ' !'}"
                     for o in (e["others"][m] for m in others)]
            lines.append(f"| {e['nfe']} | {e['dmmd_cpu_s_per_1000']:.2g} | {e['dmmd']:.3g} | " + " | ".join(cells) + " |")
    lines += ["", f"Every setting at {last:.0%} of the budget (held-out {name}, near-duplicate share, "
              "nearest-training distance over held-out's, sampling CPU s per 1000 samples at one thread):", "",
              "| method | setting | NFE (used) | T x N_s | eta | metric | train-split metric | near-dup | NN-to-train | CPU s / 1000 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["budget_point"] != last:
            continue
        eta = f"{r['eta']:.3g}" if isinstance(r["eta"], float) else r["eta"]
        lines.append(f"| {r['method']} | {r['setting']}{' *' if r['chosen'] else ''} | {r['nfe']} ({r['nfe_used']}) | "
                     f"{r['T']} x {r['Ns']} | {eta} | {r['metric']:.4g} | {r['train_metric']:.4g} | "
                     f"{r.get('near_duplicates', float('nan')):.3f} | {r.get('nn_to_train_ratio', float('nan')):.2f} | "
                     f"{1000 * r['cpu_seconds_per_sample']:.3g} |")
    return "\n".join(lines) + "\n\n(* = chosen on the training split)\n"


def gap_by_point(result: dict) -> list[tuple[float, dict]]:
    """For each point of the budget: NFE -> DMMD's tuned metric over the best other method's tuned metric."""
    out = []
    for point in result["points"]:
        rows = _tuned(result["rows"], point)
        ratios = {}
        for nfe in result["nfes"]:
            mine = [r["metric"] for r in rows if r["nfe"] == nfe and r["method"] == "dmmd"]
            theirs = [r["metric"] for r in rows if r["nfe"] == nfe and r["method"] != "dmmd"]
            if mine and theirs and min(theirs) > 0:
                ratios[nfe] = mine[0] / min(theirs)
        if ratios:
            out.append((point, ratios))
    return out


def _tuned(rows: list[dict], point: float) -> list[dict]:
    return [r for r in rows if r["budget_point"] == point and r["chosen"]]


def verdict_lines(result: dict) -> list[str]:
    """One line per NFE at the full budget: which method's tuned sampler has the lower metric, by what factor."""
    rows = _tuned(result["rows"], max(result["points"]))
    lines = []
    for nfe in result["nfes"]:
        ranked = sorted((r for r in rows if r["nfe"] == nfe and math.isfinite(r["metric"])), key=lambda r: r["metric"])
        if len(ranked) < 2:
            continue
        best, rest = ranked[0], ranked[1:]
        others = "; ".join(f"{r['method']} {r['metric']:.3g}" for r in rest[1:])
        lines.append(f"NFE {nfe}: lower {best['metric_name']}: {best['method']} ({best['metric']:.3g}) by "
                     f"{rest[0]['metric'] / best['metric']:.2f}x over {rest[0]['method']} ({rest[0]['metric']:.3g})"
                     + (f"; {others}" if others else ""))
    return lines


def equal_sampling_cpu(result: dict) -> list[dict]:
    """At the full budget, for each NFE of DMMD's tuned sampler: every other method's best tuned row
    whose sampling CPU per 1000 samples is at most DMMD's (its cheapest row, marked, when none is)."""
    rows = _tuned(result["rows"], max(result["points"]))
    out = []
    for d in (r for r in rows if r["method"] == "dmmd"):
        cost = d["sampling_cpu_s_per_1000"]
        entry = {"nfe": d["nfe"], "dmmd_cpu_s_per_1000": cost, "dmmd": d["metric"], "others": {}}
        for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "dmmd"):
            mine = [r for r in rows if r["method"] == m]
            within = [r for r in mine if r["sampling_cpu_s_per_1000"] <= cost]
            pick = min(within, key=lambda r: r["metric"]) if within else min(mine, key=lambda r: r["sampling_cpu_s_per_1000"])
            entry["others"][m] = {"nfe": pick["nfe"], "metric": pick["metric"], "within": bool(within),
                                  "cpu_s_per_1000": pick["sampling_cpu_s_per_1000"]}
        out.append(entry)
    return out
