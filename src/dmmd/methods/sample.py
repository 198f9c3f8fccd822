"""One entry to every method's sampler: NFE budgets, calibration, checks, drawing samples.

Calibration computes what the samplers need from the training data once, so that sampling with
the linear kernel needs no data: per grid level the mean features of clean data (mu_data(t)) and
of data noised to that level (reading (b)), and, for reading (c), the particle means of one exact
run of a large population (mean-field replay), tagged with the sampler settings they were made with.
"""

from __future__ import annotations

import math
import typing
from dataclasses import replace

import torch
from torch import Tensor

from dmmd.config import SAMPLERS, Config, SampleConfig
from dmmd.math.noising import Process, time_grid
from dmmd.methods import conditional, ddpm, flow_matching
from dmmd.methods.build import flow_settings
from dmmd.methods.discriminator import Discriminator
from dmmd.methods.mmd_flow import FlowSettings, ParticleNoise, approx_flow, exact_flow, kale_flow, level_features

REPLAY_SEED = 2**31 - 1  # the replay population's seed: far from users' sampling seeds


class SamplerMismatch(ValueError):
    """The checkpoint holds no statistics for the requested sampler settings."""


def grid_tag(settings: FlowSettings) -> str:
    return f"T={settings.num_levels},grid={settings.grid}"


@torch.no_grad()
def level_statistics(disc: Discriminator, train: Tensor, process: Process, settings: FlowSettings,
                     seed: int = 0, batch_size: int = 1024) -> dict:
    """mu_data(t_k) and the mean features of data noised to t_k, for every grid level."""
    grid = time_grid(process, settings.num_levels, settings.grid)
    gen = torch.Generator(device=train.device).manual_seed(seed)
    data_mean = level_features(disc, train, grid, batch_size)
    noised = [disc.features(process.corrupt(train, t, generator=gen), t).mean(0) for t in grid.tolist()]
    return {"grid": grid_tag(settings), "data_mean": data_mean, "noised_mean": torch.stack(noised)}


def replay_trajectory(disc: Discriminator, process: Process, settings: FlowSettings, data_mean: Tensor,
                      shape: tuple[int, ...], num_particles: int, progress=None):
    """Reading (c): the particle mean feature of every step of one exact linear run, (T N_s, D);
    with step_norm "gradient" also the step scales that run used, (T N_s,): (means, scales)."""
    grid = time_grid(process, settings.num_levels, settings.grid)
    device = data_mean.device
    noise = ParticleNoise(REPLAY_SEED, num_particles, shape, device=device)
    z0 = noise.prior(process)
    big_chunk = FlowSettings(**{**settings.__dict__, "chunk_size": max(settings.chunk_size, num_particles)})
    _, *recorded = exact_flow(disc, z0, grid, big_chunk, process, data_mean, noise, record_means=True,
                              progress=progress)
    return recorded[0] if len(recorded) == 1 else tuple(recorded)


def calibration_subset(train: Tensor, labels: Tensor | None, rows: int) -> tuple[Tensor, Tensor | None]:
    """The training rows the level statistics average over: `rows` of them in a fixed random order
    (seed 0, so the subset does not follow a sorted file's classes), or all when rows is 0 or at
    least their number. Measured on Fashion-MNIST pixels (benchmarks/results/calibration_rows.md):
    10000 of the 60000 rows gave FD-fashion within 0.2 of all rows' at a seventh to a quarter of the CPU.
    A conditional model's subset must hold every class of the labels; otherwise all rows are used.
    """
    if rows <= 0 or rows >= len(train):
        return train, labels
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:rows]
    if labels is None:
        return train[pick.to(train.device)], None
    chosen = labels[pick.to(labels.device)]
    if torch.unique(chosen).numel() < torch.unique(labels).numel():  # a rare class would lose its mean
        return train, labels
    return train[pick.to(train.device)], chosen


def calibrate(disc: Discriminator, cfg: Config, train: Tensor, process: Process, stats: dict | None = None,
              settings: FlowSettings | None = None, progress=None, labels: Tensor | None = None) -> dict:
    """Level statistics (if the grid changed) over sample.calibration_rows training rows and, for the
    linear kernel, a replay for `settings`. A conditional model (labels: the training rows' classes)
    gets per-class ones (dmmd.methods.conditional)."""
    settings = settings or flow_settings(cfg.sample)
    train, labels = calibration_subset(train, labels, cfg.sample.calibration_rows)
    if getattr(disc, "num_classes", 0):
        return conditional.calibrate(disc, cfg, train, labels, process, stats, settings, progress)
    stats = dict(stats or {})
    if disc.objective == "kale":
        return stats
    if stats.get("grid") != grid_tag(settings):
        stats.update(level_statistics(disc, train, process, settings, cfg.seed))
    if disc.kernel_name == "linear":
        replays, scales = dict(stats.get("replay", {})), dict(stats.get("replay_scale", {}))
        made = replay_trajectory(disc, process, settings, stats["data_mean"], tuple(train.shape[1:]),
                                 cfg.sample.replay_particles, progress)
        if settings.step_norm == "gradient":  # the step scales of the exact run, for the population-free sampler
            made, scales[settings.tag()] = made
            stats["replay_scale"] = scales
        replays[settings.tag()] = made
        stats["replay"] = replays
    return stats


BOUNDED_DATA = ("digits", "mnist", "fashion_mnist", "cifar10", "folder")  # scaled to [-1, 1] by the data layer


def clip_range(cfg: Config) -> float | None:
    """DDPM's clip of the predicted clean sample: 1.0 (data in [-1, 1]) or None (sample.clip_x0;
    'auto' clips the data sets the data layer scales to [-1, 1], not toys, user arrays or the
    standardised latents of model.latent, which are unbounded)."""
    mode = cfg.sample.clip_x0
    bounded = cfg.data.name in BOUNDED_DATA and not cfg.model.latent
    return 1.0 if mode == "on" or (mode == "auto" and bounded) else None


def nfe(cfg: Config) -> int:
    """Network evaluations of cfg.sample's sampler (a DMMD step is one forward and its input
    gradient; Heun's last step is Euler)."""
    s = cfg.sample
    if cfg.method == "fm":
        return flow_matching.num_evaluations(s.num_steps, s.sampler)
    return s.num_steps if cfg.method == "ddpm" else s.num_levels * s.steps_per_level


def dmmd_split(nfe: int, levels: int = 0) -> tuple[int, int]:
    """T x N_s for an NFE budget. levels = 0 (the default): one step per level up to 20 levels, then
    the paper's T = 10 levels of NFE / 10 steps (NFE levels of one step when NFE is not a multiple
    of 10); measured on digits (benchmarks/nfe_rule.py), at NFE 20, 20 x 1 beat 10 x 2 at every step
    size tried. levels = k > 0 (sample.nfe_levels): k levels of NFE / k steps when NFE is a multiple
    of k, else the default rule (on Fashion-MNIST pixels 10 x 2 beat 20 x 1 on a network trained
    900 CPU-s and lost on one trained 3600: benchmarks/results/sampler_grid_fashion_mnist*.md)."""
    if levels > 0 and nfe % levels == 0:
        return levels, nfe // levels
    if nfe <= 20 or nfe % 10:
        return nfe, 1
    return 10, nfe // 10


def settings_for_nfe(cfg: Config, nfe: int, keep: typing.Collection[str] = (),
                     split: tuple[int, int] | None = None) -> None:
    """Set cfg.sample for a budget of nfe network evaluations, in place; keys in `keep` (e.g.
    'sample.step_size' given with --set) are left as they are; `split` is a DMMD (T, N_s) to use
    instead of `dmmd_split(nfe)`'s.

    DDPM and flow matching: sample.num_steps = nfe. DMMD: T x N_s from `dmmd_split` (with sample.nfe_levels), and from the
    configured (T0, N0, eta0, c_re0):
        eta  = eta0 (N0 / N_s)^p (T0 / T)      p = sample.step_size_power (0.7)
        c_re = c_re0 sqrt(T0 / T)
    so that the distance travelled per unit of t grows as N_s^(1 - p) and the re-noise variance per
    unit of t stays put. With sample.step_norm = "gradient" (a step of r sigma_t in rms) the level
    factor is sqrt(T0 / T): measured on digits (benchmarks/results/step_norm_digits.md), the best r
    at 20 x 1 was about 0.7x that at 10 x 1. A fixed eta fails at small NFE (digits: FD 481 at NFE 10 with eta 0.1 at
    10 x 1): per-NFE tuning on digits chose eta N_s = 1, 1.5 and 2-3 at N_s = 1, 5 and 10 over
    10 levels (benchmarks/results/nfe_rule.json), i.e. p of about 0.7."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    s = cfg.sample
    if cfg.method != "dmmd":
        if "sample.num_steps" not in keep:
            s.num_steps = nfe
        return
    eta, levels_before, steps_before = s.step_size, s.num_levels, s.steps_per_level
    levels, steps = split or dmmd_split(nfe, s.nfe_levels)
    if "sample.num_levels" not in keep:
        s.num_levels = levels
    if "sample.steps_per_level" not in keep:
        s.steps_per_level = steps if "sample.num_levels" not in keep else max(1, nfe // s.num_levels)
    if "sample.step_size" not in keep:  # a gradient-normalised step already shrinks with sigma_t: sqrt(T0 / T)
        levels = levels_before / s.num_levels if s.step_norm == "fixed" else math.sqrt(levels_before / s.num_levels)
        s.step_size = eta * (steps_before / s.steps_per_level) ** s.step_size_power * levels
    if "sample.renoise" not in keep:
        s.renoise = s.renoise * math.sqrt(levels_before / s.num_levels)


def needs_calibration(disc: Discriminator, cfg: Config, stats: dict) -> bool:
    """True when cfg.sample's DMMD sampler needs level statistics or a replay the stats lack."""
    s, settings = cfg.sample, flow_settings(cfg.sample)
    if cfg.method != "dmmd" or s.sampler == "kale" or disc.objective == "kale" or disc.kernel_name != "linear":
        return False
    if disc.num_classes:
        return conditional.needs_calibration(cfg, stats, settings)
    if stats.get("grid") != grid_tag(settings):
        return True
    if s.sampler == "approx" and s.reading == "replay" and settings.step_norm == "gradient":
        return settings.tag() not in stats.get("replay_scale", {}) or settings.tag() not in stats.get("replay", {})
    return s.sampler == "approx" and s.reading == "replay" and settings.tag() not in stats.get("replay", {})


def check_sampler(disc: Discriminator, cfg: Config, stats: dict, reference: Tensor | None = None) -> None:
    """Raise SamplerMismatch when cfg.sample's sampler cannot run on this model and its statistics."""
    s, settings = cfg.sample, flow_settings(cfg.sample)
    if s.sampler not in SAMPLERS[cfg.method]:
        raise SamplerMismatch(f"--sampler {s.sampler} does not fit a model trained with method = {cfg.method!r} "
                              f"(use {' or '.join(SAMPLERS[cfg.method])})")
    if cfg.method != "dmmd":
        return
    if s.sampler == "kale" and disc.objective != "kale":
        raise SamplerMismatch("the kale sampler needs a model trained with model.objective = 'kale'")
    if s.sampler != "kale" and disc.objective == "kale":
        raise SamplerMismatch("this checkpoint was trained with the KALE objective: use --sampler kale")
    if s.sampler == "approx" and disc.kernel_name != "linear":
        raise SamplerMismatch(f"--sampler approx needs the linear kernel; this checkpoint uses "
                              f"{disc.kernel_name!r}: use --sampler exact")
    if s.sampler == "kale":
        return
    if disc.num_classes:
        problem = conditional.missing(cfg, stats, settings)
        if problem:
            raise SamplerMismatch(problem)
        return
    if disc.kernel_name == "linear" and stats.get("grid") != grid_tag(settings):
        raise SamplerMismatch(f"the checkpoint has no level statistics for {grid_tag(settings)} (it has "
                              f"{stats.get('grid')}); make them with `dmmd calibrate --checkpoint RUN` and the "
                              "same --set sample.* options")
    if s.sampler == "approx" and s.reading == "replay" and settings.tag() not in stats.get("replay", {}):
        raise SamplerMismatch(f"the checkpoint has no replay trajectory for {settings.tag()} "
                              f"(it has: {', '.join(stats.get('replay', {})) or 'none'}); make one with "
                              "`dmmd calibrate --checkpoint RUN` and the same --set sample.* options")
    if s.sampler == "exact" and disc.kernel_name != "linear" and reference is None:
        raise SamplerMismatch("the exact sampler with a non-linear kernel needs reference data (data.* in the config)")


def _guide(labels: Tensor | None, s: SampleConfig, device) -> dict:
    """The label and guidance keywords of the DDPM and flow-matching samplers."""
    return {} if labels is None else {"y": labels.to(device), "guidance": s.guidance}


def reference_rows(cfg: Config, train: Tensor) -> Tensor | None:
    """The data the exact sampler with a non-linear kernel attracts particles to: sample.num_reference
    training rows in a fixed random order (seed 0); None for every other sampler."""
    if cfg.sample.sampler != "exact" or cfg.model.kernel == "linear":
        return None
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return train[pick[: cfg.sample.num_reference]]


def sample(disc: Discriminator, cfg: Config, stats: dict, process: Process, shape: tuple[int, ...],
           num_samples: int, seed: int, reference: Tensor | None = None, start: int = 0,
           device: str | torch.device = "cpu", progress=None, known=None, labels: Tensor | None = None) -> Tensor:
    """Draw num_samples particles with the sampler named in cfg.sample (in model space).

    labels: (num_samples,) classes for a conditional model (None: unconditional, the null label),
    guided with sample.guidance (dmmd.methods.conditional for DMMD; classifier-free guidance otherwise).

    known: inpainting, a function (noise, z0) -> replacement hook for these particles
    (`dmmd.math.inpaint.replacement_for`); None samples unconditionally."""
    check_sampler(disc, cfg, stats, reference)
    if labels is not None:
        if not conditional.model_classes(disc) or len(labels) != num_samples:
            raise ValueError(f"labels need a conditional model and one label per sample; got {len(labels)} labels for "
                             f"{num_samples} samples of a model with {conditional.model_classes(disc)} classes")
    s, settings = cfg.sample, flow_settings(cfg.sample)
    noise = ParticleNoise(seed, num_samples, shape, start=start, device=device)
    z0 = noise.prior(process)
    hook = None if known is None else known(noise, z0)
    if cfg.method == "fm":  # the prior N(0, I) at t = 0 of the rectified flow
        return flow_matching.sample(disc, z0, s.num_steps, s.sampler, progress, chunk_size=s.chunk_size, known=hook,
                                    **_guide(labels, s, device))
    if cfg.method == "ddpm":
        return ddpm.sample(disc, z0, process, s.num_steps, s.sampler, noise, progress,
                           eta=s.ddim_eta if s.sampler == "ddim" else 0.0, chunk_size=s.chunk_size,
                           clip=clip_range(cfg), clipped_eps=s.ddim_clipped_eps, known=hook, **_guide(labels, s, device))
    if disc.num_classes:
        return conditional.sample(disc, cfg, stats, process, z0, labels, settings, noise, progress, known=hook)
    grid = time_grid(process, settings.num_levels, settings.grid)
    if s.sampler == "kale":
        return kale_flow(disc, z0, grid, settings, process, noise, progress, known=hook)
    if s.sampler == "approx":
        particle_term = {"own": None, "data_noised": stats["noised_mean"]}.get(s.reading)
        if s.reading == "replay":
            particle_term = stats["replay"][settings.tag()]
        scales = stats.get("replay_scale", {}).get(settings.tag()) if s.reading == "replay" else None
        return approx_flow(disc, z0, grid, settings, process, stats["data_mean"], particle_term,
                           per_step=s.reading == "replay", noise=noise, progress=progress, known=hook,
                           step_scales=scales)
    if disc.kernel_name == "linear":
        ref = stats["data_mean"]
    else:
        ref = level_features(disc, reference, grid, reduce_mean=False)
        if s.kernel_step_size > 0:  # pairwise repulsion needs its own step size
            settings = replace(settings, step_size=s.kernel_step_size)
    out, _ = exact_flow(disc, z0, grid, settings, process, ref, noise, progress=progress, known=hook)
    return out


