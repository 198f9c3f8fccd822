"""Logged losses are means over the logging interval (metrics.jsonl keeps the logged step's own
value beside them), so loss curves do not zig-zag with single noisy steps."""

import json

import pytest

from dmmd.cli import main
from test_cli import TINY


def _train_records(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "train"]


def test_interval_means_equal_the_mean_of_every_step(tmp_path, capsys):
    args = [*TINY, "--set", "train.threads=1", "--no-progress"]
    assert main(["train", *args, "--set", "train.log_every=1", "--out", str(tmp_path / "every")]) == 0
    assert main(["train", *args, "--set", "train.log_every=4", "--out", str(tmp_path / "fourth")]) == 0
    every = {r["step"]: r for r in _train_records(tmp_path / "every")}
    fourth = _train_records(tmp_path / "fourth")
    assert [r["step"] for r in fourth] == [4, 8, 12]
    for record in fourth:  # same seed, one thread: the same steps, so the means are checkable
        steps = range(record["step"] - 3, record["step"] + 1)
        for key in ("loss", "mmd2", "gp"):
            assert record[key] == pytest.approx(every[record["step"]][key], rel=1e-5)
            assert record[f"{key}_mean"] == pytest.approx(sum(every[s][key] for s in steps) / 4, rel=1e-5)
    line = next(t for t in (tmp_path / "fourth" / "log.txt").read_text().splitlines() if "step 8/12" in t)
    assert f"loss {fourth[1]['loss_mean']:.4g}" in line
    assert main(["plot", str(tmp_path / "fourth")]) == 0 and (tmp_path / "fourth" / "losses.png").is_file()
