"""`dmmd study NAME`: the paper's studies."""

from __future__ import annotations

import argparse

from dmmd.apps.studies import flows, kernel_width, optimal_width, pictures
from dmmd.config import ConfigError

STUDY_PRESETS = {"kernel-width": "--data", "flows": "--toys", "pictures": "--data"}  # each study's own flag
STUDIES = {"kernel-width": kernel_width, "flows": flows, "pictures": pictures, "optimal-width": optimal_width}


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="reproduce the paper's studies (kernel-width, flows, pictures, optimal-width)",
                   description="Run a study module; arguments after the name go to it (see `dmmd study NAME "
                        "--help`). docs/studies.md and docs/optimal_width.md describe them.")
    p.add_argument("name", choices=sorted(STUDIES), help="which study")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the study's own arguments, e.g. --out DIR --quick; "
                   "--preset NAME picks the presets it trains (its --data or --toys)")


def run(args) -> int:
    """Runs the study module; --preset NAME [NAME ...] is the study's own preset flag (--data or --toys)."""
    argv = list(args.args)
    if any(a == "--preset" or a.startswith("--preset=") for a in argv):
        if args.name not in STUDY_PRESETS:
            raise ConfigError(f"study {args.name} trains no preset; --preset works with {', '.join(STUDY_PRESETS)}")
        flag = STUDY_PRESETS[args.name]
        argv = [flag if a == "--preset" else flag + a[len("--preset"):] if a.startswith("--preset=") else a
                for a in argv]
    return int(STUDIES[args.name].main(argv) or 0)
