"""Memory estimates checked before compute: refuse a size that cannot fit, with the limit and a way out.

The estimates are lower bounds (the arrays that must exist at once, at float32), compared with
the memory available now (/proc/meminfo's MemAvailable, or the CUDA device's free memory); the
environment variable DMMD_MEMORY_GB replaces that figure (to allow more, or to test the guards).
They catch sizes off by orders of magnitude, not a run that is 10% too big.
"""

from __future__ import annotations

import math
import os

import torch

FLOAT = 4  # bytes


class ResourceError(ValueError):
    """A requested size that needs more memory than there is."""


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**28 else f"{n / 2**20:.3g} MiB"


def available_bytes(device="cpu") -> int:
    """Memory available for new arrays on `device` (DMMD_MEMORY_GB overrides)."""
    override = os.environ.get("DMMD_MEMORY_GB", "").strip()
    if override:
        try:
            value = float(override)
        except ValueError:
            value = -1.0
        if not value > 0 or not math.isfinite(value):
            raise ResourceError(f"DMMD_MEMORY_GB must be a positive number of GiB, got {override!r}")
        return int(value * 2**30)
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 8 * 2**30


def refuse(need: int, what: str, device, advice: str) -> None:
    limit = available_bytes(device)
    if need > limit:
        raise ResourceError(f"{what} needs at least about {gib(need)} of memory; about {gib(limit)} is available"
                            f"{' on ' + str(device) if str(device) != 'cpu' else ''}: {advice} (or set DMMD_MEMORY_GB "
                            "to override the estimate)")
