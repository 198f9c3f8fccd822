"""Where the work runs: device names, and the optional speed-ups of a CUDA run.

`resolve_device` turns a config or CLI device name (cpu, cuda, cuda:N, auto) into a torch.device
and says in one line when the hardware is not there. `prepare_model` applies channels-last memory
layout (convolutional backbones on CUDA with bf16 are faster with it) and torch.compile; both are
opt-in and leave the state dict unchanged, so checkpoints do not depend on them.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

from dmmd.config import DEVICE_PATTERN, ConfigError
from dmmd.openmp import SET_TOO_LATE as OMP_SET_TOO_LATE


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


_NOTED = False


def spinning_threads() -> bool:
    """Whether torch's OpenMP worker threads busy-wait: torch was loaded before dmmd could set
    OMP_WAIT_POLICY=PASSIVE (see dmmd/__init__.py) and more than one thread is in use."""

    return OMP_SET_TOO_LATE and torch.get_num_threads() > 1


@contextlib.contextmanager
def thread_guard(requested: int = 0, echo=None):
    """Run the body with `requested` torch CPU threads (0: torch's own count), restored afterwards.

    With 0 and spinning threads (torch imported before dmmd), one thread instead: a spinning
    second thread made training 10-16x slower on a shared 2-core machine, while one thread was
    as fast as two for the MLP presets. Says so once per process, with what to set instead."""
    global _NOTED
    before = torch.get_num_threads()
    threads = requested
    if not requested and spinning_threads():
        threads = 1
        if not _NOTED:
            _NOTED = True
            (echo or (lambda text: print(text, file=sys.stderr)))(
                "note: torch was imported before dmmd, too late for OMP_WAIT_POLICY=PASSIVE (OpenMP threads "
                f"would spin); using 1 CPU thread instead of {before}. Import dmmd before torch, or set "
                "OMP_WAIT_POLICY=PASSIVE in the environment, to use more (or set train.threads).")
    cores = os.cpu_count() or 1
    if threads > cores:  # more threads than cores only contend (5000 made a 2-core machine's load ~1800)
        (echo or (lambda text: print(text, file=sys.stderr)))(
            f"note: train.threads = {threads} is more than this machine's {cores} cores; using {cores}")
        threads = cores
    if threads:
        torch.set_num_threads(threads)
    try:
        yield threads or before
    finally:
        torch.set_num_threads(before)


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
