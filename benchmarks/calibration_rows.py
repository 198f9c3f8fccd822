"""How many training rows DMMD's calibration needs: sample.calibration_rows against quality and CPU.

Calibration averages phi(x, t) over training rows at every sampler level (mu_data(t), and the
mean of data noised to t), then runs the replay. With all 60000 Fashion-MNIST rows it is about a
tenth of a 900 CPU-s training budget. For one trained run, at every NFE of --nfe (the --nfe rule's
T x N_s), each row count of --rows makes fresh statistics and a replay (timed: CPU seconds of this
process at one thread, --rounds times, min / median / max) and draws the same samples (seed 0),
scored on held-out data as `dmmd compare` scores them.

    python benchmarks/calibration_rows.py --run RUN [--rows 0,10000,5000] [--nfe 20,100]

Writes benchmarks/results/calibration_rows.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from dmmd.apps.compare import score
from dmmd.data.datasets import load_dataset
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.sample import calibrate, sample, settings_for_nfe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def markdown(result: dict) -> str:
    lines = [f"# DMMD calibration rows, {result['data']}", "", f"`{result['command']}`", "",
             *([result["note"], ""] if result.get("note") else []),
             f"Run: {result['run']}. Same network, same sampling seed (0), {result['num_samples']} samples per cell; "
             "calibration CPU-s at one thread (min / median / max over rounds), statistics and replay made fresh "
             "for each row count. Rows 0: every training row.", "",
             "| NFE | rows | calibration CPU-s | FD (held-out) |", "|---|---|---|---|"]
    for r in result["rows"]:
        cpu = r["calibration_cpu_s"]
        lines.append(f"| {r['nfe']} | {r['rows'] or 'all'} | {min(cpu):.1f} / {statistics.median(cpu):.1f} / "
                     f"{max(cpu):.1f} | {r['metric']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a trained DMMD run (linear kernel)")
    parser.add_argument("--rows", default="0,10000,5000", help="calibration_rows values (0 = all rows)")
    parser.add_argument("--nfe", default="20,100")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="timed calibrations per cell")
    parser.add_argument("--note", default="", help="how the run was made (printed under the command)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg, disc, _, payload = load_model(args.run)
    data = load_dataset(cfg.data, cfg.seed)
    process, shape = build_process(cfg.process), tuple(payload["data_shape"])
    rows = []
    for nfe in [int(v) for v in args.nfe.split(",")]:
        for count in [int(v) for v in args.rows.split(",")]:
            c = copy.deepcopy(cfg)
            settings_for_nfe(c, nfe)
            c.sample.calibration_rows = count
            cpu = []
            for _ in range(args.rounds):
                start = time.process_time()
                stats = calibrate(disc, c, data.train, process, None, flow_settings(c.sample))
                cpu.append(round(time.process_time() - start, 2))
            z = sample(disc, c, stats, process, shape, args.num_samples, 0)
            rows.append({"nfe": nfe, "rows": count, "calibration_cpu_s": cpu,
                         "metric": score(z, data, diversity=False)["metric"]})
            print(rows[-1], flush=True)
    result = {"data": cfg.data.name, "run": args.run, "note": args.note, "num_samples": args.num_samples, "rows": rows,
              "command": "python benchmarks/calibration_rows.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calibration_rows.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "calibration_rows.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
