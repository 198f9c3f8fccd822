"""The DMMD sampler's time grid and steps per level at a fixed NFE, on a trained run.

At each NFE the same number of network evaluations is split differently between noise levels and
steps per level (T x N_s = NFE), on each level spacing of --grids ('uniform' in t, 'log_sigma'
evenly in the log noise scale), and with the step size the `--nfe` rule gives for that split times
each factor of --steps. Every cell is scored on a training subset the size of the held-out set
(selection) and on held-out data (report); the best cell per NFE by the training subset is the
tuned one, as `dmmd compare` chooses. With --fm RUN, flow matching's Euler and Heun are scored
beside at the same NFEs.

    python benchmarks/sampler_grid.py --run RUN [--fm FM_RUN] [--splits "20:20x1,10x2;100:10x10,20x5"]

Writes benchmarks/results/sampler_grid_<data><tag>.json and .md.
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
from dmmd.methods.sample import calibrate, needs_calibration, reference_rows, sample, settings_for_nfe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from step_norm import fm_rows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def parse_splits(text: str) -> dict[int, list[tuple[int, int]]]:
    """'20:20x1,10x2;100:10x10' -> {20: [(20, 1), (10, 2)], 100: [(10, 10)]}; each T x N_s must equal the NFE."""
    out = {}
    for part in text.split(";"):
        nfe, splits = part.split(":")
        pairs = [tuple(int(v) for v in s.split("x")) for s in splits.split(",")]
        if any(t * n != int(nfe) for t, n in pairs):
            raise SystemExit(f"--splits: every T x N_s must equal its NFE ({part})")
        out[int(nfe)] = pairs
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a trained DMMD run")
    parser.add_argument("--fm", help="a flow-matching run on the same data, scored beside")
    parser.add_argument("--splits", default="20:20x1,10x2,5x4;100:10x10,20x5,50x2")
    parser.add_argument("--grids", default="uniform,log_sigma")
    parser.add_argument("--steps", default="1,2", help="factors on the --nfe rule's step size")
    parser.add_argument("--cells", help="only these cells, e.g. 'uniform:10x2:0.5,log_snr:10x10:2' (grid:TxN_s:factor)")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--tag", default="")
    parser.add_argument("--note", default="", help="how the run was made (printed under the command)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    splits, grids = parse_splits(args.splits), args.grids.split(",")
    factors = [float(v) for v in args.steps.split(",")]
    cfg, disc, stats, payload = load_model(args.run)
    data = load_dataset(cfg.data, cfg.seed)
    select = selection_rows(data)
    shape, process = tuple(payload["data_shape"]), build_process(cfg.process)
    rows = []
    for nfe, pairs in splits.items():
        for grid in grids:
            for levels, steps in pairs:
                for factor in factors:
                    if args.cells and f"{grid}:{levels}x{steps}:{factor:g}" not in args.cells.split(","):
                        continue
                    c = copy.deepcopy(cfg)
                    c.sample.grid = grid
                    settings_for_nfe(c, nfe, split=(levels, steps))
                    c.sample.step_size *= factor
                    cpu = time.process_time()
                    if needs_calibration(disc, c, stats):
                        stats = calibrate(disc, c, data.train, process, stats, flow_settings(c.sample))
                    replay = time.process_time() - cpu
                    cpu = time.process_time()
                    z = sample(disc, c, stats, process, shape, args.num_samples, 0, reference=reference_rows(c, data.train))
                    cpu = time.process_time() - cpu
                    held = score(z, data)
                    rows.append({"nfe": nfe, "grid": grid, "T": levels, "Ns": steps, "factor": factor,
                                 "step_size": c.sample.step_size, "metric": held["metric"],
                                 "metric_name": held["metric_name"], "near_duplicates": held.get("near_duplicates"),
                                 "train_metric": score(z, data, select, diversity=False)["metric"],
                                 "cpu_s_per_1000": 1000 * cpu / args.num_samples, "replay_cpu_s": replay})
                    print(f"NFE {nfe:>3} {grid:>9} {levels:>3} x {steps:<3} step x{factor:g}: "
                          f"{held['metric']:.4g} (train {rows[-1]['train_metric']:.4g})", flush=True)
                    write(args, data, cfg, rows, [], partial=True)
    fm = fm_rows(args.fm, list(splits), args.num_samples, process, data, select) if args.fm else []
    print(markdown(write(args, data, cfg, rows, fm, partial=False)))
    return 0


def write(args, data, cfg, rows: list[dict], fm: list[dict], partial: bool) -> dict:
    """The result so far to benchmarks/results/sampler_grid_<data><tag>.json and .md (after every cell)."""
    result = {"data": data.name, "run": args.run, "fm": args.fm, "num_samples": args.num_samples,
              "run_sample_config": {k: getattr(cfg.sample, k) for k in ("grid", "num_levels", "steps_per_level",
                                                                        "step_size", "step_norm")},
              "note": args.note, "rows": rows, "fm_rows": fm, "partial": partial,
              "command": "python benchmarks/sampler_grid.py " + " ".join(sys.argv[1:])}
    name = f"sampler_grid_{data.name}{args.tag}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    rows = result["rows"]
    name = rows[0]["metric_name"]
    run = result["run_sample_config"]
    lines = [f"# DMMD sampler: time grid and steps per level at fixed NFE, {result['data']}", "",
             f"`{result['command']}`", ""] + ([result["note"], ""] if result.get("note") else []) + [
             f"The run's own sampler: {run['num_levels']} x {run['steps_per_level']}, grid {run['grid']}, step "
             f"{run['step_size']:g} ({run['step_norm']}). Held-out {name}, {result['num_samples']} samples per cell, "
             "sample seed 0; the step is the `--nfe` rule's for each split times the factor. '*' marks the cell "
             "chosen per NFE on a training subset the size of the held-out set.", "",
             "| NFE | grid | T x N_s | step factor | step | held-out | train subset | near-dup | CPU s / 1000 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for nfe in dict.fromkeys(r["nfe"] for r in rows):
        cells = [r for r in rows if r["nfe"] == nfe]
        best = min(cells, key=lambda r: r["train_metric"])
        for r in cells:
            lines.append(f"| {nfe} | {r['grid']} | {r['T']} x {r['Ns']} | {r['factor']:g} | {r['step_size']:.3g} | "
                         f"{r['metric']:.4g}{' *' if r is best else ''} | {r['train_metric']:.4g} | "
                         f"{r['near_duplicates'] if r['near_duplicates'] is None else round(r['near_duplicates'], 3)} | "
                         f"{r['cpu_s_per_1000']:.3g} |")
    if result["fm_rows"]:
        lines += ["", "Flow matching on the same data (its better sampler by the training subset, held-out):", "",
                  "| NFE | fm |", "|---|---|"]
        for nfe in dict.fromkeys(r["nfe"] for r in result["fm_rows"]):
            b = min((r for r in result["fm_rows"] if r["nfe"] == nfe), key=lambda r: r["train_metric"])
            lines.append(f"| {nfe} | {b['metric']:.4g} ({b['sampler']}) |")
    if result.get("partial"):
        lines += ["", "(partial: the sweep is still running)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
