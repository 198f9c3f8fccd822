"""Algorithm 2: the noise-adaptive MMD gradient flow, and the KALE flow (SPEC 5, 6).

Particles z start from the process's law at t_max. For each level t of a grid from t_max to
t_min, N_s steps of

    z <- z + eta * grad_z f_t(z~),    z~ = z + c_inj * sigma_t * u,  u ~ N(0, I)   (injection)

with f_t the witness of the data against the particles at level t, the particle term held fixed
while differentiating. After every level but the last, z <- z + c_re * sigma_t * N(0, I).

Particle terms ("what the particles look like now"):
  exact          the population's own features at the evaluation points z~ (any kernel;
                 leave-one-out optional). For the linear kernel with c_inj = 0 one step equals
                 z - eta * (N/2) * grad_z MMD2_biased(phi(z), phi(x)).
  own            (a) each particle's own features: grad of -1/2 ||mu_data - phi(z)||^2
  data_noised    (b) the stored mean features of data noised to level t
  replay         (c) the stored particle means of one exact run (mean-field replay)
The last three use no population: each particle moves on its own, so sample i depends only on
its own noise. The KALE flow ascends the critic h(., t).

Every function here is pure: no plotting, no files. Noise comes from a `ParticleNoise`, which
gives particle i its own generator seeded from (seed, index), so a particle's path does not
depend on the batch it is drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .discriminator import Discriminator
from .noising import Process

_SEED_STRIDE = 1_000_003


class ParticleNoise:
    """Per-particle Gaussian noise: particle `start + i` draws from its own seeded generator."""

    def __init__(self, seed: int, num: int, shape: tuple[int, ...], start: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.shape, self.device, self.dtype = tuple(shape), device, dtype
        self.generators = [torch.Generator().manual_seed(seed * _SEED_STRIDE + start + i) for i in range(num)]

    def draw(self) -> Tensor:
        out = torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
        return out.to(device=self.device, dtype=self.dtype)

    def prior(self, process: Process) -> Tensor:
        out = torch.cat([process.prior((1, *self.shape), generator=g) for g in self.generators])
        return out.to(device=self.device, dtype=self.dtype)


@dataclass
class FlowSettings:
    num_levels: int = 10
    steps_per_level: int = 10
    step_size: float = 0.1
    grid: str = "uniform"
    inject: float = 0.0
    renoise: float = 0.0
    leave_one_out: bool = False
    chunk_size: int = 1024

    @property
    def num_steps(self) -> int:
        return self.num_levels * self.steps_per_level

    def tag(self) -> str:
        """The settings a stored replay trajectory depends on."""
        return (f"T={self.num_levels},Ns={self.steps_per_level},eta={self.step_size:g},grid={self.grid},"
                f"inject={self.inject:g},renoise={self.renoise:g},loo={int(self.leave_one_out)}")


# A particle term maps (features (n, D) with grad, level k, global step s, population features
# (N, D) detached or None, chunk slice) to witness values (n,) whose gradient moves the chunk.
Term = Callable[[Tensor, int, int, Tensor | None, slice], Tensor]


def _population_features(disc, z, t, chunk_size) -> Tensor:
    with torch.no_grad():
        return torch.cat([disc.features(z[i:i + chunk_size], t) for i in range(0, z.shape[0], chunk_size)])


def run_flow(disc: Discriminator, z: Tensor, grid: Tensor, settings: FlowSettings, process: Process,
             term: Term, noise: ParticleNoise | None = None, needs_population: bool = False,
             record: Callable[[int, Tensor], None] | None = None, progress=None) -> Tensor:
    """The shared loop of every flow; returns the final particles (a new tensor)."""
    z = z.detach().clone()
    n, step = z.shape[0], 0
    one_pass = not needs_population or n <= settings.chunk_size
    if (settings.inject or settings.renoise) and noise is None:
        raise ValueError("noise in the flow (inject or renoise > 0) needs a ParticleNoise source")
    for k, t in enumerate(grid.tolist()):
        sigma = float(process.noise_scale(torch.tensor(t)))
        for _ in range(settings.steps_per_level):
            z_eval = z + settings.inject * sigma * noise.draw() if settings.inject else z
            population = None
            if needs_population and not one_pass:
                population = _population_features(disc, z_eval, t, settings.chunk_size)
            new_z = torch.empty_like(z)
            for i in range(0, n, settings.chunk_size):
                chunk = slice(i, min(i + settings.chunk_size, n))
                zc = z_eval[chunk].detach().requires_grad_(True)
                with torch.enable_grad():
                    feats = disc.features(zc, t)
                    pop = feats.detach() if needs_population and one_pass else population
                    values = term(feats, k, step, pop, chunk)
                    (grad,) = torch.autograd.grad(values.sum(), zc)
                new_z[chunk] = z[chunk] + settings.step_size * grad
                if record is not None and pop is not None and i == 0:
                    record(step, pop.mean(0))
            z = new_z
            step += 1
            if progress is not None:
                progress.update(1)
        if settings.renoise and k < len(grid) - 1:
            z = z + settings.renoise * sigma * noise.draw()
    return z


def exact_term(disc: Discriminator, grid: Tensor, reference: Tensor, leave_one_out: bool = False) -> Term:
    """The exact interacting-particle witness. reference: (T, D) data mean features for the
    linear kernel, or (T, M, D) reference data features for any other kernel."""
    linear = disc.kernel_name == "linear"

    def term(feats, k, step, pop, chunk):
        n = pop.shape[0]
        own = pop[chunk]
        if linear:
            pop_sum = pop.sum(0)
            particle = feats @ pop_sum if not leave_one_out else feats @ pop_sum - (feats * own).sum(1)
            return feats @ reference[k] - particle / (n - 1 if leave_one_out else n)
        kernel = disc.kernel(grid[k])
        data_term = kernel(feats, reference[k]).mean(1)
        k_pop = kernel(feats, pop)  # (n_chunk, N)
        if leave_one_out:
            self_k = torch.diagonal(kernel(feats, own))
            return data_term - (k_pop.sum(1) - self_k) / (n - 1)
        return data_term - k_pop.mean(1)

    return term


def mean_term(data_mean: Tensor, particle_mean: Tensor | None, per_step: bool = False) -> Term:
    """Population-free linear witness <phi(z), mu_data(t) - m>: m the particle's own features
    (particle_mean None, reading (a)), a stored (T, D) level mean (b) or a (T N_s, D) step mean (c)."""

    def term(feats, k, step, pop, chunk):
        if particle_mean is None:
            return (feats * (data_mean[k] - feats.detach())).sum(1)
        m = particle_mean[step] if per_step else particle_mean[k]
        return feats @ (data_mean[k] - m)

    return term


def kale_term(disc: Discriminator) -> Term:
    def term(feats, k, step, pop, chunk):
        return disc.critic_value(feats)

    return term


def exact_flow(disc, z, grid, settings, process, reference, noise=None, record_means=False, progress=None):
    """Exact flow; returns (particles, (T N_s, D) particle means per step or None)."""
    means: list[Tensor] = []
    record = (lambda step, m: means.append(m)) if record_means else None
    out = run_flow(disc, z, grid, settings, process, exact_term(disc, grid, reference, settings.leave_one_out),
                   noise, needs_population=True, record=record, progress=progress)
    return out, (torch.stack(means) if record_means else None)


def approx_flow(disc, z, grid, settings, process, data_mean, particle_mean=None, per_step=False,
                noise=None, progress=None):
    """Approximate (population-free) flow for the linear kernel: readings (a), (b) or (c)."""
    if disc.kernel_name != "linear":
        raise ValueError(f"the approximate sampler needs the linear kernel, this model uses {disc.kernel_name!r}")
    return run_flow(disc, z, grid, settings, process, mean_term(data_mean, particle_mean, per_step),
                    noise, progress=progress)


def kale_flow(disc, z, grid, settings, process, noise=None, progress=None):
    """Particles ascend the KALE critic h(., t) on the same annealed schedule."""
    return run_flow(disc, z, grid, settings, process, kale_term(disc), noise, progress=progress)


def level_features(disc: Discriminator, x: Tensor, grid: Tensor, batch_size: int = 1024,
                   reduce_mean: bool = True) -> Tensor:
    """phi(x, t_k) for every grid level: (T, D) means, or (T, M, D) when reduce_mean is False."""
    out = []
    for t in grid.tolist():
        feats = _population_features(disc, x, t, batch_size)
        out.append(feats.mean(0) if reduce_mean else feats)
    return torch.stack(out)
