"""Forward corruption processes (docs/method.md), shared by training and sampling.

A process corrupts clean data x_0 to noise level t in [t_min, t_max]:

    VP (Gaussian):  x_t = alpha_t * x_0 + sigma_t * eps,   eps ~ N(0, I)
    Blur:           x_t = G_{w(t)} * x_0 + noise_std * eps  (Gaussian blur of width w(t), images only)

VP-linear is the continuous-time limit of DDPM's linear beta schedule:
beta(s) = beta_min + s (beta_max - beta_min), alpha_t = exp(-0.5 int_0^t beta(s) ds),
sigma_t = sqrt(1 - alpha_t^2). Cosine: alpha_t = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s)).
Schedules are computed in float64 and cast to the data's dtype at the end.

Every process exposes ``corrupt(x0, t, generator)``, ``noise_scale(t)`` (the sigma_t that the
sampler's noise in the flow is proportional to) and ``prior(shape, generator)`` (the law at
t_max from which particles start). Any object with these members can be used as a process.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor


class Process(Protocol):
    t_min: float
    t_max: float

    def corrupt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor: ...

    def noise_scale(self, t: Tensor) -> Tensor: ...

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor: ...


def _as_time(t: Tensor | float, n: int, device, dtype=torch.float64) -> Tensor:
    """Broadcast a scalar or (n,) time to an (n,) tensor."""
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"t must be a scalar or have shape ({n},), got {tuple(t.shape)}")
    return t


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1) in like's dtype, to broadcast over a batch."""
    return v.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


class VPProcess:
    """Variance-preserving Gaussian process with a 'linear' (default) or 'cosine' schedule."""

    def __init__(self, schedule: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0,
                 cosine_s: float = 0.008, t_min: float = 1e-3, t_max: float = 1.0):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if schedule == "linear" and not 0.0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.schedule, self.beta_min, self.beta_max, self.cosine_s = schedule, beta_min, beta_max, cosine_s
        self.t_min, self.t_max = float(t_min), float(t_max)

    def alpha(self, t: Tensor) -> Tensor:
        """alpha_t in float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "linear":
            integral = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
            return torch.exp(-0.5 * integral)
        s = self.cosine_s
        f = torch.cos(0.5 * math.pi * (t + s) / (1 + s))
        return (f / math.cos(0.5 * math.pi * s / (1 + s))).clamp(min=0.0)

    def sigma(self, t: Tensor) -> Tensor:
        """sigma_t = sqrt(1 - alpha_t^2) in float64 (-expm1 keeps it accurate at small t)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "linear":
            integral = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
            return torch.sqrt(-torch.expm1(-integral))
        return torch.sqrt((1.0 - self.alpha(t) ** 2).clamp(min=0.0))

    def noise_scale(self, t: Tensor) -> Tensor:
        return self.sigma(t)

    def corrupt(self, x0: Tensor, t: Tensor | float, generator: torch.Generator | None = None,
                noise: Tensor | None = None) -> Tensor:
        t = _as_time(t, x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return _per_sample(self.alpha(t), x0) * x0 + _per_sample(self.sigma(t), x0) * noise

    def prior(self, shape, generator=None, device="cpu", dtype=torch.float32) -> Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def gaussian_blur(x: Tensor, width: Tensor) -> Tensor:
    """Blur each image of x (N, C, H, W) with its own isotropic Gaussian of std width[n] pixels.

    Separable convolution with reflect padding; a width of 0 leaves the image unchanged.
    """
    if x.ndim != 4:
        raise ValueError(f"blur needs images of shape (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    radius = max(1, min(h, w) // 2)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float64)
    width = width.to(torch.float64).clamp(min=1e-6).view(n, 1)
    taps = torch.exp(-0.5 * (offsets.view(1, -1) / width) ** 2)
    taps = (taps / taps.sum(dim=1, keepdim=True)).to(x.dtype)  # (N, 2r+1)
    k = taps.shape[1]
    # Grouped conv: one group per (image, channel), so every image gets its own kernel.
    weight = taps.repeat_interleave(c, dim=0)  # (N*C, K)
    y = x.reshape(1, n * c, h, w)
    y = torch.nn.functional.pad(y, (radius, radius, 0, 0), mode="reflect" if w > radius else "replicate")
    y = torch.nn.functional.conv2d(y, weight.view(n * c, 1, 1, k), groups=n * c)
    y = torch.nn.functional.pad(y, (0, 0, radius, radius), mode="reflect" if h > radius else "replicate")
    y = torch.nn.functional.conv2d(y, weight.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, h, w)


class BlurProcess:
    """Non-Gaussian corruption: Gaussian blur whose width grows linearly in t, plus small noise.

    x_t = blur(x_0, max_width * t) + noise_std * eps. At t_max an image is close to its mean
    colour, so particles start from a flat image of N(prior_mean, prior_std^2) colour per
    channel plus the same small noise.
    """

    def __init__(self, max_width: float = 4.0, noise_std: float = 0.05, prior_mean: float = 0.0,
                 prior_std: float = 0.5, t_min: float = 1e-3, t_max: float = 1.0):
        if max_width <= 0 or noise_std < 0 or prior_std < 0:
            raise ValueError("blur process needs max_width > 0, noise_std >= 0, prior_std >= 0")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self.max_width, self.noise_std = max_width, noise_std
        self.prior_mean, self.prior_std = prior_mean, prior_std
        self.t_min, self.t_max = float(t_min), float(t_max)

    def noise_scale(self, t: Tensor) -> Tensor:
        # The flow's noise follows the blur width, in units of the pixel range.
        return torch.as_tensor(t, dtype=torch.float64) * self.max_width / 8.0 + self.noise_std

    def corrupt(self, x0: Tensor, t: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
        t = _as_time(t, x0.shape[0], x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return gaussian_blur(x0, self.max_width * t) + self.noise_std * noise

    def prior(self, shape, generator=None, device="cpu", dtype=torch.float32) -> Tensor:
        n, c = shape[0], shape[1]
        colour = self.prior_mean + self.prior_std * torch.randn((n, c, 1, 1), generator=generator,
                                                                device=device, dtype=dtype)
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return colour.expand(shape) + self.noise_std * noise


def time_grid(process: Process, num_levels: int, kind: str = "uniform") -> Tensor:
    """Sampling levels from t_max down to t_min (float64, shape (num_levels,)).

    'uniform' spaces levels evenly in t; 'log_sigma' evenly in log of the noise scale; 'log_snr'
    evenly in the log signal-to-noise ratio lambda_t = log(alpha_t^2 / sigma_t^2) (DPM-Solver's
    spacing; a process without alpha_t uses -2 log of its noise scale), solved by bisection in t. The
    top target is floored at lambda = -20: the cosine schedule's alpha_t reaches 0 at t = 1, which
    would put every level next to it; there the first step in lambda is the larger.
    """
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if num_levels == 1:
        return torch.tensor([process.t_max], dtype=torch.float64)
    if kind == "uniform":
        return torch.linspace(process.t_max, process.t_min, num_levels, dtype=torch.float64)
    if kind == "log_sigma":
        fine = torch.linspace(process.t_max, process.t_min, 4096, dtype=torch.float64)
        log_s = torch.log(process.noise_scale(fine).clamp(min=1e-12))
        targets = torch.linspace(float(log_s[0]), float(log_s[-1]), num_levels, dtype=torch.float64)
        # log sigma decreases along `fine`; pick the nearest fine level to each target.
        idx = (log_s.view(1, -1) - targets.view(-1, 1)).abs().argmin(dim=1)
        return fine[idx]
    if kind == "log_snr":
        def lam(t: Tensor) -> Tensor:
            t = torch.as_tensor(t, dtype=torch.float64)
            scale = process.noise_scale(t).clamp(min=1e-300)
            signal = process.alpha(t) if hasattr(process, "alpha") else torch.ones_like(t)
            return 2 * (torch.log(signal.clamp(min=1e-300)) - torch.log(scale))

        ends = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
        targets = torch.linspace(max(float(lam(ends[0])), -20.0), float(lam(ends[1])), num_levels, dtype=torch.float64)
        lo = torch.full_like(targets, process.t_min)  # lambda decreases in t: lam(lo) >= target >= lam(hi)
        hi = torch.full_like(targets, process.t_max)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = lam(mid) > targets
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        grid = 0.5 * (lo + hi)
        grid[0], grid[-1] = process.t_max, process.t_min
        return grid
    raise ValueError(f"grid kind must be 'uniform', 'log_sigma' or 'log_snr', got {kind!r}")
