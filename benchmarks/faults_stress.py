"""Concurrent writers and SIGTERM, repeated: issue 15's acceptance with real processes.

    python benchmarks/faults_stress.py [--reps 10] [--kills 10] [--out benchmarks/results/faults_stress.json]

Scenarios, each repeated --reps times, the two commands started at the same moment:
- two trains into one --out (seeds 1 and 2): one is refused (exit 2, one `error:` line) and the
  folder holds one run (config.json, final.pt and best.pt of the same seed); never two successes;
- train --resume (to 60 steps) with calibrate on the same run: calibrate is refused or runs before
  or after, final.pt ends at step 60, and calibrate never rewrites it;
- two calibrates with different settings: one refused, or both kept (both replay tags stored);
- two samples into one --out (50 and 60 samples): samples.npz and diversity.json from one run.
Then SIGTERM at --kills random steps of one training run, each followed by --resume: every stop
exits 143 with one line naming the resume command and leaves no temporary file; the final weights
must equal an uninterrupted run's bit for bit. The test suite keeps 1-2 of each
(tests/test_faults.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TINY = ["--set", "data.name=eight_gaussians", "--set", "data.num_points=500", "--set", "model.width=16",
        "--set", "model.feature_dim=8", "--set", "model.time_dim=8", "--set", "model.depth=1",
        "--set", "train.batch_size=16", "--set", "sample.num_levels=3", "--set", "sample.steps_per_level=2",
        "--set", "sample.replay_particles=50", "--set", "train.threads=1", "--set", "train.checkpoint_every=10"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dmmd", *argv, "--no-progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def together(*commands) -> list[tuple[int, str]]:
    procs = [launch(*c) for c in commands]
    return [(p.wait(), p.stderr.read()) for p in procs]


def one_error_line(stderr: str) -> bool:
    lines = stderr.strip().splitlines()
    return "Traceback" not in stderr and sum(line.startswith("error: ") for line in lines) == 1


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith((".tmp", ".lock"))]


def refused_ok(results) -> bool:
    return all(rc == 0 or (rc == 2 and one_error_line(err)) for rc, err in results)


def two_trains(tmp: Path) -> dict:
    run = tmp / "run"
    results = together(*(["train", *TINY, "--set", "train.steps=30", "--seed", str(s), "--out", str(run)] for s in (1, 2)))
    codes = sorted(rc for rc, _ in results)
    seeds = {json.loads((run / "config.json").read_text())["seed"]}
    for name in ("final.pt", "best.pt"):
        seeds.add(json.loads(torch.load(run / "checkpoints" / name, weights_only=True)["config"])["seed"])
    return {"codes": codes, "ok": codes == [0, 2] and refused_ok(results) and len(seeds) == 1 and not leftovers(tmp)}


def train_and_calibrate(tmp: Path, base: Path) -> dict:
    run = tmp / "run"
    subprocess.run(["cp", "-r", str(base), str(run)], check=True)
    results = together(["train", "--resume", str(run), "--set", "train.steps=60"],
                       ["calibrate", "--checkpoint", str(run), "--set", "sample.num_levels=4"])
    step = torch.load(run / "checkpoints" / "final.pt", weights_only=True)["step"]
    trained = results[0][0] == 0 and step == 60  # or refused while calibrate held the run: still at step 30
    refused = results[0][0] == 2 and step == 30 and results[1][0] == 0
    return {"codes": [rc for rc, _ in results], "final_step": step,
            "ok": (trained or refused) and refused_ok(results) and not leftovers(tmp)}


def two_calibrates(tmp: Path, base: Path) -> dict:
    run = tmp / "run"
    subprocess.run(["cp", "-r", str(base), str(run)], check=True)
    levels = (4, 5)
    results = together(*(["calibrate", "--checkpoint", str(run), "--set", f"sample.num_levels={t}"] for t in levels))
    from dmmd.methods.build import load_model

    stored = load_model(run)[2].get("replay", {})
    kept = [any(tag.startswith(f"T={t},") for tag in stored) for t in levels]
    ok = refused_ok(results) and all(k for (rc, _), k in zip(results, kept) if rc == 0) and not leftovers(tmp)
    return {"codes": [rc for rc, _ in results], "kept": kept, "ok": ok}


def two_samples(tmp: Path, base: Path) -> dict:
    out = tmp / "s"
    results = together(*(["sample", "--checkpoint", str(base), "--num-samples", str(n), "--seed", str(n), "--out", str(out)]
                         for n in (50, 60)))
    n = len(np.load(out / "samples.npz")["samples"])
    report = json.loads((out / "diversity.json").read_text())
    ok = refused_ok(results) and report["num_samples"] == n and not leftovers(tmp)
    return {"codes": [rc for rc, _ in results], "ok": ok and any(rc == 0 for rc, _ in results)}


def last_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().strip().splitlines()
        return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def weights(path: Path) -> dict:
    p = torch.load(path, weights_only=True)
    return {**{f"model.{k}": v for k, v in p["model"].items()}, **{f"ema.{k}": v for k, v in p["ema"].items()},
            **{f"opt.{i}.{k}": v for i, s in p["optimizer"]["state"].items() for k, v in s.items()}}


def sigterm_moments(tmp: Path, kills: int, steps: int, seed: int) -> dict:
    argv = [*TINY, "--set", f"train.steps={steps}", "--set", "train.log_every=1", "--set", "train.keep_checkpoints=1"]
    reference, run = tmp / "reference", tmp / "killed"
    assert launch("train", *argv, "--out", str(reference)).wait() == 0
    targets = sorted(np.random.default_rng(seed).choice(np.arange(2, steps - 2), kills, replace=False).tolist())
    proc, stops = launch("train", *argv, "--out", str(run)), []
    for target in targets:
        while last_step(run) < target and proc.poll() is None:
            time.sleep(0.005)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGTERM)
        rc, err = proc.wait(), proc.stderr.read().strip().splitlines()
        message = err[-1] if err else ""
        stops.append({"target": target, "rc": rc, "line": message, "temp_files": leftovers(run),
                      "ok": rc == 143 and message.startswith("stopped by SIGTERM") and "--resume" in message
                      and not leftovers(run)})
        proc = launch("train", "--resume", str(run))
    rc = proc.wait()
    a, b = weights(reference / "checkpoints" / "final.pt"), weights(run / "checkpoints" / "final.pt")
    identical = rc == 0 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return {"stops": stops, "final_rc": rc, "bit_identical": identical,
            "ok": identical and len(stops) == kills and all(s["ok"] for s in stops)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/faults_stress.json")
    args = parser.parse_args()
    started = time.time()
    result = {}
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        base = root / "base"
        assert launch("train", *TINY, "--set", "train.steps=30", "--out", str(base)).wait() == 0
        scenarios = {"two trains into one folder": lambda t: two_trains(t),
                     "train and calibrate": lambda t: train_and_calibrate(t, base),
                     "two calibrates": lambda t: two_calibrates(t, base),
                     "two samples into one --out": lambda t: two_samples(t, base)}
        for name, scenario in scenarios.items():
            reps = []
            for i in range(args.reps):
                tmp = root / f"{name.split()[1]}{i}"
                tmp.mkdir()
                t0 = time.time()
                reps.append({**scenario(tmp), "seconds": round(time.time() - t0, 1)})
            result[name] = {"reps": reps, "passed": sum(r["ok"] for r in reps)}
            print(f"{name}: {result[name]['passed']}/{args.reps} passed; exit codes "
                  f"{[r['codes'] for r in reps]}", flush=True)
        (root / "sig").mkdir()
        t0 = time.time()
        result["sigterm then resume"] = {**sigterm_moments(root / "sig", args.kills, args.steps, args.seed),
                                         "seconds": round(time.time() - t0, 1)}
        sig = result["sigterm then resume"]
        print(f"sigterm then resume: {sum(s['ok'] for s in sig['stops'])}/{args.kills} clean stops at steps "
              f"{[s['line'].split('at step ')[-1].split()[0] if 'at step' in s['line'] else s['rc'] for s in sig['stops']]}; "
              f"bit-identical: {sig['bit_identical']}", flush=True)
    result["seconds"] = round(time.time() - started, 1)
    result["all_passed"] = all(v["passed"] == args.reps for k, v in result.items() if isinstance(v, dict) and "reps" in v) \
        and result["sigterm then resume"]["ok"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"all passed: {result['all_passed']} ({result['seconds']} s) -> {args.out}")


if __name__ == "__main__":
    main()
