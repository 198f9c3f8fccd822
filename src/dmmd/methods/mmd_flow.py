"""Algorithm 2: the noise-adaptive MMD gradient flow, and the KALE flow (docs/sampling.md).

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
draws particle i's noise from the generator of its aligned block of indices, seeded from (seed,
block), so a particle's path does not depend on the batch it is drawn in.

The exact sampler with more particles than chunk_size needs the whole population's features
before any particle can move. It forwards every chunk once with its autograd graph kept, forms
the population from those features, then back-propagates chunk by chunk: one forward and one
backward per particle, like the approximate sampler. When the kept graphs would exceed
FlowSettings.graph_budget_mb (measured on the first chunk: the bytes its graph saves), it falls
back to a no-grad population pass followed by a forward and backward per chunk (one extra
forward per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from dmmd.math.noising import Process
from dmmd.methods.discriminator import Discriminator

BLOCK_VALUES = 65_536  # values per block draw: a block is at most this many numbers (and 256 rows)
BLOCK_ROWS_MAX = 256
_MASK64 = (1 << 64) - 1


def block_rows(shape: tuple[int, ...]) -> int:
    """Particles per noise block for samples of this shape: the largest power of two <= 256 whose
    block holds at most BLOCK_VALUES numbers (1 for samples larger than that)."""
    values, rows = max(1, math.prod(shape)), 1
    while rows * 2 <= BLOCK_ROWS_MAX and rows * 2 * values <= BLOCK_VALUES:
        rows *= 2
    return rows


def block_seed(seed: int, block: int) -> int:
    """The seed of block `block` of run seed `seed`: splitmix64 of (seed, block), high 32 bits
    (torch's CPU generator keeps only the low 32 bits of manual_seed, so a plain seed * 2^32 +
    block would repeat across seeds)."""
    z = ((seed << 32) + block + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 32


class ParticleNoise:
    """Per-particle Gaussian noise, batched: sample i is a function of (seed, i) only.

    Particles are grouped into aligned blocks of `block_rows(shape)` indices; block b has its own
    generator seeded by block_seed(seed, b) and every draw takes a full block from it. A batch
    [start, start + num) holds the generators of the blocks that overlap it and slices, so whatever
    the batch (start, size), particle i's k-th draw is the same numbers. Draws are made in float32
    on the CPU (identical on every device), then moved to device and dtype.
    """

    def __init__(self, seed: int, num: int, shape: tuple[int, ...], start: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if num < 0 or start < 0:
            raise ValueError(f"ParticleNoise needs num >= 0 and start >= 0, got num={num}, start={start}")
        self.shape, self.device, self.dtype = tuple(shape), device, dtype
        self.num, self.start, self.rows = num, start, block_rows(self.shape)
        first, last = start // self.rows, (start + num - 1) // self.rows
        self.blocks = [(b, torch.Generator().manual_seed(block_seed(seed, b))) for b in range(first, last + 1)] if num else []

    def _fill(self, draw_block, in_place=None) -> Tensor:
        """Assemble (num, *shape) from full-block draws; in_place(generator, view) fills a whole
        block straight into the output (the same numbers as draw_block, without a copy)."""
        out = torch.empty((self.num, *self.shape))
        for b, g in self.blocks:
            lo = b * self.rows
            a, z = max(lo, self.start), min(lo + self.rows, self.start + self.num)
            if in_place is not None and z - a == self.rows:
                in_place(g, out[a - self.start:z - self.start])
            else:
                out[a - self.start:z - self.start] = draw_block(g)[a - lo:z - lo]
        return out.to(device=self.device, dtype=self.dtype)

    def draw(self) -> Tensor:
        """The next N(0, I) draw of every particle: (num, *shape)."""
        return self._fill(lambda g: torch.randn((self.rows, *self.shape), generator=g),
                          lambda g, view: view.normal_(generator=g))

    def prior(self, process: Process) -> Tensor:
        """A draw from process.prior for every particle: (num, *shape)."""
        return self._fill(lambda g: process.prior((self.rows, *self.shape), generator=g))


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
    graph_budget_mb: float = 1024.0  # exact sampler above chunk_size: most MB of autograd graphs kept at once
    step_norm: str = "fixed"  # "gradient": a step moves a coordinate by step_size * sigma_t on average (rms)

    @property
    def num_steps(self) -> int:
        return self.num_levels * self.steps_per_level

    def tag(self) -> str:
        """The settings a stored replay trajectory depends on."""
        return (f"T={self.num_levels},Ns={self.steps_per_level},eta={self.step_size:g},grid={self.grid},"
                f"inject={self.inject:g},renoise={self.renoise:g},loo={int(self.leave_one_out)}"
                + (f",norm={self.step_norm}" if self.step_norm != "fixed" else ""))


# A particle term maps (features (n, D) with grad, level k, global step s, population features
# (N, D) detached or None, chunk slice) to witness values (n,) whose gradient moves the chunk.
Term = Callable[[Tensor, int, int, Tensor | None, slice], Tensor]


def _features(disc, z: Tensor, t, labels: Tensor | None = None) -> Tensor:
    """phi(z, t), or phi(z, t, y) with the particles' labels (a conditional discriminator)."""
    return disc.features(z, t) if labels is None else disc.features(z, t, labels)


def _population_features(disc, z, t, chunk_size, labels: Tensor | None = None) -> Tensor:
    with torch.no_grad():
        return torch.cat([_features(disc, z[i:i + chunk_size], t, None if labels is None else labels[i:i + chunk_size])
                          for i in range(0, z.shape[0], chunk_size)])


def _features_and_graph_bytes(disc: torch.nn.Module, z: Tensor, t, labels: Tensor | None = None) -> tuple[Tensor, int]:
    """phi(z, t) with its graph, and the bytes of the tensors that graph saves for backward (each
    storage once; z's storage and the model's parameters and buffers, held anyway, excluded)."""
    own = {p.untyped_storage().data_ptr() for p in [z, *disc.parameters(), *disc.buffers()]}
    seen: dict[int, int] = {}

    def pack(x: Tensor) -> Tensor:
        storage = x.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        feats = _features(disc, z, t, labels)
    return feats, sum(seen.values())


def _move(term: Term, feats: Tensor, zc: Tensor, k: int, step: int, pop: Tensor | None, chunk: slice) -> Tensor:
    """grad_z of the chunk's summed witness values (frees the chunk's graph)."""
    with torch.enable_grad():
        values = term(feats, k, step, pop, chunk)
        (grad,) = torch.autograd.grad(values.sum(), zc)
    return grad


def run_flow(disc: Discriminator, z: Tensor, grid: Tensor, settings: FlowSettings, process: Process,
             term: Term, noise: ParticleNoise | None = None, needs_population: bool = False,
             record: Callable[[int, Tensor], None] | None = None, progress=None,
             known: Callable[[Tensor, float | None], Tensor] | None = None,
             labels: Tensor | None = None, step_scales: Tensor | None = None) -> Tensor:
    """The shared loop of every flow; returns the final particles (a new tensor).

    Step sizes: settings.step_norm "fixed" moves z by step_size * grad. "gradient" normalises each
    step: z + step_size * sigma_t * grad / rms(grad), rms over every coordinate of the whole batch
    (the exact flow; the population's own scale; inpainting: every generated coordinate), or, given step_scales (T N_s,), z + step_size *
    step_scales[step] * grad with the scales an exact run recorded (population-free samplers:
    sigma_t / rms of the replay's step). record(step, population mean, scale) receives the scale used.

    labels: (N,) class labels of the particles for a conditional discriminator: particle i's
    features are phi(z_i, t, labels_i) (dmmd.methods.conditional); None: phi(z, t).

    needs_population: the term reads the population's features (detached, (N, D)). Every chunk
    is then forwarded with its graph kept, the population assembled, and the chunks moved; or,
    above settings.graph_budget_mb of kept graphs, the population comes from a no-grad pass.
    known: inpainting (dmmd.math.inpaint): before every step at level t, z <- known(z, t) sets the
    known pixels to their noised copy at t, so only the unknown pixels move; at the end
    known(z, None) sets them to the clean data. None: the unconditional flow, unchanged."""
    z = z.detach().clone()
    n, step = z.shape[0], 0
    chunks = [slice(i, min(i + settings.chunk_size, n)) for i in range(0, n, settings.chunk_size)]
    # keep every chunk's graph until the population is known: decided on the first chunk (None)
    keep = True if len(chunks) == 1 else None
    chunk_labels = (lambda chunk: None) if labels is None else (lambda chunk: labels[chunk])
    if (settings.inject or settings.renoise) and noise is None:
        raise ValueError("noise in the flow (inject or renoise > 0) needs a ParticleNoise source")
    # inpainting's resampling (RePaint): every level but the last is run `repeats` times, jumping
    # back from the next level's noise to this one's in between (known.jump)
    repeats = getattr(known, "repeats", 1)
    schedule = [(k, t, u) for k, t in enumerate(grid.tolist()) for u in range(repeats if k < len(grid) - 1 else 1)]
    for k, t, u in schedule:
        if u:  # a repeat replays the level's steps (and their stored replay means)
            step -= settings.steps_per_level
        sigma = float(process.noise_scale(torch.tensor(t)))
        for _ in range(settings.steps_per_level):
            if known is not None:
                z = known(z, t)
            z_eval = z + settings.inject * sigma * noise.draw() if settings.inject else z
            pop = None
            if needs_population and keep is False:
                pop = _population_features(disc, z_eval, t, settings.chunk_size, labels)
            grads, held = torch.empty_like(z), []
            for chunk in chunks:
                zc = z_eval[chunk].detach().requires_grad_(True)
                with torch.enable_grad():
                    if needs_population and keep is None:
                        feats, graph_bytes = _features_and_graph_bytes(disc, zc, t, chunk_labels(chunk))
                        keep = graph_bytes * n / zc.shape[0] <= settings.graph_budget_mb * 2**20
                        if not keep:
                            pop = _population_features(disc, z_eval, t, settings.chunk_size, labels)
                    else:
                        feats = _features(disc, zc, t, chunk_labels(chunk))
                if needs_population and pop is None:
                    held.append((chunk, zc, feats))
                    continue
                grads[chunk] = _move(term, feats, zc, k, step, pop, chunk)
            if held:
                pop = torch.cat([feats.detach() for _, _, feats in held])
                held.reverse()
                while held:  # release each chunk's graph once it has moved
                    chunk, zc, feats = held.pop()
                    grads[chunk] = _move(term, feats, zc, k, step, pop, chunk)
                del feats
            scale = 1.0
            if settings.step_norm == "gradient":
                moving = getattr(known, "mask", None)  # inpainting: only the generated coordinates move
                rms = None if step_scales is not None else float(
                    (grads if moving is None else grads[torch.broadcast_to(moving, grads.shape)]).square().mean().sqrt())
                scale = float(step_scales[step]) if step_scales is not None else (sigma / rms if rms > 0 else 0.0)
            if record is not None and pop is not None:
                record(step, pop.mean(0), scale)
            z = z + (settings.step_size * scale) * grads
            step += 1
            if progress is not None:
                progress.update(1)
        if u < repeats - 1 and k < len(grid) - 1:
            z = known.jump(z, float(grid[k + 1]), t)
        elif settings.renoise and k < len(grid) - 1:
            z = z + settings.renoise * sigma * noise.draw()
    return z if known is None else known(z, None)


def exact_term(disc: Discriminator, grid: Tensor, reference: Tensor, leave_one_out: bool = False) -> Term:
    """The exact interacting-particle witness. reference: (T, D) data mean features for the
    linear kernel, or (T, M, D) reference data features for any other kernel."""
    linear = disc.kernel_name == "linear"
    cache: dict = {}

    def population_sum(pop: Tensor) -> Tensor:  # once per step: every chunk of a step shares pop
        if cache.get("pop") is not pop:
            cache["pop"], cache["sum"] = pop, pop.sum(0)
        return cache["sum"]

    def term(feats, k, step, pop, chunk):
        n = pop.shape[0]
        own = pop[chunk]
        if linear:
            pop_sum = population_sum(pop)
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


def exact_flow(disc, z, grid, settings, process, reference, noise=None, record_means=False, progress=None,
               known=None):
    """Exact flow; returns (particles, (T N_s, D) particle means per step or None), and with
    record_means and step_norm "gradient" a third item: the (T N_s,) step scales it used."""
    means: list[Tensor] = []
    scales: list[float] = []
    record = (lambda step, m, scale: (means.append(m), scales.append(scale))) if record_means else None
    out = run_flow(disc, z, grid, settings, process, exact_term(disc, grid, reference, settings.leave_one_out),
                   noise, needs_population=True, record=record, progress=progress, known=known)
    if record_means and settings.step_norm == "gradient":
        return out, torch.stack(means), torch.tensor(scales, dtype=torch.float64)
    return out, (torch.stack(means) if record_means else None)


def approx_flow(disc, z, grid, settings, process, data_mean, particle_mean=None, per_step=False,
                noise=None, progress=None, known=None, step_scales=None):
    """Approximate (population-free) flow for the linear kernel: readings (a), (b) or (c).
    step_norm "gradient" needs the replay's step_scales (a population-free sampler has no rms)."""
    if disc.kernel_name != "linear":
        raise ValueError(f"the approximate sampler needs the linear kernel, this model uses {disc.kernel_name!r}")
    if settings.step_norm == "gradient" and step_scales is None:
        raise ValueError("step_norm 'gradient' in the approximate sampler needs the replay's step scales")
    return run_flow(disc, z, grid, settings, process, mean_term(data_mean, particle_mean, per_step),
                    noise, progress=progress, known=known, step_scales=step_scales)


def kale_flow(disc, z, grid, settings, process, noise=None, progress=None, known=None):
    """Particles ascend the KALE critic h(., t) on the same annealed schedule."""
    return run_flow(disc, z, grid, settings, process, kale_term(disc), noise, progress=progress, known=known)


def level_features(disc: Discriminator, x: Tensor, grid: Tensor, batch_size: int = 1024,
                   reduce_mean: bool = True) -> Tensor:
    """phi(x, t_k) for every grid level: (T, D) means, or (T, M, D) when reduce_mean is False."""
    out = []
    for t in grid.tolist():
        feats = _population_features(disc, x, t, batch_size)
        out.append(feats.mean(0) if reduce_mean else feats)
    return torch.stack(out)
