"""Checks of what dmmd loads from disk, each failing with a one-line error before any allocation.

Checkpoints (every field's type, shape and size; the config by the schema `--set` uses; the
stored weights against the model the config describes, built on the meta device so nothing is
allocated), a run folder's `latest` file, sampler statistics, and the headers of .npy/.npz
data files (claimed sizes against the file's size and the memory there is; complex dtypes).
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from .checkpoint import LATEST, CheckpointError

MAX_DATA_ITEMS = 2**26  # values per data item (data_shape's product): 64M, e.g. 3 x 4096 x 4096 + margin
MAX_CONFIG_CHARS = 1 << 20
MAX_STEP = 2**62


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
    from .config import ConfigError, from_dict

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
    _check_class_stats(stats, path, feature_dim)
    return stats


def _check_class_stats(stats: dict, path, feature_dim: int | None) -> None:
    """A conditional model's statistics (dmmd.conditional.calibrate): 'class_grid', a (T, C + 1, D)
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


# ------------------------------------------------------------------------------- data arrays
def _header(fh, what) -> tuple[tuple[int, ...], np.dtype]:
    from .data.files import DataError

    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as err:
        raise DataError(f"{what}: not a readable .npy header ({' '.join(str(err).split())[:100]})") from None
    return tuple(shape), dtype


def _check_header(shape, dtype: np.dtype, data_bytes: int, what: str) -> None:
    from .data.files import DataError
    from .resources import available_bytes, gib

    if dtype.kind == "c":
        raise DataError(f"{what}: complex values (dtype {dtype}); expected real numbers")
    if dtype.hasobject:
        return  # refused by the loader (no pickles)
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > data_bytes:
        raise DataError(f"{what}: the header claims shape {shape} of {dtype} ({claimed} bytes), the file holds "
                        f"{data_bytes} bytes of data: truncated or corrupt")
    need = claimed + math.prod(shape) * 4 * 2  # the array, then float32 copies
    limit = available_bytes("cpu")
    if need > limit:
        raise DataError(f"{what}: shape {shape} needs about {gib(need)} of memory to load, about {gib(limit)} is "
                        "available; use a smaller file (or set DMMD_MEMORY_GB to override the estimate)")


def check_array_file(path: str | Path, key: str | None = None) -> None:
    """DataError when a .npy/.npz header claims more data than the file holds or than memory takes,
    or a complex dtype; other problems are left to numpy's loader (which refuses pickles)."""
    from .data.files import DataError

    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(6)
        fh.seek(0)
        if magic == b"\x93NUMPY":
            shape, dtype = _header(fh, str(path))
            _check_header(shape, dtype, path.stat().st_size - fh.tell(), str(path))
            return
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            members = {name[:-4]: name for name in zf.namelist() if name.endswith(".npy")}
            names = [key] if key in members else list(members)[:1] if key is None and len(members) == 1 else []
            for name in names:
                info = zf.getinfo(members[name])
                with zf.open(info) as fh:
                    shape, dtype = _header(fh, f"{path} (array {name!r})")
                    header_bytes = fh.tell()
                _check_header(shape, dtype, info.file_size - header_bytes, f"{path} (array {name!r})")
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise DataError(f"{path}: not a readable .npz file ({' '.join(str(err).split())[:100]})") from None


def check_float32_range(array: np.ndarray, what: str) -> None:
    """DataError when finite values are too large for float32 (they would become Inf)."""
    from .data.files import DataError

    if array.dtype.kind == "f" and array.dtype.itemsize > 4 and array.size:
        finite = array[np.isfinite(array)]
        top = np.max(np.abs(finite)) if finite.size else 0.0
        if top > np.finfo(np.float32).max:
            raise DataError(f"{what}: values up to {float(top):.3g} do not fit float32 (largest "
                            f"{float(np.finfo(np.float32).max):.3g}); rescale the data")
