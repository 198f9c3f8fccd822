"""Does `dmmd sample --nfe N` give DMMD's best quality at N? The --nfe rule against per-NFE tuning.

For a trained DMMD run (default: train the digits preset into runs/bench_nfe_rule), at each NFE:
- the rule: `pipeline.settings_for_nfe` from the checkpoint's settings (what `--nfe N` does);
- tuning: a wide grid (T x N_s splits, travel per level eta N_s of 0.5-3, re-noise of the preset
  or 0.1), each setting scored by FD-digits against a training subset, the best one reported on
  held-out data, as `dmmd compare` does.
Target (issue 12): the rule's held-out FD within 1.25x of the tuned setting's at every NFE.

    python benchmarks/nfe_rule.py [--run RUN] [--num-samples 1000]

Writes benchmarks/results/nfe_rule.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def grid(nfe: int, renoise: float) -> list[dict]:
    from dmmd.methods.sample import dmmd_split

    splits = {dmmd_split(nfe)} | ({(nfe, 1)} if nfe <= 20 else set()) | ({(nfe // 5, 5)} if nfe >= 50 else set())
    return [{"num_levels": t, "steps_per_level": ns, "step_size": travel / ns, "renoise": re}
            for t, ns in sorted(splits) for travel in (0.5, 1.0, 1.5, 2.0, 3.0) for re in sorted({renoise, 0.1})]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(ROOT / "runs" / "bench_nfe_rule"), help="a trained DMMD run folder")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--nfe", default="10,20,50,100")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="sample.KEY=VALUE",
                        help="change the checkpoint's sample.* settings the rule starts from")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--reuse", metavar="JSON", help="take the grid's training-split scores from an earlier "
                        "result on the same run, and re-score only the chosen setting (and the rule) now")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from dmmd import config
    from dmmd.apps.compare import score, selection_rows
    from dmmd.data.datasets import load_dataset
    from dmmd.methods.build import build_process, flow_settings, load_model
    from dmmd.methods.sample import calibrate, needs_calibration, sample, settings_for_nfe
    from dmmd.training.loop import train

    run = Path(args.run)
    if not (run / "latest").is_file():
        cfg = config.load(ROOT / "configs" / "digits.toml", ["train.threads=1"])
        train(cfg, load_dataset(cfg.data).train, run, progress=False)
    cfg, model, stats, _ = load_model(run)
    for item in args.overrides:
        key, _, value = item.partition("=")
        config.set_value(cfg, key.strip(), value.strip())
    data = load_dataset(cfg.data, cfg.seed)
    process = build_process(cfg.process)
    selection = selection_rows(data)

    def evaluate(c):
        nonlocal stats
        if needs_calibration(model, c, stats):
            stats = calibrate(model, c, data.train, process, stats, flow_settings(c.sample))
        z = sample(model, c, stats, process, data.shape, args.num_samples, seed=0)
        return score(z, data)["metric"], score(z, data, selection)["metric"]

    earlier = {r["nfe"]: r["trials"] for r in json.loads(Path(args.reuse).read_text())["rows"]} if args.reuse else {}
    rows = []
    for nfe in (int(v) for v in args.nfe.split(",")):
        started = time.time()
        rule = copy.deepcopy(cfg)
        settings_for_nfe(rule, nfe)
        rule_held, rule_train = evaluate(rule)
        trials = []
        for change in ([] if nfe in earlier else grid(nfe, cfg.sample.renoise)):
            c = copy.deepcopy(cfg)
            for k, v in change.items():
                setattr(c.sample, k, v)
            held, train_metric = evaluate(c)
            trials.append({**change, "heldout": held, "train": train_metric})
        if nfe in earlier:  # the earlier grid's choice, scored again with this code's noise draws
            trials = earlier[nfe]
            best = dict(min(trials, key=lambda t: t["train"]))
            c = copy.deepcopy(cfg)
            for k in ("num_levels", "steps_per_level", "step_size", "renoise"):
                setattr(c.sample, k, best[k])
            best["heldout"], best["train"] = evaluate(c)
        else:
            best = min(trials, key=lambda t: t["train"])
        oracle = min(t["heldout"] for t in trials)
        row = {"nfe": nfe, "rule": {"num_levels": rule.sample.num_levels, "steps_per_level": rule.sample.steps_per_level,
                                    "step_size": rule.sample.step_size, "heldout": rule_held, "train": rule_train},
               "tuned": best, "ratio_rule_to_tuned": rule_held / best["heldout"],
               "best_heldout_any_setting": oracle, "trials": trials, "seconds": round(time.time() - started, 1)}
        rows.append(row)
        print(f"NFE {nfe}: rule {rule_held:.2f} (T {rule.sample.num_levels} x {rule.sample.steps_per_level}, eta "
              f"{rule.sample.step_size:.3g}); tuned {best['heldout']:.2f} ({best}); ratio {row['ratio_rule_to_tuned']:.2f}",
              file=sys.stderr)
    result = {"run": str(run), "overrides": args.overrides, "reused_grid": args.reuse, "config_sample": config.to_dict(cfg)["sample"], "num_samples": args.num_samples,
              "target": "rule within 1.25x of tuned (held-out FD-digits)",
              "pass": all(r["ratio_rule_to_tuned"] <= 1.25 for r in rows), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"nfe_rule{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| NFE | rule T x N_s, eta | rule FD | tuned setting | tuned FD | ratio | best held-out of grid |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        t, u = r["rule"], r["tuned"]
        lines.append(f"| {r['nfe']} | {t['num_levels']} x {t['steps_per_level']}, {t['step_size']:.3g} | {t['heldout']:.2f} | "
                     f"{u['num_levels']} x {u['steps_per_level']}, eta {u['step_size']:.3g}, re-noise {u['renoise']} | "
                     f"{u['heldout']:.2f} | {r['ratio_rule_to_tuned']:.2f} | {r['best_heldout_any_setting']:.2f} |")
    (RESULTS / f"nfe_rule{args.tag}.md").write_text("\n".join(lines) + f"\n\npass: {result['pass']}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
