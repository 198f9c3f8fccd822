"""Flow matching (rectified flow) on the DMMD backbones: the peer a user would pick today (docs/compare.md).

Data x1, noise x0 ~ N(0, I), t ~ U[0, 1], x_t = (1 - t) x0 + t x1; the network v(x_t, t) regresses
the velocity x1 - x0:

    loss = mean over batch and coordinates of (v(x_t, t) - (x1 - x0))^2

Sampling integrates dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data) on the uniform grid
t_k = k / S, k = 0..S:

    Euler  x_{k+1} = x_k + h v(x_k, t_k)                                    (S = NFE steps)
    Heun   x~ = x_k + h v(x_k, t_k);  x_{k+1} = x_k + h/2 (v(x_k, t_k) + v(x~, t_{k+1}))
           its last step is Euler, so S steps cost 2 S - 1 evaluations (S = (NFE + 1) // 2)

The network is the DDPM baseline's (`dmmd.methods.ddpm.build_eps_net`: the same backbone with an output
head of the data's shape), fed t in [0, 1]. Particles start from their own `ParticleNoise`
draws, and the network acts on each sample separately, so sample i depends only on (seed, i).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmmd.math.conditioning import guided_output

SAMPLERS = ("euler", "heun")


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    return t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def fm_loss(net: nn.Module, x1: Tensor, generator: torch.Generator | None = None,
            y: Tensor | None = None) -> tuple[Tensor, dict]:
    """Rectified-flow loss on a data batch x1 (N, ...); returns (loss, {"mse": detached loss}).

    Draws, in this order from `generator` on x1's device: t ~ U[0, 1] (N, float64), then
    x0 ~ N(0, I) in x1's dtype. y: (N,) labels of a conditional net.
    """
    t = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=torch.float64)
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    tb = _bcast(t, x1)
    x_t = (1 - tb) * x0 + tb * x1
    loss = ((net(x_t, t) if y is None else net(x_t, t, y)) - (x1 - x0)).square().mean()
    return loss, {"mse": loss.detach()}


def num_steps(nfe: int, method: str) -> int:
    """Integration steps that fit an evaluation budget."""
    if method not in SAMPLERS:
        raise ValueError(f"method must be one of {', '.join(SAMPLERS)}, got {method!r}")
    return nfe if method == "euler" else max(1, (nfe + 1) // 2)


def num_evaluations(nfe: int, method: str, repeats: int = 1) -> int:
    """Network evaluations `sample` makes for a budget of nfe (Heun: 2 S - 1 <= nfe); with
    inpainting's resampling every step but the last runs `repeats` times."""
    steps = num_steps(nfe, method)
    return (steps - 1) * (1 if method == "euler" else 2) * repeats + 1


def euler_step(v: Tensor, x: Tensor, h: float) -> Tensor:
    return x + h * v


def heun_step(net: nn.Module, x: Tensor, v: Tensor, t_next: float, h: float) -> Tensor:
    """One Heun step from x with velocity v = net(x, t) already evaluated; one more evaluation."""
    x_pred = x + h * v
    return x + 0.5 * h * (v + net(x_pred, t_next))


def _velocity(net: nn.Module, x: Tensor, t: float, chunk_size: int | None, y: Tensor | None = None,
              guidance: float = 0.0) -> Tensor:

    if chunk_size is None or x.shape[0] <= chunk_size:
        return guided_output(net, x, t, y, guidance)
    return torch.cat([guided_output(net, x[i:i + chunk_size], t, None if y is None else y[i:i + chunk_size], guidance)
                      for i in range(0, x.shape[0], chunk_size)])


@torch.no_grad()
def sample(net: nn.Module, z: Tensor, nfe: int, method: str = "euler", progress=None,
           chunk_size: int | None = None, known=None, y: Tensor | None = None, guidance: float = 0.0) -> Tensor:
    """Integrate from noise z (N, ...) at t = 0 to t = 1 with at most nfe network evaluations.

    progress: anything with update(1), called after each network evaluation. Returns a new tensor.
    known: inpainting (dmmd.math.inpaint): every evaluation at time t sees known(x, t), the known
    pixels on their path at t; the result ends with known(x, None), the known pixels exact.
    A hook with repeats U > 1 (RePaint's resampling) runs every step but the last U times, with
    x <- known.jump(x, t_next, t) (the forward transition back to t) in between.
    y: (N,) labels for a conditional net, with classifier-free guidance
    v = (1 + guidance) v(x, t, y) - guidance v(x, t, null).
    """
    if method not in SAMPLERS:
        raise ValueError(f"method must be one of {', '.join(SAMPLERS)}, got {method!r}")
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    steps = num_steps(nfe, method)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    net_c = (lambda x, t: _velocity(net, x, t, chunk_size, y, guidance))
    if known is not None:  # the Heun corrector's point gets its known pixels at t_next too
        net_c = (lambda x, t: _velocity(net, known(x, t), t, chunk_size, y, guidance))
    x = z.detach().clone()
    repeats = getattr(known, "repeats", 1)
    for k in range(steps):
        t, t_next = grid[k], grid[k + 1]
        h = t_next - t
        for u in range(repeats if k < steps - 1 else 1):
            if u:  # resampling: back from t_next's noise to t's
                x = known.jump(x, t_next, t)
            if known is not None:
                x = known(x, t)
            v = net_c(x, t)
            if progress is not None:
                progress.update(1)
            if method == "heun" and k < steps - 1:
                x = heun_step(net_c, x, v, t_next, h)
                if progress is not None:
                    progress.update(1)
            else:
                x = euler_step(v, x, h)
    return x if known is None else known(x, None)
