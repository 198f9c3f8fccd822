"""One place that maps data to the model's range and back.

Built-in sets have fixed maps: digits 0..16 and image files 0..255 to [-1, 1], toys as drawn. A
user's array file (data.name = "file") gets the map `data.scale` names:

- "auto" (the default) looks at the array once, when training starts, and writes what it chose
  into the run's config: images (4-D arrays, or integer values) are scaled from 0..255 (integers,
  or floats above 1 within 0..255), from 0..1, or from their own min..max to [-1, 1] (values
  already in [-1, 1] are kept); vectors whose standard deviation is over 20 or under 0.05 are
  standardised (one mean and one standard deviation for all coordinates); other vectors are kept.
- "none" keeps the values as they are.
- "LO,HI" maps [LO, HI] to [-1, 1].

Samples are mapped back with the same numbers, so they come out in the user's units. A run made
before data.scale existed reads "auto" at sampling time, which keeps its values as they are, as
they were trained.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from dmmd.config import DataConfig, parse_range
from dmmd.data.toys import TOYS

FAR_FROM_UNIT = (0.05, 20.0)  # a vector data set's standard deviation outside this is standardised under auto


def _range_text(lo: float, hi: float) -> str:
    return f"{lo:.9g},{hi:.9g}"


def choose_scale(array: np.ndarray) -> tuple[str, str]:
    """(data.scale, one line saying what was detected and done) for a user's array under "auto"."""
    lo, hi = float(array.min()), float(array.max())
    integer = np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
    if array.ndim == 4 or integer:
        what = f"images of {array.dtype} values in [{lo:g}, {hi:g}]"
        if lo >= 0 and hi <= 1:
            rng = (0.0, 1.0)
        elif lo >= -1 and hi <= 1:
            return "none", f"data: {what}, already in [-1, 1]: used as they are"
        elif lo >= 0 and hi <= 255:
            rng = (0.0, 255.0)
        else:
            rng = (lo, hi)
        scale = _range_text(*rng)
        return scale, (f"data: {what}; scaled from [{rng[0]:g}, {rng[1]:g}] to [-1, 1] (data.scale = \"{scale}\"; "
                       "samples come back in the original units; data.scale = none keeps the values as they are)")
    mean, std = float(array.mean()), float(array.std())
    what = f"vectors with mean {mean:.3g} and standard deviation {std:.3g}"
    if std < FAR_FROM_UNIT[0] or std > FAR_FROM_UNIT[1]:
        scale = _range_text(mean - std, mean + std) if std > 0 else "none"
        return scale, (f"data: {what}, far from unit scale; standardised (data.scale = \"{scale}\"; samples come "
                       "back in the original units; data.scale = none keeps the values as they are)")
    return "none", f"data: {what}; used as they are"


def _name_and_range(data: DataConfig | str) -> tuple[str, tuple[float, float] | None]:
    if isinstance(data, str):
        return data, None
    return data.name, parse_range(data.scale) if data.name == "file" else None


def to_data_space(data: DataConfig | str, x: Tensor) -> Tensor:
    """Model scale to the data's own units: digits back to 0..16, image files (mnist,
    fashion_mnist, cifar10, folders) to 0..255, toys as they are, array files by data.scale
    (pass the DataConfig; a bare name maps an array file as it is)."""
    name, rng = _name_and_range(data)
    if name == "digits":
        return (x + 1.0) * 8.0
    if name == "file":
        return x if rng is None else (x + 1.0) * ((rng[1] - rng[0]) / 2.0) + rng[0]
    if name in TOYS:
        return x
    return (x + 1.0) * 127.5


def from_data_space(data: DataConfig | str, x: Tensor) -> Tensor:
    """The data's own units to model scale (the inverse of to_data_space)."""
    name, rng = _name_and_range(data)
    if name == "digits":
        return x / 8.0 - 1.0
    if name == "file":
        return x if rng is None else (x - rng[0]) * (2.0 / (rng[1] - rng[0])) - 1.0
    if name in TOYS:
        return x
    return x / 127.5 - 1.0
