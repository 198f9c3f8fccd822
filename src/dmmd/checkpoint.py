"""Checkpoints: state dicts, resolved config, format version and step; loaded without running code.

A checkpoint is a dict saved with torch.save and read back with torch.load(weights_only=True),
which refuses any pickle that would import or call code. Writes go to a temporary file in the
same folder, are flushed to disk, then renamed into place: a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import torch

FORMAT = "dmmd-checkpoint"
VERSION = 1
LATEST = "latest"  # file in a run folder naming the newest checkpoint


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, foreign or of another format version."""


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call write(file_object) on a temporary file next to path, fsync, then rename onto path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def save(path: str | Path, payload: dict) -> None:
    """Save a checkpoint dict (tensors, numbers, strings, nested dicts and lists)."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run folder whose `latest` file names one."""
    path = Path(path)
    if path.is_dir():
        latest = path / LATEST
        if not latest.is_file():
            raise CheckpointError(f"{path} is a folder without a '{LATEST}' file: pass a checkpoint file or a run folder")
        path = path / latest.read_text().strip()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = resolve(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsafe content"
        raise CheckpointError(f"{path} was refused by the safe loader (it is not a plain dmmd checkpoint): {first}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {type(err).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dmmd checkpoint (no '{FORMAT}' format tag)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('version')}; this dmmd reads version {VERSION}")
    payload["config"] = json.loads(payload["config"]) if isinstance(payload.get("config"), str) else payload.get("config")
    return payload
