"""8 Gaussians acceptance: accuracy and diversity of both samplers over seeds, from a trained run.

    python benchmarks/toy_acceptance.py --run runs/g8 [--num-samples 2000] [--seeds 0 1 2]

Writes RUN/acceptance.json and RUN/acceptance.md: for each sampler (shipped defaults) and seed,
the share within 3 data std of a mode centre, each mode's share, the share of distinct points at
a thousandth of the radius, and the within-mode std against the data's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dmmd.evaluation.report import eight_gaussians_scores
from dmmd.methods.build import build_process, load_model
from dmmd.methods.sample import sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["exact", "approx"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg, disc, stats, payload = load_model(args.run)
    process = build_process(cfg.process)
    rows = []
    for sampler in args.samplers:
        cfg.sample.sampler = sampler
        for seed in args.seeds:
            started = time.time()
            z = sample(disc, cfg, stats, process, (2,), args.num_samples, seed)
            row = {"sampler": sampler, "seed": seed, **eight_gaussians_scores(z),
                   "seconds": round(time.time() - started, 2)}
            rows.append(row)
            print(row, flush=True)
    run = Path(args.run)
    (run / "acceptance.json").write_text(json.dumps({"settings": cfg.sample.__dict__, "rows": rows}, indent=2))
    lines = ["| sampler | seed | near (3 std) | mode share min-max | distinct | within-mode std / data | pass |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['seed']} | {r['near']:.3f} | {r['min_mode']:.3f}-{r['max_mode']:.3f} | "
                     f"{r['distinct']:.3f} | {r['std_ratio']:.2f} | {'yes' if r['pass'] else 'NO'} |")
    (run / "acceptance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
