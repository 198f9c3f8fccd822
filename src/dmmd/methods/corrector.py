"""DMMD as a corrector: a flow-matching predictor step, then MMD-flow steps at the same noise level.

Score-based samplers follow each predictor step with a few Langevin corrector steps that pull the
particles back to the law of the data noised to the current level. Here the corrector is the MMD
gradient flow of a trained DMMD discriminator phi(x, t) (linear kernel), toward the data noised to
that level:

    x_i <- x_i + eta_t g_i,   g_i = grad_x <phi(x, t), m_t - mean_j phi(x_j, t)> at x = x_i

with m_t the mean features of training data noised to t (the population term held fixed while
differentiating: the witness of the exact linear flow). The step is normalised like a Langevin
corrector's signal-to-noise rule: eta_t = r sigma_t / rms(g), rms(g) the root-mean-square
coordinate of the batch's gradients, so every corrector step moves a coordinate by r sigma_t on
average whatever the features' scale. The flow-matching net and the DMMD discriminator are
trained separately and left unchanged.

Levels: the rectified flow x_s = (1 - s) x0 + s x1 (noise at s = 0) and the VP process
x_t = alpha_t x1 + sigma_t eps have the same law up to scale when alpha_t / sigma_t = s / (1 - s);
then x_t = (alpha_t / s) x_s. `vp_level` finds t by bisection (clamped to [t_min, t_max]).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmmd.math.noising import VPProcess
from dmmd.methods import flow_matching
from dmmd.methods.discriminator import Discriminator


def vp_level(process: VPProcess, s: float) -> tuple[float, float]:
    """(t, scale) with alpha_t / sigma_t = s / (1 - s) and x_t = scale * x_s; s in (0, 1]."""
    if not 0 < s <= 1:
        raise ValueError(f"s must be in (0, 1], got {s}")

    def snr(t: float) -> float:  # alpha / sigma, decreasing in t
        a = float(process.alpha(torch.tensor(t, dtype=torch.float64)))
        return a / max((1 - a * a) ** 0.5, 1e-300)

    target = float("inf") if s == 1 else s / (1 - s)
    lo, hi = process.t_min, process.t_max
    if target >= snr(lo):
        t = lo
    elif target <= snr(hi):
        t = hi
    else:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if snr(mid) > target else (lo, mid)
        t = 0.5 * (lo + hi)
    alpha = float(process.alpha(torch.tensor(t, dtype=torch.float64)))
    return t, alpha / s


def noised_mean(disc: Discriminator, train: Tensor, process: VPProcess, t: float, seed: int = 0,
                batch_size: int = 1024) -> Tensor:
    """m_t = mean_i phi(x_i noised to t, t) over the training rows, (D,)."""
    gen = torch.Generator(device=train.device).manual_seed(seed)
    with torch.no_grad():
        total = sum(disc.features(process.corrupt(b, t, generator=gen), t).sum(0) for b in train.split(batch_size))
    return total / len(train)


def corrector_gradient(disc: Discriminator, x: Tensor, t: float, target: Tensor) -> Tensor:
    """g_i = grad_x <phi(x, t), target - mean_j phi(x_j, t)> at every particle (population term fixed)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        feats = disc.features(xg, t)  # (N, D)
        (grad,) = torch.autograd.grad((feats @ (target - feats.detach().mean(0))).sum(), xg)
    return grad


def corrector_step(disc: Discriminator, x: Tensor, t: float, sigma: float, target: Tensor, snr: float) -> Tensor:
    """One normalised corrector step: x + r sigma g / rms(g) (x unchanged when every g is 0)."""
    g = corrector_gradient(disc, x, t, target)
    rms = g.square().mean().sqrt()
    if not rms > 0:
        return x.detach().clone()
    return x.detach() + (snr * sigma / rms) * g


def fm_levels(process: VPProcess, num_steps: int) -> list[tuple[float, float]]:
    """(t, scale) of the VP level after each Euler step of a num_steps flow-matching run."""
    return [vp_level(process, (k + 1) / num_steps) for k in range(num_steps)]


def level_targets(disc: Discriminator, train: Tensor, process: VPProcess, num_steps: int) -> Tensor:
    """m_t at the level after each predictor step, (num_steps, D): the corrector's calibration."""
    return torch.stack([noised_mean(disc, train, process, t) for t, _ in fm_levels(process, num_steps)])


@torch.no_grad()
def fm_predictor_corrector(net: nn.Module, disc: Discriminator, z: Tensor, process: VPProcess, num_steps: int,
                           targets: Tensor, corrector_steps: int = 1, snr: float = 0.1,
                           skip_last: bool = False, progress=None, predictor: str = "euler") -> Tensor:
    """Flow matching from noise z (s = 0) to data (s = 1) in num_steps steps of the predictor (euler,
    or heun with its last step Euler, as flow_matching.sample); after each step `corrector_steps`
    DMMD corrector steps at the matching VP level (in VP units, then back). targets:
    level_targets(...) for num_steps. skip_last: no corrector after the final step. NFE: the
    predictor's evaluations (S, or 2 S - 1 for heun) + num_steps * corrector_steps DMMD steps (a
    forward and an input gradient each). progress: update(1) per evaluation of either network."""
    if targets.shape[0] != num_steps:
        raise ValueError(f"targets: expected {num_steps} levels, found {targets.shape[0]}")
    if predictor not in flow_matching.SAMPLERS:
        raise ValueError(f"predictor must be one of {', '.join(flow_matching.SAMPLERS)}, got {predictor!r}")
    x = z.detach().clone()
    h = 1.0 / num_steps
    for k, (t, scale) in enumerate(fm_levels(process, num_steps)):
        v = net(x, k * h)
        if predictor == "heun" and k < num_steps - 1:
            x = flow_matching.heun_step(net, x, v, (k + 1) * h, h)
            if progress is not None:
                progress.update(1)
        else:
            x = flow_matching.euler_step(v, x, h)
        if progress is not None:
            progress.update(1)
        if skip_last and k == num_steps - 1:
            continue
        sigma = float(process.sigma(torch.tensor(t, dtype=torch.float64)))
        xv = x * scale
        for _ in range(corrector_steps):
            xv = corrector_step(disc, xv, t, sigma, targets[k], snr)
            if progress is not None:
                progress.update(1)
        x = xv / scale
    return x
