"""Sampler statistics made by `dmmd calibrate`, kept beside the checkpoint they belong to.

Calibrate never rewrites a model: a checkpoint DIR/NAME gets its statistics in DIR/stats/NAME, a
torch file {"format", "version", "checkpoint": sha256 of the checkpoint file, "stats"}, written
atomically while the run folder's lock is held. `merged` reads them back for load_model when
the fingerprint matches the checkpoint as it is now: a checkpoint that training rewrote since
(final.pt after a resume) no longer takes statistics made for its earlier weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from dmmd.runtime import checkpoint as ckpt
from dmmd.runtime.checkpoint import check_stats

FORMAT = "dmmd-stats"
VERSION = 1
FOLDER = "stats"


def stats_path(checkpoint: Path) -> Path:
    return Path(checkpoint).parent / FOLDER / Path(checkpoint).name


def fingerprint(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lock_folder(checkpoint: Path) -> Path:
    """The folder whose lock guards a checkpoint: its run folder (RUN/checkpoints/NAME), else its own."""
    folder = Path(checkpoint).parent
    if folder.name == "checkpoints" and (folder.parent / "config.json").is_file():
        return folder.parent
    return folder


def save(checkpoint: Path, stats: dict) -> Path:
    """Write the statistics of `checkpoint` beside it (call while holding lock_folder's lock); statistics
    files (this format) of checkpoints that no longer exist are removed; other files are left alone."""
    path = stats_path(checkpoint)
    path.parent.mkdir(exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "checkpoint": fingerprint(checkpoint), "stats": stats}
    ckpt.atomic_write_bytes(path, lambda fh: torch.save(payload, fh))
    if path.parent.is_symlink():  # a folder the user linked in: nothing there is removed
        return path
    for orphan in path.parent.glob("*.pt"):
        if (not (Path(checkpoint).parent / orphan.name).exists() and not orphan.is_symlink()
                and _is_stats_file(orphan)):  # only statistics files this module wrote
            orphan.unlink(missing_ok=True)
    return path


def _is_stats_file(path: Path) -> bool:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any bytes (a text file fails with IndexError)
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load(checkpoint: Path, map_location="cpu") -> dict | None:
    """The stored statistics of `checkpoint`, or None when there are none for it as it is now."""
    path = stats_path(checkpoint)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # any bytes (a text file fails with IndexError)
        raise ckpt.CheckpointError(f"{path} is not a readable statistics file ({type(err).__name__}), and dmmd keeps "
                                   f"the statistics of {Path(checkpoint).name} under that name: move it away (or remove "
                                   "it if it is an old statistics file); it is left as it is") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise ckpt.CheckpointError(f"{path} is not a dmmd statistics file of version {VERSION}, and dmmd keeps the "
                                   f"statistics of {Path(checkpoint).name} under that name: move it away (or remove it "
                                   "if it is an old statistics file); it is left as it is")
    if payload.get("checkpoint") != fingerprint(checkpoint):
        return None  # made for earlier weights under this name
    return payload.get("stats")


def merged(checkpoint: Path, stats: dict, method: str, feature_dim: int | None, map_location="cpu") -> dict:
    """The statistics sampling uses: the side file's (a superset made by calibrate from the
    checkpoint's own) when there is one for this checkpoint, else the checkpoint's; validated."""
    check_stats(stats, checkpoint, method, feature_dim)
    side = load(checkpoint, map_location)
    if side is None:
        return stats
    return check_stats(side, stats_path(checkpoint), method, feature_dim)
