"""Two processes (torchrun, gloo on CPU) give the result of one process with the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import TINY

from dmmd.cli import main

ARGS = [a if not a.startswith("train.steps=") else "train.steps=6" for a in TINY]
TOLERANCE = 1e-5  # float32; the only difference is the order of floating-point sums across ranks


def _final(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "final.pt", weights_only=True)


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_two_gloo_processes_match_one(tmp_path):
    """Six steps with the penalty every third step and its gradient kept in between (gp_lazy = reuse):
    both kinds of step in one run, so the gradients of a full step and the kept penalty gradient are
    each summed over ranks like one process's (one launch instead of a second one for the default
    gp_every = 1, whose steps are the full steps here)."""
    args = [*ARGS, "--set", "train.gp_every=3", "--set", "train.gp_lazy=reuse"]
    single = tmp_path / "single"
    assert main(["train", *args, "--out", str(single), "--no-progress"]) == 0
    double = tmp_path / "double"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "dmmd", "train", *args,
                             "--out", str(double), "--no-progress"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _final(single), _final(double)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=TOLERANCE, msg=key)
    for key in a["ema"]:
        torch.testing.assert_close(b["ema"][key], a["ema"][key], rtol=0, atol=TOLERANCE, msg=key)
    assert "2 process(es)" in (double / "log.txt").read_text()
    # Only rank 0 wrote: one log, one metrics file, no stray files.
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir())
