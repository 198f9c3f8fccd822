"""Checkpoints: state dicts, resolved config, format version and step; loaded without running code.

A checkpoint is a dict saved with torch.save and read back with torch.load(weights_only=True),
which refuses any pickle that would import or call code. Writes go to a temporary file in the
same folder, are flushed to disk, then renamed into place: a crash never leaves half a file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import resource
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError

from dmmd.config import ConfigError, from_dict
from dmmd.runtime.runfolder import RunFolderError, current_umask

FORMAT = "dmmd-checkpoint"
VERSION = 1
LATEST = "latest"  # file in a run folder naming the newest checkpoint
MAX_DATA_ITEMS = 2**26  # values per data item (data_shape's product): 64M, e.g. 3 x 4096 x 4096 + margin
MAX_CONFIG_CHARS = 1 << 20
MAX_STEP = 2**62


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, foreign or of another format version."""


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call write(file_object) on a temporary file next to path, fsync, then rename onto path.

    The file gets the mode the user's umask gives new files (mkstemp makes them 0600); a full
    disk or the file size limit is a one-line RunFolderError that leaves the previous file intact."""
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
        cause = _write_failure(err, path.parent) if isinstance(err, Exception) else None
        if cause is not None:
            raise RunFolderError(f"{cause} while writing {path.name} in {path.parent.absolute()}; the previous "
                                 f"{path.name} and all files written before (earlier checkpoints included) are "
                                 "intact") from None
        raise


def _write_failure(err: BaseException, folder: Path) -> str | None:
    """'no space left on the device' or 'the file size limit' when `err` (an OSError, or torch.save's
    RuntimeError from inline_container with the OSError as its context) is a full disk or `ulimit -f`."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the device ({seen.strerror})"
        if isinstance(seen, OSError) and seen.errno == errno.EFBIG:
            return "the file size limit (ulimit -f) was reached"
        seen = seen.__cause__ or seen.__context__
    if not isinstance(err, RuntimeError) or "inline_container" not in str(err):
        return None
    try:  # torch's writer lost the OSError: what the file system says now
        if os.statvfs(folder).f_bavail == 0:
            return "no space left on the device"
    except OSError:
        pass
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return "the file size limit (ulimit -f) was reached"
    return None


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
    except Exception as err:  # any bytes: the unpickler fails in many ways (IndexError on text),
        # and torch.load reads a .safetensors file with safetensors (SafetensorError: header too large, ...)
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {type(err).__name__}"
                              + (f" ({' '.join(str(err).split())[:80]})" if isinstance(err, SafetensorError) else "")) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str) or payload["format"] != FORMAT:
        raise CheckpointError(f"{path} is not a dmmd checkpoint (no '{FORMAT}' format tag)")
    if type(payload.get("version")) is not int or payload["version"] != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {str(payload.get('version'))[:20]}; this dmmd "
                              f"reads version {VERSION}")
    check_payload(payload, path)  # every field's type and size, the config by the --set schema
    payload["config"] = config_tree(payload["config"], path)
    return payload


def _kind(value) -> str:
    return type(value).__name__


def _fail(path, what: str) -> CheckpointError:
    return CheckpointError(" ".join(f"{path}: {what}".split()))


# ------------------------------------------------------------------------------------ latest
def read_latest(folder: Path) -> Path:
    """The checkpoint a run folder's `latest` names: a relative path inside the folder, one line."""
    latest = folder / LATEST
    if not latest.is_file():
        raise CheckpointError(f"{folder} is a folder without a '{LATEST}' file: pass a checkpoint file or a run folder")
    raw = latest.read_bytes()[:4097]
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None
    shown = repr(raw[:40])
    if (text is None or len(raw) > 4096 or not text or "\n" in text or "\x00" in text or Path(text).is_absolute()
            or ".." in Path(text).parts):
        raise CheckpointError(f"{latest} does not name a checkpoint inside {folder} (expected a line like "
                              f"checkpoints/final.pt, found {shown}); pass a checkpoint file instead")
    target = folder / text
    if not target.is_file():
        raise CheckpointError(f"{latest} names {text!r}, which is not a file in {folder}; pass a checkpoint file "
                              "instead")
    return target


# -------------------------------------------------------------------------------- checkpoints
def _tensor_dict(payload: dict, key: str, path) -> None:
    value = payload.get(key)
    if not isinstance(value, dict) or not value:
        raise _fail(path, f"field {key!r} must be a non-empty dict of tensors, found {_kind(value)}")
    for name, tensor in value.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise _fail(path, f"field {key!r} must map names to tensors, found {name!r}: {_kind(tensor)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _fail(path, f"field {key!r} holds NaN or inf in {name[:80]!r}: its training diverged or the file "
                              "is corrupt; use an earlier checkpoint of the run")


def config_tree(value, path) -> dict:
    """The checkpoint's config as a dict of sections (it is stored as JSON text)."""
    if isinstance(value, str):
        if len(value) > MAX_CONFIG_CHARS:
            raise _fail(path, f"config is {len(value)} characters long; a dmmd config is a few thousand")
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as err:
            raise _fail(path, f"config is not valid JSON ({type(err).__name__})") from None
    if not isinstance(value, dict):
        raise _fail(path, f"config must be a JSON object of sections, found {_kind(value)}")
    for section, body in value.items():
        if isinstance(body, dict) and any(isinstance(v, (dict, list)) and not _int_list(v) for v in body.values()):
            raise _fail(path, f"config section {section!r} nests deeper than section.key")
    return value


def _int_list(v) -> bool:
    return isinstance(v, list) and len(v) <= 64 and all(isinstance(i, (int, float, str, bool)) for i in v)


def check_data_shape(value, path) -> tuple[int, ...]:
    if (not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 3
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in value)):
        raise _fail(path, f"data_shape must be 1 to 3 positive integers, found {str(value)[:80]}")
    if math.prod(value) > MAX_DATA_ITEMS:
        raise _fail(path, f"data_shape {list(value)} has {math.prod(value)} values per item; at most "
                          f"{MAX_DATA_ITEMS} are supported")
    return tuple(value)


def check_payload(payload: dict, path) -> None:
    """CheckpointError unless every field of a checkpoint has the type and size dmmd writes."""
    tree = config_tree(payload.get("config"), path)
    try:
        cfg = from_dict(tree)
    except (ConfigError, TypeError, AttributeError, RecursionError) as err:
        raise _fail(path, f"config is not valid for this dmmd: {err}") from None
    step = payload.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < MAX_STEP:
        raise _fail(path, f"step must be a non-negative integer, found {str(step)[:40]} ({_kind(step)})")
    check_data_shape(payload.get("data_shape"), path)
    for key in ("model", "ema"):
        _tensor_dict(payload, key, path)
    opt = payload.get("optimizer")
    if (not isinstance(opt, dict) or not isinstance(opt.get("state"), dict)
            or not isinstance(opt.get("param_groups"), list) or not all(isinstance(g, dict) for g in opt["param_groups"])):
        raise _fail(path, f"field 'optimizer' must be an optimizer state dict, found {_kind(opt)}")
    rng = payload.get("rng")
    if not isinstance(rng, dict) or not isinstance(rng.get("train"), torch.Tensor) or rng["train"].dtype != torch.uint8:
        raise _fail(path, "field 'rng' must hold the training generator's state (a uint8 tensor under 'train')")
    best = payload.get("best", {})
    if not isinstance(best, dict) or (best and (not isinstance(best.get("step"), int)
                                                or not isinstance(best.get("val_loss"), (int, float)))):
        raise _fail(path, f"field 'best' must be {{}} or {{'step': int, 'val_loss': float}}, found {str(best)[:60]}")
    check_stats(payload.get("stats", {}), path, cfg.method)


def check_optimizer_state(opt: dict, shapes: list[tuple[int, ...]], path) -> None:
    """CheckpointError unless an optimizer state dict (check_payload checked its layout) fits a model
    whose parameters have `shapes`, in order: one index per parameter in the groups, and each
    parameter's moments (exp_avg, exp_avg_sq, ...) finite float tensors of its shape."""
    order = [i for group in opt["param_groups"] for i in group.get("params", [])]
    if len(order) != len(shapes) or any(isinstance(i, bool) or not isinstance(i, int) for i in order):
        raise _fail(path, f"field 'optimizer' holds {len(order)} parameters, the model has {len(shapes)}")
    where = {index: position for position, index in enumerate(order)}
    for index, moments in opt["state"].items():
        if index not in where or not isinstance(moments, dict):
            raise _fail(path, f"field 'optimizer' holds state for parameter {str(index)[:20]!r}, which the model "
                              "does not have")
        for name, value in moments.items():
            shape = shapes[where[index]]
            if name == "step":
                ok = isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)
            else:
                ok = (isinstance(value, torch.Tensor) and value.is_floating_point() and tuple(value.shape) == shape
                      and bool(torch.isfinite(value).all()))
            if not ok:
                found = tuple(value.shape) if isinstance(value, torch.Tensor) else _kind(value)
                wanted = "a number" if name == "step" else f"a finite float tensor of the parameter's shape {shape}"
                raise _fail(path, f"optimizer state {name!r} of parameter {where[index]} must be {wanted}, found "
                                  f"{str(found)[:40]}")


def check_model_fits(build, cfg, shape: tuple[int, ...], state: dict, path, prefix: str = "module.") -> None:
    """CheckpointError unless the stored weights (keys with `prefix`, the EMA copy) have exactly the
    names and shapes of build(cfg, shape), which is built on the meta device (nothing allocated)."""
    stored = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        with torch.device("meta"):
            model = build(cfg, shape)
        wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as err:
        raise _fail(path, f"the model its config describes cannot be built: {str(err).splitlines()[0][:120]}") from None
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    if missing or extra:
        raise _fail(path, f"checkpoint weights do not match its config: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, size in wanted.items():
        if tuple(stored[key].shape) != size:
            raise _fail(path, f"checkpoint weights do not match its config: {key} has shape "
                              f"{tuple(stored[key].shape)}, the config's model needs {size}")


def check_stats(stats, path, method: str = "dmmd", feature_dim: int | None = None) -> dict:
    """CheckpointError unless `stats` has the shape calibration writes (see pipeline.calibrate)."""
    if not isinstance(stats, dict):
        raise _fail(path, f"field 'stats' must be a dict, found {_kind(stats)}")
    if not stats:
        return stats
    if method != "dmmd":
        raise _fail(path, f"field 'stats' must be empty for method = {method!r}")
    grid = stats.get("grid")
    levels = None
    if grid is not None:
        if not isinstance(grid, str) or not grid.startswith("T=") or not grid[2:].split(",")[0].isdigit():
            raise _fail(path, f"stats 'grid' must be a tag like 'T=10,grid=uniform', found {str(grid)[:40]!r}")
        levels = int(grid[2:].split(",")[0])
    means = {}
    for key in ("data_mean", "noised_mean"):
        if key in stats:
            means[key] = _matrix(stats[key], f"stats {key!r}", path, levels, feature_dim)
    if means and grid is None:
        raise _fail(path, "stats hold level means without their 'grid' tag")
    replay = stats.get("replay", {})
    if not isinstance(replay, dict):
        raise _fail(path, f"stats 'replay' must be a dict of tensors, found {_kind(replay)}")
    for tag, tensor in replay.items():
        if not isinstance(tag, str):
            raise _fail(path, f"stats 'replay' keys must be setting tags, found {_kind(tag)}")
        _matrix(tensor, f"replay {tag[:40]!r}", path, None, feature_dim)
    if "replay" in stats and "data_mean" not in stats:
        raise _fail(path, "stats hold a replay without the level means it was made with")
    scales = stats.get("replay_scale", {})  # sample.step_norm = 'gradient': the replay's step scales
    if not isinstance(scales, dict):
        raise _fail(path, f"stats 'replay_scale' must be a dict of tensors, found {_kind(scales)}")
    for tag, value in scales.items():
        steps = replay.get(tag) if isinstance(tag, str) else None
        if (steps is None or not isinstance(value, torch.Tensor) or value.shape != (steps.shape[0],)
                or not value.is_floating_point() or not bool(torch.isfinite(value).all())):
            raise _fail(path, f"stats 'replay_scale' {str(tag)[:40]!r} must be a finite float tensor with one "
                        "value per step of the replay of that tag")
    _check_class_stats(stats, path, feature_dim)
    return stats


def _check_class_stats(stats: dict, path, feature_dim: int | None) -> None:
    """A conditional model's statistics (dmmd.methods.conditional.calibrate): 'class_grid', a (T, C + 1, D)
    'class_data_mean' and 'class_replay' tensors of (steps, C + 1, D)."""
    if "class_data_mean" not in stats and "class_replay" not in stats:
        return
    if not isinstance(stats.get("class_grid"), str) or "class_data_mean" not in stats:
        raise _fail(path, "stats hold class statistics without their 'class_grid' tag or 'class_data_mean'")
    replay = stats.get("class_replay", {})
    if not isinstance(replay, dict) or not all(isinstance(k, str) for k in replay):
        raise _fail(path, f"stats 'class_replay' must be a dict of tensors by setting tag, found {_kind(replay)}")
    groups = None
    for what, value in [("class_data_mean", stats["class_data_mean"]), *((f"class replay {k[:40]!r}", v)
                                                                           for k, v in replay.items())]:
        if not isinstance(value, torch.Tensor) or value.ndim != 3 or not value.is_floating_point():
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else _kind(value)
            raise _fail(path, f"stats {what} must be a 3-D float tensor (steps, classes + 1, features), found {shape}")
        groups = value.shape[1] if groups is None else groups
        if value.shape[1] != groups or (feature_dim is not None and value.shape[2] != feature_dim):
            raise _fail(path, f"stats {what} has shape {tuple(value.shape)}; expected (steps, {groups}, "
                              f"{feature_dim or 'features'})")
        if not torch.isfinite(value).all():
            raise _fail(path, f"stats {what} contains NaN or Inf values")


def _matrix(value, what: str, path, rows: int | None, cols: int | None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else _kind(value)
        raise _fail(path, f"{what} must be a 2-D float tensor, found {shape}")
    if (rows is not None and value.shape[0] != rows) or (cols is not None and value.shape[1] != cols):
        raise _fail(path, f"{what} has shape {tuple(value.shape)}; expected ({rows or 'levels'}, {cols or 'features'})")
    if not torch.isfinite(value).all():
        raise _fail(path, f"{what} contains NaN or Inf values")
    return value
