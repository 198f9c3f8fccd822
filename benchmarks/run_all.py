"""Every cost benchmark with a target, in one command, and one table against the targets.

    python benchmarks/run_all.py [--quick]        (or: make bench)

Runs sampler_cost.py and train_cost.py (each writes its own JSON under benchmarks/results/), then
writes benchmarks/results/summary.md and summary.json: each target of the project's issue, the
figure measured in that run, and whether it holds. The quality benchmarks (toy_acceptance.py,
digits_acceptance.py, diversity.py, resume_kill.py) train models for minutes each and are run
one by one (their docstrings say how).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def run(script: str, out: Path, quick: bool) -> dict:
    command = [sys.executable, str(HERE / script), "--out", str(out)] + (["--quick"] if quick else [])
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def rows(sampler: dict, train: dict) -> list[list]:
    t, v = sampler["targets"], sampler["verdicts"]
    out = [["approx step / floor (forward + input-gradient backward)", f"<= {t['approx_over_floor_max']}",
            v["approx_over_floor"]["value"], v["approx_over_floor"]["verdict"]],
           ["exact linear step / approx step", f"<= {t['exact_over_approx_max']}",
            v["exact_over_approx"]["value"], v["exact_over_approx"]["verdict"]],
           ["approx cost vs particles 256-16384, log-log slope", f"{t['approx_slope_range'][0]}-{t['approx_slope_range'][1]}",
            v["approx_slope"]["value"], v["approx_slope"]["verdict"]]]
    for setup in train["setups"]:
        if "dmmd_nn1_over_ddpm_bare" in setup:
            out.append([f"DMMD step (N_n = 1) / DDPM step, {setup['setup']} (batch {setup['batch_size']})",
                        f"<= {train['target_dmmd_nn1_over_ddpm_max']}", setup["dmmd_nn1_over_ddpm_bare"],
                        setup["verdict_nn1"]])
            out.append([f"  same, train.gp_fraction = 0.25 (estimator change; not the default)", "-",
                        setup["dmmd_gp25_nn1_over_ddpm_bare"], "-"])
            out.append([f"  DMMD step at the preset's N_n = {setup['preset_num_levels']} / DDPM step", "-",
                        setup["dmmd_preset_over_ddpm_bare"], "-"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds, tiny sizes; verdicts not judged")
    args = parser.parse_args()
    started = time.time()
    suffix = "_quick" if args.quick else ""
    sampler = run("sampler_cost.py", RESULTS / f"sampler_cost{suffix}.json", args.quick)
    train = run("train_cost.py", RESULTS / f"train_cost{suffix}.json", args.quick)
    table = rows(sampler, train)
    lines = ["| benchmark | target | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {name} | {target} | {value:.3g} | {verdict} |" for name, target, value, verdict in table]
    text = (f"# Cost benchmarks against their targets\n\n{time.strftime('%Y-%m-%d')}, torch "
            f"{train['environment']['torch']}, {train['environment']['threads']} thread(s), "
            f"{'quick' if args.quick else 'full'} run, {time.time() - started:.0f} s.\n\n" + "\n".join(lines) + "\n")
    (RESULTS / f"summary{suffix}.md").write_text(text)
    (RESULTS / f"summary{suffix}.json").write_text(json.dumps(
        {"rows": [dict(zip(("benchmark", "target", "measured", "verdict"), r)) for r in table]}, indent=1) + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
