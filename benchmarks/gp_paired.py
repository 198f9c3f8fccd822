"""Paired-by-seed comparison of gp_quality.py runs: merges the rows of several result files (runs
split over processes or sessions), then for each variant and NFE gives the mean FD with its seed
range, the issue-17 rule (the reference's mean plus the larger seed range of the two), the
per-seed differences from the reference and a two-sided paired t-test on them.

    python benchmarks/gp_paired.py RESULT.json [RESULT.json ...] [--reference nn1] [--out OUT.md]

A RESULT.json is gp_quality.py's output (a dict with "rows") or a bare list of its rows. A row
that appears twice (same variant, seed, NFE) is counted once, the later file winning.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gp_quality import verdicts  # noqa: E402  (the issue's rule, as gp_quality.py judges it)


def load_rows(paths) -> list[dict]:
    merged = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for r in data["rows"] if isinstance(data, dict) else data:
            merged[(r["variant"], r["seed"], r["nfe"])] = r
    return list(merged.values())


def table(rows: list[dict], reference: str) -> str:
    by: dict = {}
    for r in rows:
        by.setdefault((r["variant"], r["nfe"]), {})[r["seed"]] = r
    variants = [reference] + sorted({v for v, _ in by} - {reference})
    rule = {(x["variant"], x["nfe"]): x for x in verdicts(rows, variants, reference)}
    lines = ["| variant | NFE | steps | seeds | FD mean (min-max) | reference mean | allowed | rule | "
             "paired differences (by seed) | mean difference (paired t, two-sided p) | near-duplicates | NN ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for nfe in sorted({n for _, n in by}):
        ref = by.get((reference, nfe))
        if not ref:
            continue
        for v in variants:
            d = by.get((v, nfe))
            if not d:
                continue
            judged = rule[(v, nfe)]
            common = sorted(set(d) & set(ref))
            diffs = [d[s]["metric"] - ref[s]["metric"] for s in common]
            paired = "-"
            if v != reference and len(diffs) > 1:
                paired = f"{statistics.mean(diffs):+.2f} (p = {stats.ttest_1samp(diffs, 0.0).pvalue:.3f})"
            steps = sorted({d[s]["steps"] for s in d})
            lines.append(
                f"| {v} | {nfe} | {'/'.join(map(str, steps))} | {len(d)} | {judged['mean']:.1f} "
                f"({judged['min']:.1f}-{judged['max']:.1f}) | {judged['reference_mean']:.1f} | {judged['allowed']:.1f} | "
                f"{'worse' if judged['verdict'] == 'worse' else 'within'} | "
                + ("-" if v == reference else ", ".join(f"{s}: {x:+.2f}" for s, x in zip(common, diffs)))
                + f" | {paired} | {max(x['near_duplicates'] for x in d.values()):.3f} | "
                f"{min(x['nn_to_train_ratio'] for x in d.values()):.2f}-{max(x['nn_to_train_ratio'] for x in d.values()):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="gp_quality.py result files (or row lists)")
    p.add_argument("--reference", default="nn1")
    p.add_argument("--out", default="", help="also write the table here")
    args = p.parse_args(argv)
    text = table(load_rows(args.results), args.reference)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
