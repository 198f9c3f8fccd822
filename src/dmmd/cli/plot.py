"""`dmmd plot RUN`: a run's loss curves."""

from __future__ import annotations

from pathlib import Path

from dmmd.config import ConfigError
from dmmd.evaluation.plotting import save_loss_curves
from dmmd.runtime.runfolder import check_output_file
from dmmd.training.log import read_metrics


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw a run's loss curves to RUN/losses.png",
                        description="Read RUN/metrics.jsonl and draw every training loss term and the held-out loss "
                        "against the step into RUN/losses.png (or --out).")
    p.add_argument("run", metavar="RUN", help="run folder written by `dmmd train`")
    p.add_argument("--out", metavar="FILE", help="picture to write (default RUN/losses.png)")


def run(args) -> int:
    path = Path(args.run) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{args.run} has no metrics.jsonl: pass a run folder written by `dmmd train`")
    records = read_metrics(path)
    if not records:
        raise ConfigError(f"{path} holds no records yet (train.log_every steps have not passed)")
    out = Path(args.out) if args.out else Path(args.run) / "losses.png"
    check_output_file(out, "--out" if args.out else "the picture", inputs=(path,))
    try:
        save_loss_curves(out, records, title=str(args.run))
    except ValueError as err:  # records without any loss term
        raise ConfigError(f"{path}: {err}") from None
    print(f"loss curves: {out}")
    return 0
