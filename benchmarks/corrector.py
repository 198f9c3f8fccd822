"""DMMD as a corrector of flow matching, raced at equal sampling CPU against both plain samplers.

Two trained runs of one data set (e.g. `dmmd compare`'s OUT/dmmd and OUT/fm): the flow-matching
net predicts (Euler), the DMMD discriminator corrects (dmmd.methods.corrector), neither retrained.
Every sampler is scored the way `dmmd compare` scores (FD-digits / FD-fashion in the shipped
classifiers' features on held-out data; settings chosen on a training subset of the same size):

- flow matching: Euler and Heun at every NFE of --nfe;
- DMMD: its --nfe rule at every NFE of --nfe (the checkpoint's sampler, calibrated for each);
- predictor-corrector: Euler or Heun with S steps, K corrector steps after each, at every (S, K)
  of --pc-steps x --pc-corrector, each with every corrector size r of --snr (the best r chosen on
  the training subset, like the others' settings).

Sampling cost: CPU seconds per 1000 samples at one thread (time.process_time), measured on the
draw itself; calibration (DMMD's replay, the corrector's level means) is reported apart. The
table sets every predictor-corrector row beside each plain sampler's best row costing at most as
much.

    python benchmarks/corrector.py --dmmd RACE/dmmd --fm RACE/fm [--num-samples 1000]

Writes benchmarks/results/corrector_<data>.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from dmmd.apps.compare import score, selection_rows
from dmmd.data.datasets import load_dataset
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.corrector import fm_predictor_corrector, level_targets
from dmmd.methods.flow_matching import sample as fm_sample
from dmmd.methods.mmd_flow import ParticleNoise
from dmmd.methods.sample import calibrate, needs_calibration, sample, settings_for_nfe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _timed(fn):
    cpu = time.process_time()
    out = fn()
    return out, time.process_time() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dmmd", required=True, help="a trained DMMD run folder (linear kernel)")
    parser.add_argument("--fm", required=True, help="a flow-matching run folder on the same data")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nfe", default="5,10,20,40", help="NFE of the plain samplers")
    parser.add_argument("--pc-steps", default="5,10", help="Euler steps S of the predictor-corrector")
    parser.add_argument("--pc-corrector", default="1,2", help="corrector steps K after each predictor step")
    parser.add_argument("--snr", default="0.01,0.03,0.1,0.3", help="corrector sizes r (a step moves a coordinate "
                        "by r sigma_t on average)")
    parser.add_argument("--predictor", default="euler,heun", help="flow-matching predictor(s) of the PC sampler")
    parser.add_argument("--tag", default="")
    parser.add_argument("--note", default="", help="how the runs were made (printed under the command)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    cfg_d, disc, stats, payload = load_model(args.dmmd)
    cfg_f, net, _, _ = load_model(args.fm)
    if cfg_f.method != "fm" or cfg_d.method != "dmmd" or cfg_d.model.kernel != "linear":
        raise SystemExit("--dmmd needs a DMMD run with the linear kernel and --fm a flow-matching run")
    data = load_dataset(cfg_d.data, cfg_d.seed)
    shape = tuple(payload["data_shape"])
    process = build_process(cfg_d.process)
    select = selection_rows(data)
    n = args.num_samples
    z0 = ParticleNoise(args.seed, n, shape).prior(process)  # N(0, I): the same draws for every sampler
    rows = []

    def record(family, setting, nfe, z, cpu, extra=None):
        held = score(z, data)
        rows.append({"family": family, "setting": setting, "nfe": nfe, "metric": held["metric"],
                     "metric_name": held["metric_name"], "train_metric": score(z, data, select, diversity=False)["metric"],
                     "near_duplicates": held.get("near_duplicates"), "cpu_s_per_1000": 1000 * cpu / n, **(extra or {})})
        print(f"{family:>8} {setting:<22} NFE {nfe:>3}  {held['metric_name']} {held['metric']:.3g}  "
              f"{1000 * cpu / n:.2f} CPU-s/1000", flush=True)

    for nfe in ints(args.nfe):
        for method in ("euler", "heun"):
            z, cpu = _timed(lambda: fm_sample(net, z0, nfe, method))
            record("fm", method, nfe, z, cpu)
        c = copy.deepcopy(cfg_d)
        settings_for_nfe(c, nfe)
        calib = 0.0
        if needs_calibration(disc, c, stats):
            stats, calib = _timed(lambda: calibrate(disc, c, data.train, process, stats, flow_settings(c.sample)))
        z, cpu = _timed(lambda: sample(disc, c, stats, process, shape, n, args.seed))
        record("dmmd", "--nfe rule", nfe, z, cpu, {"calibration_cpu_s": calib})
    for steps in ints(args.pc_steps):
        targets, calib = _timed(lambda: level_targets(disc, data.train, process, steps))
        for pred in args.predictor.split(","):
            for k in ints(args.pc_corrector):
                for r in (float(v) for v in args.snr.split(",")):
                    z, cpu = _timed(lambda: fm_predictor_corrector(net, disc, z0, process, steps, targets, k, r,
                                                                   predictor=pred))
                    evals = steps if pred == "euler" else 2 * steps - 1
                    record("pc", f"{pred} S {steps}, K {k}, r {r:g}", evals + steps * k, z, cpu,
                           {"S": steps, "K": k, "r": r, "predictor": pred, "calibration_cpu_s": calib})
    for group in {(r["predictor"], r["S"], r["K"]) for r in rows if r["family"] == "pc"}:  # r chosen on training
        cands = [r for r in rows if r["family"] == "pc" and (r["predictor"], r["S"], r["K"]) == group]
        best = min(cands, key=lambda r: r["train_metric"])
        for r in cands:
            r["chosen"] = r is best
    for key in {(r["family"], r["nfe"]) for r in rows if r["family"] != "pc"}:
        cands = [r for r in rows if (r["family"], r["nfe"]) == key]
        best = min(cands, key=lambda r: r["train_metric"])
        for r in cands:
            r["chosen"] = r is best
    result = {"data": data.name, "dmmd": str(args.dmmd), "fm": str(args.fm), "num_samples": n, "seed": args.seed,
              "note": args.note, "command": "python benchmarks/corrector.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "rows": rows}
    name = f"corrector_{data.name}{args.tag}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    rows = [r for r in result["rows"] if r["chosen"]]
    name = rows[0]["metric_name"]
    lines = [f"# DMMD as a corrector of flow matching on {result['data']}", "",
             f"`{result['command']}`", ""] + ([result["note"], ""] if result.get("note") else []) + [
             f"{name} on held-out data, {result['num_samples']} samples, settings chosen on a training subset; "
             "sampling CPU-s per 1000 samples at one thread (calibration apart).", "",
             "| sampler | setting | NFE | " + name + " | near-dup | CPU-s / 1000 |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["family"], r["cpu_s_per_1000"])):
        lines.append(f"| {r['family']} | {r['setting']} | {r['nfe']} | {r['metric']:.3g} | "
                     f"{r['near_duplicates']:.3f} | {r['cpu_s_per_1000']:.2f} |")
    lines += ["", "At equal sampling CPU: each predictor-corrector row against the best plain row (chosen on the "
              "training subset) costing at most as much:", "",
              f"| PC setting | CPU-s / 1000 | PC {name} | best FM within | best DMMD within |", "|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["family"] == "pc"), key=lambda r: r["cpu_s_per_1000"]):
        cells = []
        for fam in ("fm", "dmmd"):
            within = [o for o in rows if o["family"] == fam and o["cpu_s_per_1000"] <= r["cpu_s_per_1000"]]
            best = min(within, key=lambda o: o["train_metric"]) if within else None
            cells.append("-" if best is None else f"{best['metric']:.3g} ({best['setting']}, NFE {best['nfe']})")
        lines.append(f"| {r['setting']} | {r['cpu_s_per_1000']:.2f} | {r['metric']:.3g} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
