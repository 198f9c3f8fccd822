"""2-D toy data sets, drawn from an explicit torch.Generator so they are reproducible.

Eight Gaussians: modes on a circle of radius 2, standard deviation 0.05.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.05


def eight_gaussians_centres(radius: float = EIGHT_GAUSSIANS_RADIUS) -> Tensor:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1).float()


def eight_gaussians(n: int, generator: torch.Generator, radius: float = EIGHT_GAUSSIANS_RADIUS,
                    std: float = EIGHT_GAUSSIANS_STD) -> Tensor:
    centres = eight_gaussians_centres(radius)
    idx = torch.randint(0, 8, (n,), generator=generator)
    return centres[idx] + std * torch.randn(n, 2, generator=generator)


def two_moons(n: int, generator: torch.Generator, noise: float = 0.05) -> Tensor:
    upper = torch.rand(n, generator=generator) < 0.5
    angle = math.pi * torch.rand(n, generator=generator)
    x = torch.where(upper, torch.cos(angle), 1.0 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.5
    return pts + noise * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the 8 dark squares ((column + row) even) of a 4x4 board on [-2, 2]^2."""
    cell = torch.randint(0, 8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + row % 2
    u = torch.rand(n, 2, generator=generator)
    return torch.stack([col + u[:, 0], row + u[:, 1]], dim=1) - 2.0


def swiss_roll(n: int, generator: torch.Generator, noise: float = 0.05) -> Tensor:
    s = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([s * torch.cos(s), s * torch.sin(s)], dim=1) / 5.0
    return pts + noise * torch.randn(n, 2, generator=generator)


TOYS = {"eight_gaussians": eight_gaussians, "two_moons": two_moons, "checkerboard": checkerboard,
        "swiss_roll": swiss_roll}
