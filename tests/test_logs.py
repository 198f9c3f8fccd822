"""What a run writes as it goes: plain lines off a terminal, log.txt per interval, metrics.jsonl
kinds and elapsed time across resume, TensorBoard calls, `dmmd plot`."""

import json
import subprocess
import sys

import pytest
from test_cli import TINY

from dmmd.cli import main
from dmmd.training import log as runlog
from dmmd.training.log import read_metrics

STEPS = [a if not a.startswith("train.steps=") else "train.steps=12" for a in TINY]
ARGS = [*STEPS, "--set", "train.log_every=2", "--set", "train.checkpoint_every=5"]


def _dmmd(*argv, cwd=None):
    """The CLI in a new process with stdout and stderr to pipes (not a terminal), as `make demo > log`."""
    return subprocess.run([sys.executable, "-m", "dmmd", *argv], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("logs") / "run"
    done = _dmmd("train", *ARGS, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out, done


def test_off_a_terminal_training_prints_a_line_per_interval_and_no_bar(cli_run):
    out, done = cli_run
    text = done.stdout + done.stderr
    assert "\r" not in text and "it/s" not in text  # no tqdm redraws
    interval = [line for line in done.stdout.splitlines() if line.startswith("step ") and "/12" in line]
    assert [line.split()[1] for line in interval] == [f"{s}/12" for s in (2, 4, 6, 8, 10, 12)]
    assert all("steps/s" in line and "ETA" in line and "loss" in line for line in interval)
    assert len(text.encode()) < 2000  # 12 steps: a few lines, not redraws


def test_log_txt_has_a_line_per_interval_and_each_held_out_loss(cli_run):
    out, _ = cli_run
    lines = (out / "log.txt").read_text().splitlines()
    assert sum(" steps/s " in line for line in lines) == 6
    assert sum("held-out loss" in line for line in lines) == 3  # checkpoints at 5, 10 and the final 12
    assert "done at step 12" in lines[-1]


def test_metrics_records_say_train_or_val(cli_run):
    out, _ = cli_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert len(train) + len(val) == len(records)
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12] and all("loss" in r and "val_loss" not in r for r in train)
    assert [r["step"] for r in val] == [5, 10, 12] and all("loss" not in r for r in val)
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed)


def test_resume_drops_records_after_the_checkpoint_and_continues_elapsed(tmp_path):
    out = tmp_path / "run"
    # in this process (test_off_a_terminal_... runs the CLI in a new one): two fewer interpreter starts
    assert main(["train", *ARGS, "--set", "train.steps=10", "--out", str(out), "--no-progress"]) == 0
    before = read_metrics(out / "metrics.jsonl")
    with open(out / "metrics.jsonl", "a") as fh:  # what a session killed after its checkpoint leaves behind
        fh.write(json.dumps({"kind": "train", "step": 11, "elapsed_s": 999.0, "loss": 0.0}) + "\n")
        fh.write('{"kind": "train", "st')  # a line cut short by the kill
    assert main(["train", "--resume", str(out), "--set", "train.steps=14", "--no-progress"]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert records[: len(before)] == before
    after = records[len(before):]
    assert [r["step"] for r in after if r["kind"] == "train"] == [12, 14]
    assert all(r["elapsed_s"] >= before[-1]["elapsed_s"] and r["elapsed_s"] < 999 for r in after)
    assert (out / "metrics.jsonl").read_text().count("\n") == len(records)  # the cut line is gone


def test_read_metrics_labels_records_written_before_kind_existed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5, "val_loss": 1.0}\n{"step": 5, "loss": 2.0, "elapsed_s": 1}\nnot json\n')
    assert [r["kind"] for r in read_metrics(path)] == ["val", "train"]


class FakeWriter:
    """Records what RunLog sends to TensorBoard (tensorboard itself is an optional package)."""

    def __init__(self):
        self.scalars, self.images, self.closed = [], [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, step, value))

    def add_image(self, tag, image, step, dataformats):
        self.images.append((tag, step, image.shape, dataformats))

    def close(self):
        self.closed = True


def test_tensorboard_gets_losses_held_out_loss_and_a_grid_per_checkpoint(tmp_path, monkeypatch):
    writers = []
    monkeypatch.setattr(runlog, "_tensorboard_writer", lambda folder, purge: writers.append(FakeWriter()) or writers[-1])
    digits = [a if not a.startswith("data.") else "data.name=digits" for a in ARGS]
    assert main(["train", *digits, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    (board,) = writers
    assert [s for t, s, _ in board.scalars if t == "train/loss"] == [2, 4, 6, 8, 10, 12]
    assert [s for t, s, _ in board.scalars if t == "val/loss"] == [5, 10, 12]
    assert [(step, shape[2], fmt) for _, step, shape, fmt in board.images] == [(5, 1, "HWC"), (10, 1, "HWC"),
                                                                                (12, 1, "HWC")]
    side = (4 * (8 + 1) + 1) * 4  # a 4 x 4 grid of 8 x 8 digits with 1-pixel padding, scaled 4x
    assert board.images[0][2][:2] == (side, side)
    assert board.closed


def test_real_tensorboard_event_files_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    assert main(["train", *ARGS, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_plot_draws_the_loss_curves(cli_run, tmp_path):
    out, _ = cli_run
    assert main(["plot", str(out), "--out", str(tmp_path / "losses.png")]) == 0
    from PIL import Image

    with Image.open(tmp_path / "losses.png") as img:
        assert img.size[0] > 300 and img.size[1] > 5 * 100  # loss, mmd2, gp, l2 panels and the held-out loss
    assert main(["plot", str(tmp_path)]) == 2  # no metrics.jsonl: a one-line error


def test_sample_off_a_terminal_prints_no_bar(cli_run, tmp_path):
    out, _ = cli_run
    done = _dmmd("sample", "--checkpoint", str(out), "--num-samples", "20", "--out", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "it/s" not in done.stderr
