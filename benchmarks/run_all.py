"""Every cost benchmark with a target, in one command, and one table against the targets.

    python benchmarks/run_all.py [--quick]        (or: make bench)

Runs sampler_cost.py and train_cost.py (each writes its own JSON under benchmarks/results/), then
writes benchmarks/results/summary.md and summary.json: each target of the project's issues, the
figure measured in that run (CPU time at one thread: the median over at least 5 rounds, with
min-max), and whether it holds on the median. About 15-20 minutes on a 2-core CPU with native bf16
(12-19 min on 2026-12-02); 51 min on an AVX2-only one while the bf16 rows were timed there, which
train_cost.py now leaves out on such a CPU (--bf16 auto). The quality benchmarks (toy_acceptance.py,
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

from dmmd.runtime.checkpoint import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def run(script: str, out: Path, quick: bool) -> dict:
    command = [sys.executable, str(HERE / script), "--out", str(out)] + (["--quick"] if quick else [])
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def _cell(spread: dict) -> str:
    return f"{spread['median']:.3g} ({spread['min']:.3g}-{spread['max']:.3g})"


def rows(sampler: dict, train: dict) -> list[list]:
    """[benchmark, target, measured median (min-max over rounds), verdict on the median]."""
    t, v = sampler["targets"], sampler["verdicts"]
    ex, dd = sampler["exact_10k"], sampler["ddpm_sampling"]
    out = [["approx step / floor (forward + input-gradient backward), N = 1024", f"<= {t['approx_over_floor_max']}",
            f"{v['approx_over_floor']['value']:.3g}", v["approx_over_floor"]["verdict"]],
           ["exact linear step / approx step, N = 1024 (one chunk)", f"<= {t['exact_over_approx_max']}",
            f"{v['exact_over_approx']['value']:.3g}", v["exact_over_approx"]["verdict"]],
           [f"exact linear / approx (replay) sampler, N = {ex['n']} (chunk {ex['chunk_size']})",
            f"<= {t['exact_over_approx_10k_max']}", _cell(ex["exact_over_approx"]), v["exact_over_approx_10k"]["verdict"]],
           ["  same, the two-pass exact sampler it replaced", "-", _cell(ex["two_pass_over_approx"]), "-"],
           ["approx cost vs particles 256-16384, log-log slope", f"{t['approx_slope_range'][0]}-{t['approx_slope_range'][1]}",
            f"{v['approx_slope']['value']:.3g}", v["approx_slope"]["verdict"]],
           [f"DDPM sampling of {dd['num_samples']} digits at NFE {dd['nfe']}: CPU saved by batched noise (1 - new / old)",
            f">= {t['ddpm_noise_saving_min']}", _cell(dd["ddpm_saving"]), v["ddpm_noise_saving"]["verdict"]]]
    for setup in train["setups"]:
        for r in setup["rows"]:
            shipped = (f"N_n = {setup['preset_num_levels']}, gp_fraction {setup.get('preset_gp_fraction', 1.0)}, "
                       f"gp_every {setup.get('preset_gp_every', 1)}"
                       + (", gp_lazy reuse" if setup.get("preset_gp_lazy") == "reuse" else ""))
            label = (f"DMMD step / DDPM step, {setup['setup']} (batch {setup['batch_size']}): "
                     + (f"as shipped ({shipped})" if r["row"] == "as shipped" else r["row"]))
            target = setup["target_over_ddpm_max"]
            out.append([label, "-" if target is None else f"<= {target}", _cell(r["over_ddpm"]), r["verdict"]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds, tiny sizes; verdicts not judged")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the JSON files and summary.md")
    args = parser.parse_args()
    started = time.time()
    suffix = "_quick" if args.quick else ""
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    sampler = run("sampler_cost.py", results / f"sampler_cost{suffix}.json", args.quick)
    train = run("train_cost.py", results / f"train_cost{suffix}.json", args.quick)
    table = rows(sampler, train)
    lines = ["| benchmark | target | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {name} | {target} | {value} | {verdict} |" for name, target, value, verdict in table]
    text = (f"# Cost benchmarks against their targets\n\n{time.strftime('%Y-%m-%d')}, torch "
            f"{train['environment']['torch']}, {train['environment']['threads']} thread(s), "
            f"{'quick' if args.quick else 'full'} run, {time.time() - started:.0f} s wall, CPU "
            f"{train['environment'].get('cpu', 'unknown')} ({train['environment'].get('cpu_capability', '?')}).\n\n"
            "Measure: CPU time (time.process_time) at one thread, at least 5 rounds per variant, timed round-robin; "
            "'measured' is the median over rounds (min-max in brackets) and the verdict is on the median. "
            "DMMD / DDPM ratios divide by DDPM's train_step (the same bookkeeping); lazy regularisation "
            "(gp_every k) is one step with the penalty and k - 1 without, per round. Wall-clock figures, "
            "ratios to DDPM's bare step and every variant's seconds are in sampler_cost.json and "
            "train_cost.json.\n\n" + "\n".join(lines) + "\n"
            + ("" if train.get("bf16", {}).get("timed", True) else
               f"\nbf16 rows left out: {train['bf16']['why_not']}.\n"))
    atomic_write_text(results / f"summary{suffix}.md", text)
    atomic_write_text(results / f"summary{suffix}.json", json.dumps(
        {"rows": [dict(zip(("benchmark", "target", "measured", "verdict"), r)) for r in table]}, indent=1) + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
