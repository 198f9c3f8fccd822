"""Kernels, MMD estimators, the witness and the KALE objective, as pure functions (docs/method.md).

All inputs are feature matrices of shape (N, D). A kernel maps (x: (N, D), y: (M, D)) to its
Gram block K_xy: (N, M). With Gram blocks K_xx (n, n), K_yy (m, m) and K_xy (n, m):

    MMD2_biased   = mean(K_xx) + mean(K_yy) - 2 mean(K_xy)
    MMD2_unbiased = sum_{i!=j} K_xx/(n(n-1)) + sum_{i!=j} K_yy/(m(m-1)) - 2 mean(K_xy)

For the linear kernel the unbiased estimate needs no Gram matrix (O((n+m) D)): with
A = sum_i a_i, S_a = sum_i ||a_i||^2 (and B, S_b the same for b),

    MMD2_unbiased = (||A||^2 - S_a)/(n(n-1)) + (||B||^2 - S_b)/(m(m-1)) - 2 <A, B>/(n m).

The witness of P against Q at z is f(z) = mean_i k(z, x_i) - mean_j k(z, y_j).
KALE(P || Q) >= sup_h E_P[h] - E_Q[exp h] + 1 (a lower bound on KL(P || Q)).

Only torch is imported here.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Kernel = Callable[[Tensor, Tensor], Tensor]
RQ_ALPHAS = (0.2, 0.5, 1.0, 2.0, 5.0)


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """||x_i - y_j||^2: (N, D), (M, D) -> (N, M), clamped at 0 against round-off."""
    d2 = (x * x).sum(-1, keepdim=True) - 2.0 * x @ y.T + (y * y).sum(-1).unsqueeze(0)
    return d2.clamp(min=0.0)


def linear_kernel(x: Tensor, y: Tensor) -> Tensor:
    """<x_i, y_j>: (N, D), (M, D) -> (N, M)."""
    return x @ y.T


def rbf_kernel(x: Tensor, y: Tensor, width: Tensor | float) -> Tensor:
    """exp(-||x_i - y_j||^2 / (2 width^2)); width may be a differentiable scalar tensor."""
    width = torch.as_tensor(width, dtype=x.dtype, device=x.device)
    return torch.exp(-squared_distances(x, y) / (2.0 * width * width))


def rq_kernel(x: Tensor, y: Tensor, alphas: Sequence[float] = RQ_ALPHAS, dot_weight: float = 0.0) -> Tensor:
    """Rational-quadratic mixture sum_a (1 + ||x-y||^2 / (2a))^(-a), plus dot_weight * <x, y>."""
    d2 = squared_distances(x, y)
    gram = sum((1.0 + d2 / (2.0 * a)) ** (-a) for a in alphas)
    if dot_weight:
        gram = gram + dot_weight * (x @ y.T)
    return gram


def mmd2_biased(K_xx: Tensor, K_yy: Tensor, K_xy: Tensor) -> Tensor:
    """Biased (V-statistic) MMD^2 from Gram blocks."""
    return K_xx.mean() + K_yy.mean() - 2.0 * K_xy.mean()


def _off_diagonal_mean(K: Tensor) -> Tensor:
    n = K.shape[0]
    if n < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples per set")
    return (K.sum() - torch.diagonal(K).sum()) / (n * (n - 1))


def mmd2_unbiased(K_xx: Tensor, K_yy: Tensor, K_xy: Tensor) -> Tensor:
    """Unbiased (U-statistic) MMD^2 from Gram blocks (diagonals of K_xx, K_yy dropped)."""
    return _off_diagonal_mean(K_xx) + _off_diagonal_mean(K_yy) - 2.0 * K_xy.mean()


def mmd2_linear_unbiased(a: Tensor, b: Tensor) -> Tensor:
    """Unbiased MMD^2 for the linear kernel in O((n+m) D), without a Gram matrix."""
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples per set")
    A, B = a.sum(0), b.sum(0)  # (D,)
    S_a, S_b = (a * a).sum(), (b * b).sum()
    return (A @ A - S_a) / (n * (n - 1)) + (B @ B - S_b) / (m * (m - 1)) - 2.0 * (A @ B) / (n * m)


def mmd2(kernel: Kernel, x: Tensor, y: Tensor, unbiased: bool = True) -> Tensor:
    """MMD^2 between feature sets x (n, D) and y (m, D) with any kernel, through Gram blocks."""
    estimator = mmd2_unbiased if unbiased else mmd2_biased
    return estimator(kernel(x, x), kernel(y, y), kernel(x, y))


def witness(kernel: Kernel, z: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """f(z) = mean_i k(z, x_i) - mean_j k(z, y_j): (N, D) -> (N,)."""
    return kernel(z, x).mean(1) - kernel(z, y).mean(1)


def linear_witness(z: Tensor, x_mean: Tensor, y_mean: Tensor) -> Tensor:
    """Witness for the linear kernel from mean features: <z, mean x - mean y>: (N, D) -> (N,)."""
    return z @ (x_mean - y_mean)


def kale_objective(h_p: Tensor, h_q: Tensor) -> Tensor:
    """E_P[h] - E_Q[exp(h)] + 1 from critic values h_p (n,) on P and h_q (m,) on Q."""
    return h_p.mean() - torch.exp(h_q).mean() + 1.0
