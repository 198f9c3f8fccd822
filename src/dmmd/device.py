"""Where the work runs: device names, and the optional speed-ups of a CUDA run.

`resolve_device` turns a config or CLI device name (cpu, cuda, cuda:N, auto) into a torch.device
and says in one line when the hardware is not there. `prepare_model` applies channels-last memory
layout (convolutional backbones on CUDA with bf16 are faster with it) and torch.compile; both are
opt-in and leave the state dict unchanged, so checkpoints do not depend on them.
"""

from __future__ import annotations

import torch

from .config import DEVICE_PATTERN, ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else the CPU; a CUDA device that is absent is a ConfigError."""
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but this torch sees no CUDA device "
                              f"(torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def prepare_model(model: torch.nn.Module, channels_last: bool = False, compile: bool = False) -> torch.nn.Module:
    """In place: channels-last weights (4-D parameters only matter) and torch.compile of forward."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model


def as_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Image batches (N, C, H, W) in channels-last layout when asked; anything else unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
