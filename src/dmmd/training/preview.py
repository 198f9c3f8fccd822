"""A few samples from a model in training, for the sample grid a run's log draws at checkpoints."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from dmmd.config import Config
from dmmd.methods.build import build_process, flow_settings
from dmmd.methods.conditional import class_level_statistics, grid_tag
from dmmd.methods.sample import level_statistics
from dmmd.methods.sample import sample as draw


def preview_samples(model: torch.nn.Module, cfg: Config, data: Tensor, shape: tuple[int, ...], num: int = 16,
                    seed: int = 0) -> Tensor:
    """A few model-space samples from a model in training (TensorBoard grids at checkpoints):
    DMMD's linear kernel samples with the exact flow on level statistics of up to 512 data rows
    (no replay needed); other methods and kernels with their own sampler."""

    cfg = copy.deepcopy(cfg)
    process = build_process(cfg.process)
    rows = data[:512]
    stats, reference = {}, None
    kernel = getattr(model, "kernel_name", None)
    if cfg.method == "dmmd" and getattr(model, "objective", "mmd") == "mmd":
        cfg.sample.sampler = "exact"
        if kernel == "linear" and getattr(model, "num_classes", 0):  # conditional: unconditional previews (null label)
            settings = flow_settings(cfg.sample)
            null = torch.full((len(rows),), model.num_classes, dtype=torch.long, device=rows.device)
            stats = {"class_grid": grid_tag(settings),
                     "class_data_mean": class_level_statistics(model, rows, null, process, settings)}
        elif kernel == "linear":
            stats = level_statistics(model, rows, process, flow_settings(cfg.sample), cfg.seed)
        else:
            reference = rows
    return draw(model, cfg, stats, process, shape, num, seed, reference, device=rows.device)
