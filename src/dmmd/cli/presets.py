"""`dmmd presets`: list the shipped presets."""

from __future__ import annotations

from dmmd import presets


def add_parser(sub) -> None:
    sub.add_parser("presets", help="list the shipped presets (use with --preset NAME)",
                   description="List the presets shipped with dmmd, one line each (the first comment of the file).")


def run(args) -> int:
    names = presets.names()
    for name in names:
        print(f"{name:<{max(map(len, names))}}  {presets.summary(name)}")
    return 0
