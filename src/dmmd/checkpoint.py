"""Checkpoints: state dicts, resolved config, format version and step; loaded without running code.

A checkpoint is a dict saved with torch.save and read back with torch.load(weights_only=True),
which refuses any pickle that would import or call code. Writes go to a temporary file in the
same folder, are flushed to disk, then renamed into place: a crash never leaves half a file.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import torch

FORMAT = "dmmd-checkpoint"
VERSION = 1
LATEST = "latest"  # file in a run folder naming the newest checkpoint


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, foreign or of another format version."""


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call write(file_object) on a temporary file next to path, fsync, then rename onto path.

    The file gets the mode the user's umask gives new files (mkstemp makes them 0600); a full
    disk is a one-line RunFolderError that leaves the previous file intact."""
    from .runfolder import RunFolderError, current_umask

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunFolderError(f"no space left on the device while writing {path} ({err.strerror}); the "
                                 f"previous {path.name} is intact") from None
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
        from .validate import read_latest

        path = read_latest(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} " + ("is not a regular file" if path.exists() else "does not exist"))
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = resolve(path)
    try:
        with warnings.catch_warnings():  # torch's notes on foreign pickles: the error below says it in one line
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsafe content"
        raise CheckpointError(f"{path} was refused by the safe loader (it is not a plain dmmd checkpoint): {first}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, RecursionError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {type(err).__name__}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str) or payload["format"] != FORMAT:
        raise CheckpointError(f"{path} is not a dmmd checkpoint (no '{FORMAT}' format tag)")
    if type(payload.get("version")) is not int or payload["version"] != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {str(payload.get('version'))[:20]}; this dmmd "
                              f"reads version {VERSION}")
    from .validate import check_payload, config_tree

    check_payload(payload, path)  # every field's type and size, the config by the --set schema
    payload["config"] = config_tree(payload["config"], path)
    return payload
