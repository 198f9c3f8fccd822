"""Run folders written before the package was reorganised (tests/fixtures/main_424bbc3, made by
the CLI at commit 424bbc3; its README gives the commands) still load and sample the same values."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from dmmd.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "main_424bbc3"

CASES = {
    "g8_approx": ("g8", ["--num-samples", "50", "--seed", "3"]),
    "g8_exact": ("g8", ["--sampler", "exact", "--num-samples", "50", "--seed", "3", "--nfe", "5"]),
    "dc_class3": ("dc", ["--class", "3", "--num-samples", "20", "--seed", "1"]),
    "fm": ("fm", ["--nfe", "4", "--num-samples", "20", "--seed", "2"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_run_samples_the_same(tmp_path, name):
    run, flags = CASES[name]
    copy = tmp_path / run  # sampling may store statistics beside the run: never in the repository
    shutil.copytree(FIXTURE / run, copy)
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(copy), *flags, "--out", str(out), "--no-progress"]) == 0
    got = np.load(out / "samples.npz")["samples"]
    want = np.load(FIXTURE / "expected" / f"{name}.npz")["samples"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
