"""Sweep sampler settings on a trained run and put accuracy and diversity side by side.

    python benchmarks/diversity.py --run runs/g8 [--num-samples 2000] [--quick]
    python benchmarks/diversity.py --run runs/demo --num-samples 1000

For each (sampler and reading, c_inj, c_re, eta, T x N_s) it samples with seed 0 and records:
8 Gaussians: near share, mode shares, distinct share, within-mode std ratio (pass/fail against
the issue-8 criteria); digits: classifier confidence against held-out, class share range,
near-duplicate share, distance to the nearest training digit over held-out's. Replay
trajectories (reading c) are made on the fly for each setting. Writes RUN/diversity_sweep.json
and RUN/diversity_sweep.md.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import torch

from dmmd.data.datasets import load_dataset
from dmmd.evaluation.report import eight_gaussians_scores, sample_report
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.sample import calibrate, sample


def settings_grid(quick: bool):
    samplers = [("exact", "-"), ("approx", "replay"), ("approx", "data_noised")]
    noises = [(0.0, 0.0), (0.1, 0.0), (0.3, 0.0), (0.0, 0.1), (0.0, 0.3)]
    etas = [0.1] if quick else [0.05, 0.1, 0.2]
    grids = [(10, 10)] if quick else [(10, 10), (20, 5), (5, 20)]
    return itertools.product(samplers, noises, etas, grids)


def scores(z, data):
    if data.name == "eight_gaussians":
        return eight_gaussians_scores(z)
    rep = sample_report(z, data)
    out = {"near_duplicates": rep["near_duplicate_share"], "nn_to_train_ratio": rep["nn_to_train_ratio"],
           "distinct": rep["distinct_share"]}
    if "classes" in rep:
        c = rep["classes"]
        out.update(confidence=c["confidence"], confidence_ratio=c["confidence"] / c["confidence_heldout"],
                   min_class=c["min_class_share"], max_class=c["max_class_share"])
        out["pass"] = bool(out["near_duplicates"] <= 0.02 and 0.5 <= out["nn_to_train_ratio"] <= 1.6
                           and out["min_class"] >= 0.04 and out["max_class"] <= 0.18 and out["confidence_ratio"] >= 0.8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="eta 0.1 and T x N_s = 10 x 10 only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    base, disc, stats, payload = load_model(args.run)
    data = load_dataset(base.data, base.seed)
    process = build_process(base.process)
    rows = []
    for (sampler, reading), (inject, renoise), eta, (levels, steps) in settings_grid(args.quick):
        cfg = copy.deepcopy(base)
        s = cfg.sample
        s.sampler, s.inject, s.renoise, s.step_size, s.num_levels, s.steps_per_level = sampler, inject, renoise, eta, levels, steps
        if reading != "-":
            s.reading = reading
        started = time.time()
        if reading == "replay" or stats.get("grid") != f"T={levels},grid={s.grid}":
            stats = calibrate(disc, cfg, data.train, process, stats, flow_settings(s))
        z = sample(disc, cfg, stats, process, data.shape, args.num_samples, seed=0)
        row = {"sampler": sampler, "reading": reading, "inject": inject, "renoise": renoise, "eta": eta,
               "T": levels, "Ns": steps, **scores(z, data), "seconds": round(time.time() - started, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    run = Path(args.run)
    (run / "diversity_sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    keys = [k for k in rows[0] if k not in ("seconds",)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    (run / "diversity_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
