"""Crash safety: kill training with SIGKILL at many random steps, resume each time, and compare the
final weights with an uninterrupted run (bit-identical expected on CPU).

    python benchmarks/resume_kill.py [--kills 20] [--steps 120] [--out benchmarks/results/resume_kill.json]

The test suite does the same with 5 kills (tests/test_resume.py). Each kill lands wherever the
process is when the metrics file first shows the target step: inside a step, a log write or a
checkpoint write (checkpoints are written every step here, so kills often hit a write).
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

ARGS = ["--set", "data.name=eight_gaussians", "--set", "data.num_points=500", "--set", "model.width=16",
        "--set", "model.feature_dim=8", "--set", "model.time_dim=8", "--set", "model.depth=1",
        "--set", "train.batch_size=16", "--set", "train.checkpoint_every=1", "--set", "train.log_every=1",
        "--set", "train.keep_checkpoints=1", "--set", "sample.num_levels=3", "--set", "sample.steps_per_level=2",
        "--set", "sample.replay_particles=50"]


def _launch(argv, env):
    return subprocess.Popen([sys.executable, "-m", "dmmd", *argv, "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _last_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().strip().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _weights(run: Path) -> dict:
    p = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    out = {f"model.{k}": v for k, v in p["model"].items()}
    out.update({f"ema.{k}": v for k, v in p["ema"].items()})
    out.update({f"opt.{i}.{k}": v for i, s in p["optimizer"]["state"].items() for k, v in s.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/resume_kill.json")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [*ARGS, "--set", f"train.steps={args.steps}"]
    with tempfile.TemporaryDirectory() as tmp:
        reference, run = Path(tmp) / "reference", Path(tmp) / "killed"
        started = time.time()
        assert _launch(["train", *argv, "--out", str(reference)], env).wait() == 0
        targets = sorted(np.random.default_rng(args.seed).choice(np.arange(2, args.steps - 1), args.kills, replace=False))
        proc, kills, killed_at = _launch(["train", *argv, "--out", str(run)], env), 0, []
        for target in targets:
            while _last_step(run) < target and proc.poll() is None:
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                killed_at.append(_last_step(run))
            proc = _launch(["train", "--resume", str(run)], env)
        rc = proc.wait()
        a, b = _weights(reference), _weights(run)
        identical = rc == 0 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        max_diff = max(float((a[k] - b[k]).abs().max()) for k in a) if a.keys() == b.keys() else float("nan")
    result = {"kills": kills, "killed_after_step": killed_at, "steps": args.steps, "final_rc": rc,
              "bit_identical": identical, "max_abs_difference": max_diff, "seconds": round(time.time() - started, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| kills | steps | bit-identical | max abs difference | seconds |\n|---|---|---|---|---|")
    print(f"| {kills} | {args.steps} | {identical} | {max_diff:g} | {result['seconds']} |")


if __name__ == "__main__":
    main()
