"""A DMMD step that follows the trained model's scale: sample.step_norm = "gradient" against "fixed".

A fixed step z + eta grad moves particles by an amount that grows with the features' scale, which
grows with training: the `--nfe` rule's step, tuned on one run, overshoots on a longer-trained one
(digits at NFE 10). The gradient step moves a coordinate by r sigma_t in root mean square, the rms
measured on the exact run that the replay records (so the population-free sampler uses the same
scales and sample i still depends only on (seed, i)).

For each trained DMMD run given, at every NFE of --nfe: the fixed rule from the run's own settings
(what `dmmd sample --nfe N` does today) and the gradient rule for every base size r0 of --r0 (at the
run's T x N_s; the --nfe rule scales it). One r0 is chosen for all NFEs and runs by the mean
log FD-digits against a training subset the size of the held-out set, and reported on held-out
data, as `dmmd compare` chooses. With --fm RUN, flow matching's Euler and Heun at the same NFEs
are scored beside (the reference the issue measures against).

    python benchmarks/step_norm.py --run RUN [--run RUN2] [--fm FM_RUN] [--num-samples 1000]

Writes benchmarks/results/step_norm_<data>.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

from dmmd.apps.compare import score, selection_rows
from dmmd.data.datasets import load_dataset
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.flow_matching import sample as fm_sample
from dmmd.methods.mmd_flow import ParticleNoise
from dmmd.methods.sample import calibrate, needs_calibration, sample, settings_for_nfe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def fm_rows(run, nfes, num_samples: int, process, data, select) -> list[dict]:
    """Flow matching's Euler and Heun from a trained run at every NFE, from the same N(0, I) draws
    (seed 0): held-out and training-subset (`select`) metrics, as `dmmd compare` scores them."""
    _, net, _, payload = load_model(run)
    z0 = ParticleNoise(0, num_samples, tuple(payload["data_shape"])).prior(process)
    rows = []
    for nfe in nfes:
        for method in ("euler", "heun"):
            z = fm_sample(net, z0, nfe, method)
            rows.append({"nfe": nfe, "sampler": method, "metric": score(z, data)["metric"],
                         "train_metric": score(z, data, select, diversity=False)["metric"]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="a trained DMMD run (repeatable)")
    parser.add_argument("--fm", help="a flow-matching run on the same data, scored beside")
    parser.add_argument("--nfe", default="10,20,50,100")
    parser.add_argument("--r0", default="0.03,0.045,0.06,0.08,0.1", help="gradient step sizes r at the run's T x N_s")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--tag", default="")
    parser.add_argument("--note", default="", help="how the runs were made (printed under the command)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    nfes = [int(v) for v in args.nfe.split(",")]
    r0s = [float(v) for v in args.r0.split(",")]
    rows = []
    data = None
    for run in args.run:
        cfg, disc, stats, payload = load_model(run)
        if data is None:
            data = load_dataset(cfg.data, cfg.seed)
            select = selection_rows(data)
        shape, process = tuple(payload["data_shape"]), build_process(cfg.process)
        variants = [("fixed", cfg.sample.step_size)] + [("gradient", r) for r in r0s]
        for norm, size in variants:
            for nfe in nfes:
                c = copy.deepcopy(cfg)
                c.sample.step_norm, c.sample.step_size = norm, size
                settings_for_nfe(c, nfe)
                if needs_calibration(disc, c, stats):
                    stats = calibrate(disc, c, data.train, process, stats, flow_settings(c.sample))
                cpu = time.process_time()
                z = sample(disc, c, stats, process, shape, args.num_samples, 0)
                cpu = time.process_time() - cpu
                held = score(z, data)
                rows.append({"run": str(run), "norm": norm, "r0": size, "nfe": nfe, "step_size": c.sample.step_size,
                             "T": c.sample.num_levels, "Ns": c.sample.steps_per_level, "metric": held["metric"],
                             "metric_name": held["metric_name"], "near_duplicates": held.get("near_duplicates"),
                             "train_metric": score(z, data, select, diversity=False)["metric"],
                             "cpu_s_per_1000": 1000 * cpu / args.num_samples})
                print(f"{Path(run).name} {norm:>8} r0 {size:<6g} NFE {nfe:>3}: {held['metric']:.3g} "
                      f"(train {rows[-1]['train_metric']:.3g})", flush=True)
    fm = fm_rows(args.fm, nfes, args.num_samples, process, data, select) if args.fm else []
    def mean_log(r0):
        vals = [r["train_metric"] for r in rows if r["norm"] == "gradient" and r["r0"] == r0]
        return sum(math.log(v) if v > 0 and math.isfinite(v) else 50.0 for v in vals) / len(vals)
    chosen = min(r0s, key=mean_log)
    result = {"data": data.name, "runs": args.run, "fm": args.fm, "num_samples": args.num_samples, "nfes": nfes,
              "chosen_r0": chosen, "note": args.note, "command": "python benchmarks/step_norm.py " + " ".join(
                  sys.argv[1:] if argv is None else argv), "rows": rows, "fm_rows": fm}
    name = f"step_norm_{data.name}{args.tag}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    rows, nfes = result["rows"], result["nfes"]
    name = rows[0]["metric_name"]
    lines = [f"# DMMD step size: fixed against gradient-normalised, {result['data']}", "", f"`{result['command']}`",
             ""] + ([result["note"], ""] if result.get("note") else []) + [
             f"Held-out {name}, {result['num_samples']} samples per cell, seed 0; r0 chosen for every NFE and run at "
             f"once by the mean log {name} against a training subset: **r0 = {result['chosen_r0']:g}**.", "",
             "| run | step | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (2 + len(nfes)) + "|"]
    for run in result["runs"]:
        for norm, r0 in dict.fromkeys((r["norm"], r["r0"]) for r in rows if r["run"] == run):
            cells = [next(r for r in rows if (r["run"], r["norm"], r["r0"], r["nfe"]) == (run, norm, r0, n))
                     for n in nfes]
            label = f"{norm} {r0:g}" + (" (chosen)" if norm == "gradient" and r0 == result["chosen_r0"] else "")
            lines.append(f"| {'/'.join(Path(run).parts[-2:])} | {label} | " + " | ".join(f"{c['metric']:.3g}" for c in cells) + " |")
    if result["fm_rows"]:
        lines += ["", "Flow matching on the same data (its better sampler by the training subset):", "",
                  "| NFE | " + " | ".join(str(n) for n in nfes) + " |", "|---" * (1 + len(nfes)) + "|"]
        best = [min((r for r in result["fm_rows"] if r["nfe"] == n), key=lambda r: r["train_metric"]) for n in nfes]
        lines.append("| fm | " + " | ".join(f"{b['metric']:.3g} ({b['sampler']})" for b in best) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
