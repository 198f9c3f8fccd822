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
from dmmd.runtime.memory import FLOAT, ResourceError, refuse


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
    if cfg.method == "dmmd" and cfg.model.kernel == "linear" and cfg.model.objective == "mmd":
        s = cfg.sample
        terms[f"the replay of sample.replay_particles = {s.replay_particles}"] = (
            s.replay_particles * (3 * math.prod(shape)) + min(s.chunk_size, s.replay_particles) * per_item
            + s.num_levels * s.steps_per_level * cfg.model.feature_dim) * FLOAT
    need = sum(terms.values())
    largest = max(terms, key=terms.get)
    refuse(need, f"training ({largest} is the largest part)", device,
            "lower train.batch_size, train.num_levels, model.width or model.base_channels, or sample.replay_particles")


def check_sampling(cfg, shape: tuple[int, ...], num_samples: int, batch: int, device="cpu") -> None:
    """The samples held on the host, and the particles moved together on the device."""
    size = math.prod(shape)
    refuse(3 * num_samples * size * FLOAT, f"--num-samples {num_samples} ({size} values each)", "cpu",
            "sample in chunks: several runs with a smaller --num-samples and different --seed values")
    batch = min(batch, num_samples)
    per_item = activations_per_item(cfg, shape)
    need = (6 * batch * size + min(cfg.sample.chunk_size, batch) * per_item) * FLOAT
    refuse(need, f"moving {batch} particles together (--batch-size, or --num-samples for the exact sampler)", device,
            "lower --batch-size and sample.chunk_size (the exact sampler moves all --num-samples together)")
