"""A run's metrics.jsonl is read line by line and tolerates lines that are not records: they are
skipped with a note, and `dmmd plot` either draws the good records or ends in one error line."""

import json

import pytest

from dmmd.cli import main
from dmmd.training.log import MAX_RECORD_BYTES, read_metrics

GOOD = [{"kind": "train", "step": s, "loss": 1.0 / s, "mmd2": 0.5} for s in range(1, 13)]
BAD_LINES = [b"\xff\xfe not utf-8\n", b'{"step": "seven", "loss": 1}\n', b'{"step": true, "loss": 1}\n',
             b'{"loss": 2.0}\n', b"[1, 2]\n", b'{"step": 3, "loss": {"nested": 1}}\n',
             b'{"step": 4, "loss": ' + b"1" * (MAX_RECORD_BYTES + 10) + b"}\n", b'{"step": 5, "lo']


def _write(path, lines):
    path.write_bytes(b"".join(lines))


def test_bad_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps(r).encode() + b"\n" for r in GOOD]
    _write(path, good[:6] + BAD_LINES[:-1] + good[6:] + BAD_LINES[-1:])
    notes = []
    assert read_metrics(path, warn=notes.append) == GOOD
    assert notes == [f"note: {path}: skipped {len(BAD_LINES)} line(s) that are not metrics records"]


@pytest.mark.parametrize("content, code", [([b'{"step": 1}\n'], 2), ([b'{"step": 1, "val_loss": 0.5}\n'], 0),
                                          ([b"\xff\n", b'{"step": 2, "loss": 0.1}\n'], 0)])
def test_plot_draws_or_says_why_not(tmp_path, capsys, content, code):
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "metrics.jsonl", content)
    assert main(["plot", str(run)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    if code:
        assert len(err) == 1 and err[0].startswith("error: ") and "no loss records" in err[0]
    else:
        assert (run / "losses.png").is_file()
