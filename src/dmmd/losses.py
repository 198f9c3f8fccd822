"""The discriminator objectives of Algorithm 1 (SPEC 4) and the KALE variant (SPEC 6).

For each of N_n levels t_j (one level shared by the batch at that level):
    a = phi(x, t_j),  b = phi(y, t_j),  y = corrupt(x', t_j)      (x, x' independent batches)
    loss_j = -MMD2_unbiased(a, b) + lambda_gp * GP_j + lambda_l2 * L2_j
    GP_j   = mean_u (||grad_u f_j(u)|| - 1)^2,  u = r x + (1 - r) y,  r ~ U[0, 1] per sample
             f_j the batch witness at level t_j (features of x and y not detached)
    L2_j   = mean(a^2) + mean(b^2)
Loss = mean_j loss_j. KALE replaces -MMD2 by -(E_P[h] - E_{P_t}[exp h] + 1) with h = w . phi + b
and uses a one-sided penalty relu(||grad h|| - 1)^2 (SPEC 8).

All levels go through the backbone in one forward pass of 3 N_n B inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import divergences as dv
from .discriminator import Discriminator
from .noising import Process


def _repeat(x: Tensor, times: int) -> Tensor:
    return x.repeat(times, *([1] * (x.ndim - 1)))


def dmmd_loss(disc: Discriminator, x: Tensor, x_prime: Tensor, t_levels: Tensor, process: Process,
              lambda_gp: float, lambda_l2: float, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Algorithm 1's loss for one step; returns (loss, {term: float tensor}) with terms mmd2, gp, l2."""
    num_levels, batch = t_levels.shape[0], x.shape[0]
    t = t_levels.to(device=x.device, dtype=torch.float32).repeat_interleave(batch)  # (L B,)
    xs = _repeat(x, num_levels)
    ys = process.corrupt(_repeat(x_prime, num_levels), t.double(), generator=generator)
    r = torch.rand(xs.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    r = r.view(-1, *([1] * (x.ndim - 1)))
    u = (r * xs + (1 - r) * ys).detach().requires_grad_(True)
    feats = disc.features(torch.cat([xs, ys, u]), torch.cat([t, t, t]))
    a, b, fu = (f.view(num_levels, batch, -1) for f in feats.chunk(3))  # each (L, B, D)

    if disc.objective == "kale":
        h_a, h_b, h_u = (disc.critic_value(f.reshape(num_levels * batch, -1)).view(num_levels, batch)
                         for f in (a, b, fu))
        divergence = torch.stack([dv.kale_objective(h_a[j], h_b[j]) for j in range(num_levels)])
        witness_values = h_u
    else:
        divergence, witness_values = [], []
        for j in range(num_levels):
            kernel = disc.kernel(t_levels[j])
            if disc.kernel_name == "linear":
                divergence.append(dv.mmd2_linear_unbiased(a[j], b[j]))
                witness_values.append(dv.linear_witness(fu[j], a[j].mean(0), b[j].mean(0)))
            else:
                divergence.append(dv.mmd2(kernel, a[j], b[j], unbiased=True))
                witness_values.append(dv.witness(kernel, fu[j], a[j], b[j]))
        divergence, witness_values = torch.stack(divergence), torch.stack(witness_values)

    (grad_u,) = torch.autograd.grad(witness_values.sum(), u, create_graph=True)
    grad_norm = grad_u.flatten(1).norm(dim=1)
    excess = grad_norm - 1.0
    gp = (excess.clamp(min=0.0) if disc.objective == "kale" else excess).pow(2).mean()
    l2 = a.pow(2).mean() + b.pow(2).mean()
    loss = -divergence.mean() + lambda_gp * gp + lambda_l2 * l2
    name = "kale" if disc.objective == "kale" else "mmd2"
    return loss, {name: divergence.mean().detach(), "gp": gp.detach(), "l2": l2.detach()}
