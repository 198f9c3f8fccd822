"""Concurrent writers and SIGTERM, repeated: issue 15's acceptance with real processes.

    python benchmarks/faults_stress.py [--reps 10] [--kills 10] [--out benchmarks/results/faults_stress.json]
    python benchmarks/faults_stress.py --api-only --reps 3 --out /tmp/api.json   # the Python API's races only

Scenarios, each repeated --reps times, the two commands started at the same moment:
- two trains into one --out (seeds 1 and 2): one is refused (exit 2, one `error:` line) and the
  folder holds one run (config.json, final.pt and best.pt of the same seed); never two successes;
- train --resume (to 60 steps) with calibrate on the same run: calibrate is refused or runs before
  or after, final.pt ends at step 60, and calibrate never rewrites it;
- two calibrates with different settings: one refused, or both kept (both replay tags stored);
- two samples into one --out (50 and 60 samples): samples.npz and diversity.json from one run.
The Python API takes the same locks (issue 29), each scenario also --reps times:
- two dmmd.train into one new folder, from two processes started together, and from two threads
  of one process: exactly one trains, the other is refused (RunFolderError naming the holder, or
  ConfigError "not empty" once the winner has written files); one training start in log.txt;
- dmmd.train(resume=True) while `dmmd train --resume` trains the run, and `dmmd train --resume`
  while dmmd.train(resume=True) trains it: the second writer is refused naming the first (the
  first is then stopped by SIGTERM); metrics.jsonl's steps never go backwards;
- dmmd.train(resume=True) and `dmmd train --resume` started together: one refused or one after
  the other, never both at once (the steps never go backwards).
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
# the same settings as the Python API's overrides
API_TINY = dict(TINY[i + 1].split("=", 1) for i in range(0, len(TINY), 2))
# a process that trains through the Python API: mode 'train', 'resume' or 'threads' (two threads, one
# folder); prints one JSON list of outcomes. A SIGTERM stops its training at a step (Interrupted).
API_CHILD = r"""
import json, sys, threading
import dmmd
from dmmd.runtime.signals import Interrupted
mode, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def one(resume):
    try:
        dmmd.train(None, out, overrides=overrides, resume=resume, progress=False)
        return {"ok": True}
    except Interrupted as stop:
        return {"ok": False, "type": "Interrupted", "message": str(stop)}
    except ValueError as err:
        return {"ok": False, "type": type(err).__name__, "message": str(err)}
if mode == "threads":
    results, barrier = [None, None], threading.Barrier(2)
    def run(i):
        barrier.wait()
        results[i] = one(False)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
else:
    results = [one(mode == "resume")]
print(json.dumps(results), flush=True)
"""


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


def api_launch(mode: str, out: Path, **overrides) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", API_CHILD, mode, str(out), json.dumps({**API_TINY, **overrides})],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def api_outcomes(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate()
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return [{"ok": False, "type": "crash", "message": err.strip().splitlines()[-1:]}]


def steps_forward(run: Path) -> bool:
    """metrics.jsonl's steps never go backwards (a resume drops the records after its checkpoint)."""
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return steps == sorted(steps)


def refused_by_lock(outcome: dict, holder: str) -> bool:
    message = outcome.get("message", "")
    return outcome.get("type") == "RunFolderError" and "is in use by pid " in message and holder in message


def one_api_winner(outcomes: list[dict], run: Path, tmp: Path) -> bool:
    """Exactly one trained; the other was refused by the lock, or as not empty once the winner wrote."""
    winners = [o for o in outcomes if o["ok"]]
    losers = [o for o in outcomes if not o["ok"]]
    refused = all(refused_by_lock(o, "dmmd.train (Python API)")
                  or (o.get("type") == "ConfigError" and "is not empty" in o.get("message", "")) for o in losers)
    starts = (run / "log.txt").read_text().count("training dmmd on")
    return len(winners) == 1 and len(losers) == 1 and refused and starts == 1 and steps_forward(run) \
        and not leftovers(tmp)


def two_api_processes(tmp: Path) -> dict:
    run = tmp / "run"
    procs = [api_launch("train", run, **{"train.steps": "30", "seed": str(s)}) for s in (1, 2)]
    outcomes = [o for p in procs for o in api_outcomes(p)]
    return {"codes": [o["type"] if not o["ok"] else "ok" for o in outcomes], "ok": one_api_winner(outcomes, run, tmp)}


def two_api_threads(tmp: Path) -> dict:
    run = tmp / "run"
    outcomes = api_outcomes(api_launch("threads", run, **{"train.steps": "30"}))
    return {"codes": [o["type"] if not o["ok"] else "ok" for o in outcomes], "ok": one_api_winner(outcomes, run, tmp)}


def wait_training(run: Path, proc: subprocess.Popen, above: int) -> bool:
    """Until the run's holder has logged a step past `above` (it holds the lock then)."""
    while last_step(run) <= above and proc.poll() is None:
        time.sleep(0.01)
    return proc.poll() is None and (run / ".lock").exists()


def api_resume_while_cli_trains(tmp: Path, base: Path) -> dict:
    run = tmp / "run"
    subprocess.run(["cp", "-r", str(base), str(run)], check=True)
    cli = launch("train", "--resume", str(run), "--set", "train.steps=100000", "--set", "train.log_every=1")
    busy = wait_training(run, cli, 30)
    outcome = api_outcomes(api_launch("resume", run, **{"train.steps": "60"}))[0]
    cli.send_signal(signal.SIGTERM)
    rc = cli.wait()
    ok = busy and refused_by_lock(outcome, "(dmmd train --resume)") and rc == 143 and steps_forward(run) \
        and not leftovers(tmp)
    return {"codes": [rc, outcome["type"] if not outcome["ok"] else "ok"], "ok": ok}


def cli_resume_while_api_trains(tmp: Path, base: Path) -> dict:
    run = tmp / "run"
    subprocess.run(["cp", "-r", str(base), str(run)], check=True)
    api = api_launch("resume", run, **{"train.steps": "100000", "train.log_every": "1"})
    busy = wait_training(run, api, 30)
    cli = launch("train", "--resume", str(run), "--set", "train.steps=60")
    rc, err = cli.wait(), cli.stderr.read()
    api.send_signal(signal.SIGTERM)
    outcome = api_outcomes(api)[0]
    ok = (busy and rc == 2 and one_error_line(err) and "dmmd.train resume=True (Python API)" in err
          and outcome.get("type") == "Interrupted" and steps_forward(run) and not leftovers(tmp))
    return {"codes": [outcome["type"] if not outcome["ok"] else "ok", rc], "ok": ok}


def api_and_cli_resume_together(tmp: Path, base: Path) -> dict:
    run = tmp / "run"
    subprocess.run(["cp", "-r", str(base), str(run)], check=True)
    api = api_launch("resume", run, **{"train.steps": "80"})
    cli = launch("train", "--resume", str(run), "--set", "train.steps=60")
    rc, err = cli.wait(), cli.stderr.read()
    outcome = api_outcomes(api)[0]
    refused = [x for x in (rc == 2, not outcome["ok"]) if x]
    named = (rc != 2 or "(Python API)" in err) and (outcome["ok"] or refused_by_lock(outcome, "dmmd train"))
    ok = len(refused) <= 1 and refused_ok([(rc, err)]) and named and steps_forward(run) and not leftovers(tmp)
    return {"codes": [outcome["type"] if not outcome["ok"] else "ok", rc], "ok": ok}


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
    parser.add_argument("--api-only", action="store_true", help="only the Python API's scenarios (no SIGTERM series)")
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
                     "two samples into one --out": lambda t: two_samples(t, base),
                     "API: two dmmd.train processes into one folder": two_api_processes,
                     "API: two dmmd.train threads into one folder": two_api_threads,
                     "API: dmmd.train resume while the CLI trains": lambda t: api_resume_while_cli_trains(t, base),
                     "API: CLI resume while dmmd.train trains": lambda t: cli_resume_while_api_trains(t, base),
                     "API: API and CLI resume together": lambda t: api_and_cli_resume_together(t, base)}
        if args.api_only:
            scenarios = {k: v for k, v in scenarios.items() if k.startswith("API")}
        for name, scenario in scenarios.items():
            reps = []
            for i in range(args.reps):
                tmp = root / f"{''.join(c for c in name if c.isalnum())[:40]}{i}"
                tmp.mkdir()
                t0 = time.time()
                reps.append({**scenario(tmp), "seconds": round(time.time() - t0, 1)})
            result[name] = {"reps": reps, "passed": sum(r["ok"] for r in reps)}
            print(f"{name}: {result[name]['passed']}/{args.reps} passed; exit codes "
                  f"{[r['codes'] for r in reps]}", flush=True)
        if not args.api_only:
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
        and result.get("sigterm then resume", {"ok": True})["ok"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"all passed: {result['all_passed']} ({result['seconds']} s) -> {args.out}")


if __name__ == "__main__":
    main()
