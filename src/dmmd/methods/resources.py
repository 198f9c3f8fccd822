"""Memory estimates of training and sampling, checked before compute (runtime.memory holds the
limit): a size that cannot fit is refused with the limit and a way out.

The estimates are lower bounds (the arrays that must exist at once, at float32). They catch
sizes off by orders of magnitude, not a run that is 10% too big.
"""

from __future__ import annotations

import math

import torch

from dmmd.data.toys import TOYS
from dmmd.methods.build import build_model
from dmmd.methods.sample import nfe
from dmmd.runtime.memory import FLOAT, ResourceError, refuse

MAX_NFE = 100_000  # network evaluations per sample: 1000 x the NFE the samplers are tuned at (10 to 100)
MAX_PARTICLE_STEPS = 10**12  # samples x NFE: a toy's network does about 1.4e6 a second on 2 CPU cores (8 days)


def parameter_count(cfg, shape: tuple[int, ...]) -> int | None:
    """Parameters of the model `cfg` describes for data of `shape`, counted on the meta device."""
    try:
        with torch.device("meta"):
            model = build_model(cfg, tuple(shape))
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError):
        return None
    return sum(p.numel() for p in model.parameters())


def activations_per_item(cfg, shape: tuple[int, ...]) -> int:
    """A lower bound on the float32 activations one item keeps for the backward pass."""
    m, size = cfg.model, math.prod(shape)
    if m.backbone == "mlp":
        return size + m.width * (2 * m.depth + 2) + m.feature_dim + m.time_dim
    height_width = math.prod(shape[1:]) if len(shape) == 3 else size
    return size + 4 * m.base_channels * height_width


def check_data_config(cfg) -> None:
    """Sizes of the data a config generates or loads, before loading it."""
    d = cfg.data
    if d.name in TOYS:
        points = d.num_points + max(2000, d.num_points // 10)
        refuse(points * 2 * FLOAT * 3, f"data.num_points = {d.num_points}", "cpu", "lower data.num_points")
    elif d.name == "folder":
        refuse(d.in_memory * 3 * d.image_size**2 * FLOAT * 2,
                f"data.in_memory = {d.in_memory} images of data.image_size = {d.image_size}", "cpu",
                "lower data.in_memory or data.image_size")


def check_training(cfg, shape: tuple[int, ...], device="cpu") -> None:
    """Parameters, optimizer state, one step's activations and the final calibration of a run."""
    params = parameter_count(cfg, shape)
    if params is None:
        raise ResourceError(f"the model for data of shape {tuple(shape)} cannot be built with these model.* "
                            "settings; lower model.width / model.base_channels")
    t = cfg.train
    per_item = activations_per_item(cfg, shape)
    rows = 2 * t.batch_size * t.num_levels if cfg.method == "dmmd" else t.batch_size
    levels = f" x train.num_levels = {t.num_levels}" if cfg.method == "dmmd" else ""
    terms = {
        f"{params} parameters with their average, gradient and Adam moments": 5 * params * FLOAT,
        f"a step of train.batch_size = {t.batch_size}{levels}": rows * per_item * FLOAT,
    }
    terms.update(_replay(cfg, shape, min(cfg.sample.chunk_size, cfg.sample.replay_particles)))
    need = sum(terms.values())
    largest = max(terms, key=terms.get)
    refuse(need, f"training ({largest} is the largest part)", device,
            "lower train.batch_size, train.num_levels, model.width or model.base_channels, or sample.replay_particles")


def _replay(cfg, shape: tuple[int, ...], together: int | None = None) -> dict[str, int]:
    """The replay (reading (c)) of a DMMD linear-kernel model: sample.replay_particles, of which
    `together` (default: all, as replay_trajectory moves them in one chunk) keep their activations."""
    if cfg.method != "dmmd" or cfg.model.kernel != "linear" or cfg.model.objective != "mmd":
        return {}
    s = cfg.sample
    together = s.replay_particles if together is None else together
    return {f"the replay of sample.replay_particles = {s.replay_particles}": (
        s.replay_particles * (3 * math.prod(shape)) + together * activations_per_item(cfg, shape)
        + s.num_levels * s.steps_per_level * cfg.model.feature_dim) * FLOAT}


def check_flow(cfg, shape: tuple[int, ...], device="cpu") -> None:
    """The sampler's network evaluations per sample (at most MAX_NFE) and, for DMMD's replay, the
    memory of sample.replay_particles; what `calibrate` makes and every sampling run may make."""
    steps = nfe(cfg)
    if steps > MAX_NFE:
        keys = "sample.num_steps" if cfg.method != "dmmd" else "sample.num_levels x sample.steps_per_level"
        raise ResourceError(f"--nfe {steps} ({keys}) asks for {steps} network evaluations per sample; at most "
                            f"{MAX_NFE} are supported (the samplers are tuned at 10 to 100: docs/sampling.md)")
    for what, need in _replay(cfg, shape).items():
        refuse(need, what, device, "lower sample.replay_particles (the default is 2000)")


def check_sampling(cfg, shape: tuple[int, ...], num_samples: int, batch: int, device="cpu") -> None:
    """Before sampling starts: check_flow, the samples held on the host, the work (--num-samples x
    NFE, at most MAX_PARTICLE_STEPS) and the particles moved together on the device."""
    check_flow(cfg, shape, device)
    size = math.prod(shape)
    refuse(3 * num_samples * size * FLOAT, f"--num-samples {num_samples} ({size} values each)", "cpu",
            "sample in chunks: several runs with a smaller --num-samples and different --seed values")
    if num_samples * nfe(cfg) > MAX_PARTICLE_STEPS:
        raise ResourceError(f"--num-samples {num_samples} at NFE {nfe(cfg)} is {num_samples * nfe(cfg):.3g} particle "
                            f"steps, more than the {MAX_PARTICLE_STEPS:.0e} dmmd starts (days of compute even for a toy's "
                            "network); sample in chunks: several runs with a smaller --num-samples and other --seed values")
    batch = min(batch, num_samples)
    per_item = activations_per_item(cfg, shape)
    need = (6 * batch * size + min(cfg.sample.chunk_size, batch) * per_item) * FLOAT
    refuse(need, f"moving {batch} particles together (--batch-size, or --num-samples for the exact sampler)", device,
            "lower --batch-size and sample.chunk_size (the exact sampler moves all --num-samples together)")
