"""The MMD-GAN of the kernel-width study (Li et al. 2017, with the gradient penalty of Binkowski
et al. 2018): a generator G(z) (MLP), features psi(x) (MLP, no t), one RBF width w = exp(log_w),
trained adversarially; the study records w per iteration."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dmmd.math import divergences as dv


# ------------------------------------------------------------------------------------- MMD-GAN
@dataclass
class GANSettings:
    iterations: int = 2000
    batch_size: int = 256
    latent_dim: int = 8
    hidden: int = 128
    feature_dim: int = 16
    init_width: float = 1.0  # the same start as the DMMD preset's model.init_width
    critic_steps: int = 2  # critic updates per generator update
    lambda_gp: float = 1.0
    lambda_l2: float = 0.1
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    tanh_output: bool = False  # digits live in [-1, 1]
    seed: int = 0


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class MMDGAN(nn.Module):
    """Generator G: R^latent -> R^d, critic features psi: R^d -> R^D, one RBF width exp(log_width)."""

    def __init__(self, data_dim: int, s: GANSettings):
        super().__init__()
        self.latent_dim = s.latent_dim
        gen = _mlp([s.latent_dim, s.hidden, s.hidden, data_dim])
        self.generator = nn.Sequential(gen, nn.Tanh()) if s.tanh_output else gen
        self.features = _mlp([data_dim, s.hidden, s.hidden, s.feature_dim])
        self.log_width = nn.Parameter(torch.tensor(math.log(s.init_width)))

    def width(self) -> Tensor:
        return self.log_width.exp()

    def kernel(self, a: Tensor, b: Tensor) -> Tensor:
        return dv.rbf_kernel(a, b, self.width())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.generator(torch.randn(n, self.latent_dim, generator=generator))

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.features.parameters(), self.log_width]


def mmd_gan_critic_loss(gan: MMDGAN, x: Tensor, fake: Tensor, lambda_gp: float, lambda_l2: float,
                        generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """-MMD2_unbiased(psi(x), psi(fake)) + lambda_gp mean_u (||grad_u f(u)|| - 1)^2 + lambda_l2 L2,
    u = r x + (1 - r) fake, f the batch witness, L2 = mean squared feature (as in Algorithm 1)."""
    r = torch.rand(x.shape[0], 1, generator=generator, dtype=x.dtype)
    u = (r * x + (1 - r) * fake).detach().requires_grad_(True)
    a, b, fu = gan.features(x), gan.features(fake), gan.features(u)
    mmd2 = dv.mmd2(gan.kernel, a, b, unbiased=True)
    (grad_u,) = torch.autograd.grad(dv.witness(gan.kernel, fu, a, b).sum(), u, create_graph=True)
    gp = (grad_u.norm(dim=1) - 1.0).pow(2).mean()
    l2 = 0.5 * (a.pow(2).mean() + b.pow(2).mean())
    loss = -mmd2 + lambda_gp * gp + lambda_l2 * l2
    return loss, {"mmd2": float(mmd2.detach()), "gp": float(gp.detach()), "l2": float(l2.detach())}


def mmd_gan_generator_loss(gan: MMDGAN, x: Tensor, fake: Tensor) -> Tensor:
    """MMD2_unbiased(psi(x), psi(fake)); gradients reach G through fake."""
    return dv.mmd2(gan.kernel, gan.features(x), gan.features(fake), unbiased=True)


def train_mmd_gan(x_train: Tensor, s: GANSettings) -> tuple[MMDGAN, dict]:
    """Adversarial training; history: width and critic MMD^2 per iteration (after its critic steps)."""
    torch.manual_seed(s.seed)
    x_train = x_train.flatten(1)
    gan = MMDGAN(x_train.shape[1], s)
    opt_c = torch.optim.Adam(gan.critic_parameters(), lr=s.lr, betas=s.betas)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=s.lr, betas=s.betas)
    gen = torch.Generator().manual_seed(s.seed)
    history: dict[str, list[float]] = {"width": [], "mmd2": []}

    def batch():
        return x_train[torch.randint(0, x_train.shape[0], (s.batch_size,), generator=gen)]

    for _ in range(s.iterations):
        for _ in range(s.critic_steps):
            with torch.no_grad():
                fake = gan.sample(s.batch_size, gen)
            loss, terms = mmd_gan_critic_loss(gan, batch(), fake, s.lambda_gp, s.lambda_l2, gen)
            opt_c.zero_grad(set_to_none=True)
            loss.backward()
            opt_c.step()
        g_loss = mmd_gan_generator_loss(gan, batch(), gan.sample(s.batch_size, gen))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        history["width"].append(float(gan.width().detach()))
        history["mmd2"].append(terms["mmd2"])
    return gan.eval(), history
