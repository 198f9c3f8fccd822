"""What a training run writes as it goes: RUN/log.txt, RUN/metrics.jsonl, optional TensorBoard.

- log.txt: one line per logging interval (step, loss terms, steps/s, ETA) and the run's events.
- metrics.jsonl: one JSON record per line; "kind" is "train" (every train.log_every steps: the
  loss terms) or "val" (every checkpoint: the EMA model's held-out loss). elapsed_s counts the
  training time of every session of the run, so it continues across resume.
- TensorBoard event files in RUN/tensorboard (losses, held-out loss, a sample grid at each
  checkpoint) when the `tensorboard` package is installed; nothing otherwise.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
from pathlib import Path

from dmmd.evaluation.plotting import image_grid
from dmmd.runtime.checkpoint import atomic_write_text
from dmmd.runtime.runfolder import RunFolderError
from dmmd.training.preview import preview_samples


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


MAX_RECORD_BYTES = 1 << 16  # a metrics.jsonl line is a few hundred bytes


def read_metrics(path: str | Path, warn=None) -> list[dict]:
    """The records of a metrics.jsonl, read line by line (a file of any size in bounded memory per
    line). Lines that are not a record (cut short by a kill, invalid UTF-8 or JSON, no integer step,
    non-numeric values, over MAX_RECORD_BYTES) are skipped, and `warn` (default: a note on stderr)
    says how many. Records written before "kind" existed count as "val" when they hold val_loss only,
    else "train"."""
    records, skipped = [], 0
    with open(path, "rb") as fh:
        while True:
            raw = fh.readline(MAX_RECORD_BYTES + 1)
            if not raw:
                break
            if len(raw) > MAX_RECORD_BYTES:  # skip the rest of an overlong line
                while raw and not raw.endswith(b"\n"):
                    raw = fh.readline(MAX_RECORD_BYTES + 1)
                skipped += 1
                continue
            record = _record(raw)
            if record is None:
                skipped += bool(raw.strip())
                continue
            record.setdefault("kind", "val" if "val_loss" in record and "loss" not in record else "train")
            records.append(record)
    if skipped:
        (warn or (lambda text: print(text, file=sys.stderr)))(
            f"note: {path}: skipped {skipped} line(s) that are not metrics records")
    return records


def _record(raw: bytes) -> dict | None:
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if (not isinstance(record, dict) or isinstance(record.get("step"), bool) or not isinstance(record.get("step"), int)
            or any(isinstance(v, bool) or not isinstance(v, (int, float, str, type(None))) for v in record.values())):
        return None
    return record


def _tensorboard_writer(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


def _append(path: Path, text: str) -> None:
    """Append to a run's own file, never through a symbolic link (it would change the file linked to)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunFolderError(f"{path} is a symbolic link; a run writes its own {path.name}: remove the link") from None
        raise
    with os.fdopen(fd, "a") as fh:
        fh.write(text)


class RunLog:
    """log.txt lines, metrics.jsonl records and TensorBoard scalars of one training session.

    echo: a function that shows lines to the user (the CLI's print), or None; interval lines are
    echoed only when `echo_intervals` (no progress bar is drawn)."""

    def __init__(self, run_dir: Path, echo=None, enabled: bool = True, total_steps: int = 0,
                 echo_intervals: bool = True, tensorboard: bool = True):
        self.run_dir, self.echo, self.enabled = Path(run_dir), echo, enabled
        self.total_steps, self.echo_intervals, self.use_tensorboard = total_steps, echo_intervals, tensorboard
        self.offset, self.started = 0.0, time.time()
        self.last = None  # (step, time) of the previous interval line
        self.board = None

    def start(self, step: int) -> None:
        """Begin a session at `step` (0, or the resumed checkpoint's): records of steps after it
        (written after that checkpoint by a session that was killed) are dropped, and elapsed_s
        continues from the last kept record."""
        self.started, self.last = time.time(), (step, time.time())
        if not self.enabled:
            return
        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            kept = [r for r in read_metrics(path) if r["step"] <= step]
            self.offset = max((r.get("elapsed_s", 0.0) for r in kept), default=0.0)
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        if self.use_tensorboard:
            self.board = _tensorboard_writer(self.run_dir / "tensorboard", step + 1 if step > 0 else None)

    def elapsed(self) -> float:
        return self.offset + time.time() - self.started

    def line(self, text: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        _append(self.run_dir / "log.txt", f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        if self.echo and echo:
            self.echo(text)

    def metrics(self, record: dict) -> None:
        if not self.enabled:
            return
        _append(self.run_dir / "metrics.jsonl", json.dumps(record) + "\n")

    def train(self, step: int, terms: dict) -> None:
        """A logging interval: a "train" record, a log.txt line with speed and ETA, scalars."""
        now = time.time()
        last_step, last_time = self.last or (step, now)
        rate = (step - last_step) / (now - last_time) if now > last_time and step > last_step else math.nan
        self.last = (step, now)
        self.metrics({"kind": "train", "step": step, "elapsed_s": round(self.elapsed(), 2),
                      "steps_per_s": round(rate, 3) if math.isfinite(rate) else None, **terms})
        # each term's mean over the interval where the record has it (metrics.jsonl keeps both)
        shown = "  ".join(f"{k} {terms.get(k + '_mean', v):.4g}" for k, v in terms.items()
                          if k != "grad_norm" and not k.endswith("_mean"))
        eta = _duration((self.total_steps - step) / rate) if math.isfinite(rate) and rate > 0 else "?"
        where = f"step {step}/{self.total_steps}" if self.total_steps else f"step {step}"  # 0: a time budget stops it
        self.line(f"{where}  {shown}  {rate:.1f} steps/s" + (f"  ETA {eta}" if self.total_steps else ""),
                  echo=self.echo_intervals)
        if self.board is not None:
            for key, value in terms.items():
                self.board.add_scalar(f"train/{key}", value, step)

    def val(self, step: int, value: float) -> None:
        """A checkpoint's held-out loss: a "val" record, a log.txt line, a scalar."""
        self.metrics({"kind": "val", "step": step, "elapsed_s": round(self.elapsed(), 2), "val_loss": value})
        self.line(f"step {step}: held-out loss {value:.4g}")  # shown with a bar too (above it)
        if self.board is not None:
            self.board.add_scalar("val/loss", value, step)

    def preview(self, step: int, model, cfg, data) -> None:
        """A grid of 16 samples of the model for TensorBoard (image data, when it is installed)."""
        if self.board is None or data.ndim != 4:
            return

        z = preview_samples(model, cfg, data, tuple(data.shape[1:]), num=16)
        grid = image_grid(z.detach().float().cpu().numpy(), nrow=4, scale=max(1, 32 // data.shape[-1]))
        self.board.add_image("samples", grid, step, dataformats="HWC")

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None
