"""Exact resume: a run killed with SIGKILL at random steps and resumed ends bit-identical."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from test_cli import TINY

from dmmd.cli import main

STEPS = 40
ARGS = [a if not a.startswith("train.steps=") else f"train.steps={STEPS}" for a in TINY] + [
    "--set", "train.checkpoint_every=1", "--set", "train.log_every=1", "--set", "train.keep_checkpoints=1"]


def _train(argv, env):
    return subprocess.Popen([sys.executable, "-m", "dmmd", *argv, "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _last_step(run):
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().strip().splitlines()
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:  # a line being written
        return 0


def _weights(run):
    payload = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    return {**{f"model.{k}": v for k, v in payload["model"].items()},
            **{f"ema.{k}": v for k, v in payload["ema"].items()},
            **{f"opt.{i}.{k}": v for i, s in payload["optimizer"]["state"].items() for k, v in s.items()}}


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    # the uninterrupted reference trains in this process (one thread, as the subprocesses below)
    assert main(["train", *ARGS, "--out", str(reference), "--no-progress"]) == 0

    run = tmp_path / "killed"
    kill_at = sorted(np.random.default_rng(0).choice(np.arange(3, STEPS - 2), size=2, replace=False).tolist())
    proc = _train(["train", *ARGS, "--out", str(run)], env)
    kills = 0
    for target in kill_at:
        deadline = time.time() + 60
        while _last_step(run) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        proc = _train(["train", "--resume", str(run)], env)
    assert proc.wait() == 0, proc.stderr.read().decode()
    assert kills >= 2, "the run finished before it could be killed; make STEPS larger"
    assert "resumed at step" in (run / "log.txt").read_text()
    a, b = _weights(reference), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
