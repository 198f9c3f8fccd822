"""Inpainting by replacement (docs/inpainting.md; RePaint's replacement step, Lugmayr et al. 2022, and its
resampling): known pixels x_known under a mask M, the rest generated.

Mask convention: True (1) = unknown = generated; `top` generates the top half of the image.

Every sampler starts from noise everywhere. Before each network evaluation at noise level t the
known pixels are set to a forward-noised copy of x_known at that level, so only the unknown
pixels follow the sampler; at the end the known pixels are set to x_known exactly:

    z <- where(M, z, q_t(x_known, eps))          before each evaluation at level t
    z <- where(M, z, x_known)                    at the end

with the method's own forward process q_t:
    DMMD, DDPM (VP)   q_t(x, eps) = alpha_t x + sigma_t eps
    flow matching     q_t(x, eps) = (1 - t) eps + t x          (t = 0 noise, t = 1 data)

Resampling (repeats U > 1, every method): each step (DMMD: each level) but the one that ends the
chain runs U times; in between the particles jump back from the step's end level to its start by
the method's forward transition q(x_s | x_t), s the noisier level, with a fresh draw:
    VP (DMMD, DDPM)   x_s = r x_t + sqrt(sigma_s^2 - r^2 sigma_t^2) eps,  r = alpha_s / alpha_t
    flow matching     x_s = (s / t) x_t + sqrt((1 - s)^2 - (s / t)^2 (1 - t)^2) eps   (s < t)
(the flow-matching path is the VP form with alpha_t = t, sigma_t = 1 - t: both keep the marginals
q_s(x, .) of the forward process).

eps ("noise mode"): 'fresh', a new ParticleNoise draw for each new level (RePaint's choice), or
'fixed', the particle's own starting noise z0 at every level (for flow matching this is the
straight path from z0 to x_known that its training paths follow). Both come from the particle's
own noise, so completion i depends only on (seed, i). Defaults (NOISE_MODES) were chosen by
measurement: benchmarks/inpaint.py, docs/inpainting.md.

The samplers take the replacement as a hook known(z, t) -> z (t None: the clean data); this module
builds it and the masks, and imports no sampler.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

MASKS = ("top", "bottom", "left", "right", "center")
NOISE_MODES = {"dmmd": "fresh", "ddpm": "fresh", "fm": "fixed"}  # measured: docs/inpainting.md
RESAMPLE = {"dmmd": 5, "ddpm": 5, "fm": 5}  # RePaint's repeats per level (step); measured likewise

Hook = Callable[[Tensor, "float | None"], Tensor]
Forward = Callable[[Tensor, float, Tensor], Tensor]


class MaskError(ValueError):
    """A mask that does not fit the model's data."""


# -------------------------------------------------------------------------------------- masks
def image_mask(name: str, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The named mask (C, H, W) of bools, True = generated. top/bottom split the rows at H // 2
    (top: rows < H // 2, bottom its complement), left/right the columns at W // 2; center is the
    central H // 2 x W // 2 block starting at (H // 4, W // 4). Every channel alike."""
    if name not in MASKS:
        raise MaskError(f"--mask must be one of {', '.join(MASKS)} or a .npy file, got {name!r}")
    c, h, w = image_shape
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    plane = {"top": rows < h // 2, "bottom": rows >= h // 2, "left": cols < w // 2, "right": cols >= w // 2,
             "center": (rows >= h // 4) & (rows < h // 4 + h // 2) & (cols >= w // 4) & (cols < w // 4 + w // 2)}[name]
    return np.broadcast_to(plane, (c, h, w)).copy()


def named_mask(name: str, shape: tuple[int, ...], image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A named mask for one item of `shape`: images (C, H, W), or flat vectors whose image shape
    is known (e.g. 64 values of a 1x8x8 digit), built on image_shape and reshaped to `shape`."""
    shape = tuple(shape)
    image = shape if len(shape) == 3 else tuple(image_shape or ())
    if len(image) != 3 or math.prod(image) != math.prod(shape):
        raise MaskError(f"the named mask {name!r} needs image data (C, H, W); this model's data has shape {shape}: "
                        "pass a mask file (.npy) instead")
    return image_mask(name, image).reshape(shape)


def mask_from_array(array: np.ndarray, shape: tuple[int, ...], what: str = "mask") -> np.ndarray:
    """A user's mask (bools or 0/1 numbers) as a bool array of `shape`: the same shape, the same
    number of values (a flat mask of an image), or any shape numpy broadcasts to `shape`."""
    shape = tuple(shape)
    array = np.asarray(array)
    if array.dtype != np.bool_:
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise MaskError(f"{what}: expected bools or 0/1 numbers, found dtype {array.dtype}")
        if not np.isin(array, (0, 1)).all():
            raise MaskError(f"{what}: values must be 0 (known) or 1 (generated), found {np.unique(array)[:5]} ...")
        array = array != 0
    if array.shape != shape and array.size == math.prod(shape) and array.ndim in (1, len(shape)):
        array = array.reshape(shape) if array.ndim == 1 else array
    try:
        out = np.broadcast_to(array, shape).copy()
    except ValueError:
        raise MaskError(f"{what}: shape {array.shape} does not fit one item of shape {shape} (expected {shape}, "
                        f"{math.prod(shape)} values, or a shape that broadcasts to it)") from None
    if not out.any():
        raise MaskError(f"{what}: no pixel is marked unknown (1 = generated): nothing to inpaint")
    return out


def load_mask(spec: str, shape: tuple[int, ...], image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """--mask NAME or FILE.npy as a bool array of one item's shape (True = generated)."""
    if spec in MASKS:
        return named_mask(spec, shape, image_shape)
    path = Path(spec)
    if path.suffix != ".npy":
        raise MaskError(f"--mask must be one of {', '.join(MASKS)} or a .npy file, got {spec!r}")
    if not path.is_file():
        raise MaskError(f"--mask {spec}: file does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise MaskError(f"--mask {spec}: not a readable .npy file ({' '.join(str(err).split())[:100]})") from None
    return mask_from_array(array, shape, f"--mask {spec}")


# -------------------------------------------------------------------------- forward processes
def vp_forward(process) -> Forward:
    """q_t(x, eps) = alpha_t x + sigma_t eps of a Gaussian (VP) process (schedule in float64)."""
    if not (hasattr(process, "alpha") and hasattr(process, "sigma")):
        raise ValueError(f"inpainting by replacement needs a pixelwise Gaussian process; got "
                         f"{type(process).__name__} (a blur mixes known and unknown pixels)")

    def forward(x: Tensor, t: float, eps: Tensor) -> Tensor:
        time = torch.tensor(t, dtype=torch.float64)
        return float(process.alpha(time)) * x + float(process.sigma(time)) * eps

    return forward


def fm_forward(x: Tensor, t: float, eps: Tensor) -> Tensor:
    """The rectified-flow path x_t = (1 - t) eps + t x (t = 0 noise, t = 1 data)."""
    return (1.0 - t) * eps + t * x


# ------------------------------------------------------------------------------- replacement
def vp_transition(process):
    """Forward transition of a VP process from level t to a noisier level s > t:
    z_s = r z_t + sqrt(sigma_s^2 - r^2 sigma_t^2) eps, r = alpha_s / alpha_t (RePaint's jump back)."""
    vp_forward(process)  # the same requirement

    def transition(z: Tensor, t: float, s: float, eps: Tensor) -> Tensor:
        a_t, a_s = (float(process.alpha(torch.tensor(v, dtype=torch.float64))) for v in (t, s))
        sig_t, sig_s = (float(process.sigma(torch.tensor(v, dtype=torch.float64))) for v in (t, s))
        r = a_s / a_t
        return r * z + math.sqrt(max(sig_s**2 - (r * sig_t) ** 2, 0.0)) * eps

    return transition


def fm_transition(z: Tensor, t: float, s: float, eps: Tensor) -> Tensor:
    """Forward transition of the rectified-flow path from time t back to a noisier time s < t
    (t = 1 data, t = 0 noise): z_s = (s / t) z_t + sqrt((1 - s)^2 - (s / t)^2 (1 - t)^2) eps, which
    maps t x + (1 - t) e to s x + (1 - s) e' (RePaint's jump back for flow matching)."""
    if not 0.0 <= s < t <= 1.0:
        raise ValueError(f"the flow-matching jump back needs 0 <= s < t <= 1, got t={t}, s={s}")
    r = s / t
    return r * z + math.sqrt(max((1.0 - s) ** 2 - (r * (1.0 - t)) ** 2, 0.0)) * eps


class Replacement:
    """The hook known(z, t): z with its known pixels set to forward(x_known, t, eps) (t None:
    x_known). eps is `fixed` at every level, or a new noise.draw() whenever t changes (so the
    steps of one DMMD level share one copy). x_known's unknown pixels are never read.

    repeats > 1: RePaint's resampling; the sampler runs each level (step) but the last `repeats`
    times and calls jump(z, t_next, t) in between, the forward transition back from the next
    level's noise to this level's, with a noise.draw()."""

    def __init__(self, x_known: Tensor, mask: Tensor, forward: Forward, noise=None, fixed: Tensor | None = None,
                 repeats: int = 1, transition=None):
        if fixed is None and noise is None:
            raise ValueError("Replacement needs noise (fresh draws) or fixed (one eps)")
        if repeats < 1 or (repeats > 1 and (transition is None or noise is None)):
            raise ValueError("resampling (repeats > 1) needs repeats >= 1, a transition and a noise source")
        self.mask = mask.to(device=x_known.device, dtype=torch.bool)
        self.x_known = torch.where(self.mask, torch.zeros_like(x_known), x_known)
        self.forward, self.noise, self.fixed = forward, noise, fixed
        self.repeats, self.transition = repeats, transition
        self._t: float | None = None
        self._copy: Tensor | None = None

    def __call__(self, z: Tensor, t: float | None) -> Tensor:
        if t is None:
            return torch.where(self.mask, z, self.x_known.to(z.dtype))
        if self.fixed is not None:
            copy = self.forward(self.x_known, t, self.fixed.to(self.x_known))
        else:
            if t != self._t:
                self._t, self._copy = t, self.forward(self.x_known, t, self.noise.draw().to(self.x_known))
            copy = self._copy
        return torch.where(self.mask, z, copy.to(z.dtype))

    def jump(self, z: Tensor, t: float, s: float) -> Tensor:
        self._t = None  # the repeated level draws a new copy of the known pixels
        return self.transition(z, t, s, self.noise.draw().to(z))


def replacement_for(method: str, process, x_known: Tensor, mask: Tensor, noise_mode: str = "auto",
                    repeats: int = 1) -> Callable[[object, Tensor], Hook]:
    """known(noise, z0) -> the hook of one batch: `pipeline.sample(..., known=...)` calls it with
    the batch's ParticleNoise and starting particles z0. x_known (n, *shape) in model space.
    repeats: RePaint's resampling, every method (RESAMPLE holds the measured defaults)."""
    mode = NOISE_MODES[method] if noise_mode == "auto" else noise_mode
    if mode not in ("fresh", "fixed"):
        raise ValueError(f"noise mode must be auto, fresh or fixed, got {noise_mode!r}")
    forward = fm_forward if method == "fm" else vp_forward(process)
    transition = None if repeats == 1 else fm_transition if method == "fm" else vp_transition(process)

    def build(noise, z0: Tensor) -> Hook:
        return Replacement(x_known.to(z0), mask, forward, noise, z0 if mode == "fixed" else None, repeats, transition)

    return build
