"""The presets: TOML configs shipped inside the package (the repository's configs/ links here).

`dmmd train --preset NAME` (and compare) load `NAME.toml` from this folder, so presets work after
`pip install` outside a checkout. `dmmd presets` lists them with the first comment line of each.
"""

from __future__ import annotations

from pathlib import Path

from dmmd.config import ConfigError

FOLDER = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.toml"))


def path(name: str) -> Path:
    """The file of preset `name` (a ConfigError naming the presets when there is none)."""

    file = FOLDER / f"{name}.toml"
    if not name or "/" in name or not file.is_file():
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(names())} (or pass --config FILE)")
    return file


def summary(name: str) -> str:
    """The first sentence of the comment block at the top of the preset's file (whole, however
    many lines it spans)."""
    lines = []
    for line in path(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text, depth = " ".join(lines), 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "." and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 1]
    return text
