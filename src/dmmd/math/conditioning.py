"""The math of class conditioning (docs/conditional.md), as small pure functions on tensors.

Labels y in 0..C-1, and C itself as the null label (the unconditional model: one network serves
both, trained with the null label on a share p_uncond of rows).

    classifier-free guidance (flow matching, DDPM):  out = (1 + w) net(x, t, y) - w net(x, t, null)
    DMMD's guided data term:                         mu_w(t, y) = mu(t, y) + w (mu(t, y) - mu(t, null))
    per-class witness (linear kernel):               f(z; t, y) = <phi(z, t, y), mu_w(t, y) - m(t, y)>

mu(t, y) is the mean of phi(x, t, y) over the training rows of class y, mu(t, null) the mean of
phi(x, t, null) over all rows, and m(t, y) the mean feature of the class-y particles (the exact
flow's per-class population, or its stored mean-field replay). With w = 0 the class-y flow is the
unconditional flow of the class-y data: each class is its own population.
"""

from __future__ import annotations

import torch
from torch import Tensor


def drop_labels(y: Tensor, null: int, p_uncond: float, generator: torch.Generator | None = None) -> Tensor:
    """A copy of labels y (N,) with each replaced by `null` with probability p_uncond; draws N
    uniforms from `generator` (on y's device) whatever p_uncond, so the stream does not depend on it."""
    u = torch.rand(y.shape[0], generator=generator, device=y.device)
    return torch.where(u < p_uncond, torch.full_like(y, null), y)


def balanced_labels(num: int, num_classes: int, class_: int | None = None) -> Tensor:
    """Labels of num samples: all `class_`, or (None) classes 0..C-1 in turn, an equal number each
    when C divides num (sample i gets class i mod C, so a sample's label depends only on i)."""
    if class_ is not None:
        return torch.full((num,), class_, dtype=torch.long)
    return torch.arange(num, dtype=torch.long) % num_classes


def class_sums(features: Tensor, labels: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Per-group sums of features (N, D) by labels (N,) in 0..G-1: ((G, D) sums, (G,) counts)."""
    sums = features.new_zeros(num_groups, features.shape[1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_groups).to(features.dtype)
    return sums, counts


def class_means(features: Tensor, labels: Tensor, num_groups: int) -> Tensor:
    """Per-group means (G, D) of features (N, D) by labels (N,); a group without rows gets zeros."""
    sums, counts = class_sums(features, labels, num_groups)
    return sums / counts.clamp(min=1).unsqueeze(1)


def guided_target(class_mean: Tensor, guidance: float) -> Tensor:
    """mu_w(t, y) = mu(t, y) + w (mu(t, y) - mu(t, null)) for every class: (..., C + 1, D) -> same
    shape; the last row (the null label) holds mu(t, null) and is left as it is (w has no effect there)."""
    null = class_mean[..., -1:, :]
    out = class_mean + guidance * (class_mean - null)
    out[..., -1, :] = class_mean[..., -1, :]
    return out


def class_witness(features: Tensor, labels: Tensor, target: Tensor, particle_mean: Tensor) -> Tensor:
    """f(z_i) = <phi_i, target[y_i] - particle_mean[y_i]>: features (N, D), labels (N,), target and
    particle_mean (G, D) -> (N,)."""
    return (features * (target[labels] - particle_mean[labels])).sum(1)


def guided_output(net, x: Tensor, t, y: Tensor | None, guidance: float) -> Tensor:
    """Classifier-free guidance: net(x, t) when y is None, else (1 + w) net(x, t, y) - w net(x, t)
    (a conditional net reads a missing label as the null label); w = 0 costs one evaluation."""
    if y is None:
        return net(x, t)
    cond = net(x, t, y)
    if guidance == 0:
        return cond
    return (1 + guidance) * cond - guidance * net(x, t)
