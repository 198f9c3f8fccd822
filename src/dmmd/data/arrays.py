"""Array files (.npy, .npz) checked before they are read: a header that claims more data than the
file holds or than memory takes, complex values, and float64 values that do not fit float32 each
end in a one-line DataError before any allocation."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from dmmd.data.files import DataError
from dmmd.runtime.memory import available_bytes, gib


def _header(fh, what) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as err:
        raise DataError(f"{what}: not a readable .npy header ({' '.join(str(err).split())[:100]})") from None
    return tuple(shape), dtype


def load_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """An upper bound on the memory loading an array of `shape` takes at its peak (the array as
    stored, a float32 copy, a shuffled one and a mask of it, the shuffle's int64 row order;
    measured with 2 columns: 21 bytes per float64 value, 14 per uint8, against 25 and 18 here)."""
    values = math.prod(shape)
    return values * (itemsize + 9) + 16 * (shape[0] if shape else 1)


def _check_header(shape, dtype: np.dtype, data_bytes: int, what: str, max_values: int | None = None) -> None:
    if dtype.kind == "c":
        raise DataError(f"{what}: complex values (dtype {dtype}); expected real numbers")
    if dtype.hasobject:
        return  # refused by the loader (no pickles)
    if max_values is not None and math.prod(shape) > max_values:
        raise DataError(f"{what}: the header claims shape {shape} ({math.prod(shape)} values); at most {max_values} "
                        "are expected")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > data_bytes:  # a compressed member holds what its zip entry says, checked when it is read
        raise DataError(f"{what}: the header claims shape {shape} of {dtype} ({claimed} bytes), the file holds "
                        f"{data_bytes} bytes of data: truncated or corrupt")
    need, limit = load_bytes(shape, dtype.itemsize), available_bytes("cpu")
    if need > limit:  # from the header, before anything is read or decompressed
        raise DataError(f"{what}: shape {shape} needs about {gib(need)} of memory to load, about {gib(limit)} is "
                        "available; use a smaller file (or set DMMD_MEMORY_GB to override the estimate)")


def check_array_file(path: str | Path, key: str | None = None, max_values: int | None = None) -> None:
    """DataError when a .npy/.npz header claims more data than the file holds (for an .npz member:
    than its zip entry says it decompresses to; numpy reads no more than the header claims), more
    than memory takes (load_bytes) or more than `max_values` values, or a complex dtype; other
    problems are left to numpy's loader (which refuses pickles)."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(6)
        fh.seek(0)
        if magic == b"\x93NUMPY":
            shape, dtype = _header(fh, str(path))
            _check_header(shape, dtype, path.stat().st_size - fh.tell(), str(path), max_values)
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
                _check_header(shape, dtype, info.file_size - header_bytes, f"{path} (array {name!r})", max_values)
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise DataError(f"{path}: not a readable .npz file ({' '.join(str(err).split())[:100]})") from None


def check_float32_range(array: np.ndarray, what: str) -> None:
    """DataError when finite values are too large for float32 (they would become Inf)."""
    if array.dtype.kind == "f" and array.dtype.itemsize > 4 and array.size:
        flat, top = array.ravel(order="K"), 0.0
        for start in range(0, flat.size, 1 << 20):  # in blocks: no temporaries the size of the array
            block = np.abs(flat[start:start + (1 << 20)])
            top = max(top, float(np.max(block, initial=0.0, where=np.isfinite(block))))
        if top > float(np.finfo(np.float32).max):
            raise DataError(f"{what}: values up to {float(top):.3g} do not fit float32 (largest "
                            f"{float(np.finfo(np.float32).max):.3g}); rescale the data")
