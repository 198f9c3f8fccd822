"""The discriminator objectives of Algorithm 1 and the KALE variant (docs/method.md).

For each of N_n levels t_j (one level shared by the batch at that level):
    a = phi(x, t_j),  b = phi(y, t_j),  y = corrupt(x', t_j)      (x, x' independent batches)
    loss_j = -MMD2_unbiased(a, b) + lambda_gp * GP_j + lambda_l2 * L2_j
    GP_j   = mean_u (||grad_u f_j(u)|| - 1)^2,  u = r x + (1 - r) y,  r ~ U[0, 1] per sample
             (train.gp_fraction < 1: the mean over the first ceil(gp_fraction B) interpolates only)
             f_j the batch witness at level t_j (features of x and y not detached)
    L2_j   = mean(a^2) + mean(b^2)
Loss = mean_j loss_j. Lazy regularisation (train.gp_every = k, StyleGAN2's lazy R1; docs/gpu.md): the
training loop passes gp_scale = k on every k-th step (the penalty weighted k lambda_gp) and
gp_scale = 0 on the others, where the interpolates' forward and the double backward are skipped.
Its 'reuse' form (train.gp_lazy = reuse): the penalty at weight lambda_gp on steps 1, k + 1, ...,
its gradient kept and added again on the k - 1 steps after (dmmd_loss_parts with hold_population). KALE replaces -MMD2 by -(E_P[h] - E_{P_t}[exp h] + 1) with h = w . phi + b
and uses a one-sided penalty relu(||grad h|| - 1)^2.

All levels' clean and corrupted inputs go through the backbone in one forward pass of 2 N_n B
inputs, the interpolates in a second one, so that the input gradient and its double backward
run over the interpolates' graph only (1.4-1.9x faster than one pass of 3 N_n B; same loss). Under data-parallel
training (dmmd.runtime.distributed) x and x' are the global batch, identical on every rank; a rank
featurises only its slice, gathers features for the MMD of the whole batch, and normalises its
local penalty sums by the global count, so the loss summed over ranks is the single-process loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from dmmd.math import divergences as dv
from dmmd.math.noising import Process
from dmmd.methods.discriminator import Discriminator
from dmmd.runtime.distributed import Context, gather_rows


class LossParts(NamedTuple):
    """dmmd_loss_parts' result. rest: -divergence + lambda_l2 L2; penalty: gp_scale lambda_gp GP (0.0
    when gp_scale = 0); terms: {name: detached value}; features: (a, b), the clean and corrupted
    features of every level, (L, B, D) each, in the graph; held: with hold_population, the detached
    copies of (a, b) that the penalty's witness reads (leaves that require grad), else None."""
    rest: Tensor
    penalty: Tensor | float
    terms: dict
    features: tuple[Tensor, Tensor]
    held: tuple[Tensor, Tensor] | None


def _repeat(x: Tensor, times: int) -> Tensor:
    return x.repeat(times, *([1] * (x.ndim - 1)))


def gp_rows_per_rank(local: int, gp_fraction: float) -> int:
    """Interpolates per level block that the gradient penalty sees on one rank."""
    if not 0.0 < gp_fraction <= 1.0:
        raise ValueError(f"gp_fraction must be in (0, 1], got {gp_fraction}")
    return max(1, math.ceil(gp_fraction * local - 1e-9))


def dmmd_loss(disc: Discriminator, x: Tensor, x_prime: Tensor, t_levels: Tensor, process: Process,
              lambda_gp: float, lambda_l2: float, generator: torch.Generator | None = None,
              ctx: Context = Context(), gp_fraction: float = 1.0, gp_scale: float = 1.0,
              y: Tensor | None = None, y_prime: Tensor | None = None) -> tuple[Tensor, dict]:
    """Algorithm 1's loss for one step; returns (loss, {term: detached tensor}) with terms mmd2 (or
    kale), gp, l2. With ctx.world_size > 1 it is this rank's share of the global loss. The loss is
    the sum of dmmd_loss_parts' two parts (arguments as there)."""
    parts = dmmd_loss_parts(disc, x, x_prime, t_levels, process, lambda_gp, lambda_l2, generator, ctx,
                            gp_fraction, gp_scale, y, y_prime)
    return parts.rest + parts.penalty, parts.terms


def dmmd_loss_parts(disc: Discriminator, x: Tensor, x_prime: Tensor, t_levels: Tensor, process: Process,
                    lambda_gp: float, lambda_l2: float, generator: torch.Generator | None = None,
                    ctx: Context = Context(), gp_fraction: float = 1.0, gp_scale: float = 1.0,
                    y: Tensor | None = None, y_prime: Tensor | None = None,
                    hold_population: bool = False) -> LossParts:
    """Algorithm 1's loss in two parts, rest = -divergence + lambda_l2 L2 and penalty = gp_scale
    lambda_gp GP (0.0, a float, when gp_scale = 0), with the terms and the features (LossParts).

    hold_population: the penalty's witness reads the batch features (a, b) through detached leaves
    (LossParts.held), so that the penalty's graph is the interpolates' alone. Lazy regularisation in
    its 'reuse' form (train.gp_lazy) takes the gradient of the penalty with respect to the
    parameters along that graph and with respect to the leaves (c_a, c_b); the penalty's full
    gradient is the first plus the gradient of <c_a, a> + <c_b, b> (a, b in the graph), which rides
    on the backward pass of `rest`: no part of the network is traversed twice.

    gp_scale multiplies lambda_gp; gp_scale = 0 leaves the penalty out (no 'gp' term): nothing
    of it is computed, though the interpolation weights are still drawn, so the generator's
    stream is the same on steps with and without the penalty.

    y, y_prime: (B,) labels of x and x' for a conditional discriminator (docs/conditional.md): both sides are
    featurised with their row's own label, phi(x, t, y) and phi(corrupt(x', t), t, y'), a linear-
    kernel MMD on the pairs (x, y); the interpolates take the clean row's label."""
    if gp_scale < 0:
        raise ValueError(f"gp_scale must be >= 0, got {gp_scale}")
    num_levels, batch = t_levels.shape[0], x.shape[0]
    if batch % ctx.world_size:
        raise ValueError(f"batch size {batch} must be divisible by the number of processes {ctx.world_size}")
    t = t_levels.to(device=x.device, dtype=torch.float32).repeat_interleave(batch)  # (L B,)
    xs = _repeat(x, num_levels)
    ys = process.corrupt(_repeat(x_prime, num_levels), t.double(), generator=generator)
    r = torch.rand(xs.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    r = r.view(-1, *([1] * (x.ndim - 1)))
    u = r * xs + (1 - r) * ys
    conditional = y is not None
    if conditional:
        ya, yb = _repeat(y, num_levels), _repeat(y_prime, num_levels)
    local = batch // ctx.world_size
    if ctx.active:  # this rank's rows of every level block
        lo = ctx.rank * local
        rows = torch.cat([torch.arange(j * batch + lo, j * batch + lo + local) for j in range(num_levels)])
        xs, ys, u, t = xs[rows], ys[rows], u[rows], t[rows]
        if conditional:
            ya, yb = ya[rows.to(ya.device)], yb[rows.to(yb.device)]
    labels = dict(y=torch.cat([ya, yb])) if conditional else {}
    a_loc, b_loc = disc.features(torch.cat([xs, ys]), torch.cat([t, t]), **labels).view(2, num_levels, local, -1).unbind(0)
    a, b = gather_rows(a_loc, 1, ctx), gather_rows(b_loc, 1, ctx)  # (L, B, D)
    gp_rows, penalise = gp_rows_per_rank(local, gp_fraction), gp_scale > 0
    if gp_rows < local:  # the penalty on the first gp_rows interpolates of every level block
        keep = (torch.arange(num_levels).view(-1, 1) * local + torch.arange(gp_rows).view(1, -1)).flatten()
        u, t = u[keep.to(u.device)], t[keep.to(t.device)]
        if conditional:
            ya = ya[keep.to(ya.device)]
    if penalise:
        u = u.detach().requires_grad_(True)
        fu = disc.features(u, t, **(dict(y=ya) if conditional else {})).view(num_levels, gp_rows, -1)  # (L, gp_rows, D)

    if disc.objective == "kale":
        h_a, h_b = (disc.critic_value(f.reshape(-1, f.shape[-1])).view(num_levels, -1) for f in (a, b))
        divergence = torch.stack([dv.kale_objective(h_a[j], h_b[j]) for j in range(num_levels)])
        if penalise:
            witness_values = disc.critic_value(fu.reshape(-1, fu.shape[-1])).view(num_levels, -1)
    else:
        divergence, witness_values = [], []
        wa, wb = held = (a.detach().requires_grad_(True), b.detach().requires_grad_(True)) if hold_population else (a, b)
        for j in range(num_levels):
            kernel = disc.kernel(t_levels[j])
            if disc.kernel_name == "linear":
                divergence.append(dv.mmd2_linear_unbiased(a[j], b[j]))
                if penalise:
                    witness_values.append(dv.linear_witness(fu[j], wa[j].mean(0), wb[j].mean(0)))
            else:
                divergence.append(dv.mmd2(kernel, a[j], b[j], unbiased=True))
                if penalise:  # held: the kernel's width is built again, so the two graphs share no node
                    own = disc.kernel(t_levels[j]) if hold_population else kernel
                    witness_values.append(dv.witness(own, fu[j], wa[j], wb[j]))
        divergence = torch.stack(divergence)
        witness_values = torch.stack(witness_values) if penalise else None

    penalty = 0.0
    if penalise:
        (grad_u,) = torch.autograd.grad(witness_values.sum(), u, create_graph=True)
        excess = grad_u.flatten(1).norm(dim=1) - 1.0
        gp_count = num_levels * gp_rows * ctx.world_size  # global number of penalised interpolates
        gp = (excess.clamp(min=0.0) if disc.objective == "kale" else excess).pow(2).sum() / gp_count
        penalty = gp_scale * lambda_gp * gp
    count = num_levels * batch  # global number of rows per feature set
    l2 = (a_loc.pow(2).sum() + b_loc.pow(2).sum()) / (count * a_loc.shape[-1])
    rest = -divergence.mean() / ctx.world_size + lambda_l2 * l2
    name = "kale" if disc.objective == "kale" else "mmd2"
    terms = {name: divergence.mean().detach(), **({"gp": gp.detach()} if penalise else {}), "l2": l2.detach()}
    return LossParts(rest, penalty, terms, (a, b), held if hold_population and disc.objective != "kale" else None)
