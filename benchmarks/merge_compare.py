"""Merge `dmmd compare` races run in separate processes (e.g. --methods dmmd and --methods fm at
once, one core each) into one compare.md / compare.json, as one process would have written them.

The races must share data, budget, points, NFEs and sample count; each method is taken from the
one file that scored it at every point (a race stopped after its first method still gives that
method). The verdicts, the view at equal sampling CPU and the gap at each point are recomputed.

    python benchmarks/merge_compare.py --out DIR RACE_A/compare.json RACE_B/compare.json

Writes DIR/compare.json, DIR/compare.md and DIR/metric_vs_nfe.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dmmd.apps.compare import plot_metric
from dmmd.apps.compare_tables import write_tables

SHARED = ("data", "budget_cpu_s", "points", "nfes", "num_samples", "latent")


def merge(results: list[dict]) -> dict:
    first = results[0]
    for r in results[1:]:
        differ = [k for k in SHARED if r.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"the races differ in {', '.join(differ)}: not one race")
    merged = {k: v for k, v in first.items() if k not in ("runs", "rows", "partial", "verdict", "equal_sampling_cpu")}
    merged.update(runs={}, rows=[], candidates={})
    for r in results:
        for method, steps in r["runs"].items():
            if len(steps) < len(first["points"]) or method in merged["runs"]:
                continue  # scored at some points only, or already taken from an earlier file
            merged["runs"][method] = steps
            merged["rows"] += [row for row in r["rows"] if row["method"] == method]
            merged["candidates"][method] = r["candidates"][method]
    if not merged["runs"]:
        raise SystemExit("no method was scored at every point of these races")
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("races", nargs="+", help="compare.json files")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    merged = merge([json.loads(Path(p).read_text()) for p in args.races])
    merged["merged_from"] = args.races
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = write_tables(out, merged)
    final = [r for r in result["rows"] if r["budget_point"] == max(result["points"])]
    plot_metric(out / "metric_vs_nfe.png", final, title=f"{result['data']}: {final[0]['metric_name']} against NFE "
                f"after {result['budget_cpu_s']:g} CPU-s of training per method")
    print((out / "compare.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
