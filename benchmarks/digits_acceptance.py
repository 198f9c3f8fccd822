"""Digits acceptance: diversity and class balance of the samplers on a trained digits run.

    python benchmarks/digits_acceptance.py --run runs/demo [--num-samples 1000]

Rows: the shipped default sampler, the exact sampler with the same noise, and both with the
noise turned off. Figures: near-duplicate share, distance to the nearest training digit over
held-out's, class shares from a logistic regression fitted on the training split, mean top-class
probability over held-out's. Writes RUN/digits_acceptance.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from dmmd.data.datasets import load_dataset
from dmmd.evaluation.report import sample_report
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.sample import calibrate, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    base, disc, stats, _ = load_model(args.run)
    data = load_dataset(base.data, base.seed)
    process = build_process(base.process)
    rows = []
    variants = [("default", {}), ("exact", {"sampler": "exact"}),
                ("default, no noise", {"inject": 0.0, "renoise": 0.0}),
                ("exact, no noise", {"sampler": "exact", "inject": 0.0, "renoise": 0.0}),
                ("approx (b) data_noised", {"reading": "data_noised"})]
    for name, change in variants:
        cfg = copy.deepcopy(base)
        for k, v in change.items():
            setattr(cfg.sample, k, v)
        started = time.time()
        if cfg.sample.sampler == "approx" and cfg.sample.reading == "replay":
            stats = calibrate(disc, cfg, data.train, process, stats, flow_settings(cfg.sample))
        z = sample(disc, cfg, stats, process, data.shape, args.num_samples, args.seed)
        rep = sample_report(z, data)
        c = rep["classes"]
        row = {"variant": name, "sampler": cfg.sample.sampler, "reading": cfg.sample.reading,
               "inject": cfg.sample.inject, "renoise": cfg.sample.renoise,
               "near_duplicates": rep["near_duplicate_share"], "nn_to_train_ratio": rep["nn_to_train_ratio"],
               "min_class": c["min_class_share"], "max_class": c["max_class_share"], "class_shares": c["class_shares"],
               "confidence": c["confidence"], "confidence_ratio": c["confidence"] / c["confidence_heldout"],
               "seconds": round(time.time() - started, 1)}
        row["pass"] = bool(row["near_duplicates"] <= 0.02 and 0.5 <= row["nn_to_train_ratio"] <= 1.6
                           and row["min_class"] >= 0.04 and row["max_class"] <= 0.18 and row["confidence_ratio"] >= 0.8)
        rows.append(row)
        print(json.dumps(row), flush=True)
    run = Path(args.run)
    (run / "digits_acceptance.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| variant | near-dup | NN-to-train / held-out | class shares | confidence (x held-out) | pass |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['near_duplicates']:.3f} | {r['nn_to_train_ratio']:.2f} | "
                     f"{r['min_class']:.1%}-{r['max_class']:.1%} | {r['confidence']:.2f} ({r['confidence_ratio']:.2f}) | "
                     f"{'yes' if r['pass'] else 'NO'} |")
    (run / "digits_acceptance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
