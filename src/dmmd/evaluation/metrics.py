"""Sample-quality metrics on feature vectors: FID, KID, IS, precision/recall, MMD, energy.

Every function takes torch tensors or numpy arrays of shape (N, D), computes in float64 on
the CPU and returns python floats. Pairwise quantities use the chunked distance helpers of
``dmmd.evaluation.diversity``: no full N x M matrix is built. The standard-Inception FID and IS,
on images, live in ``dmmd.evaluation.inception``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dmmd.evaluation.diversity import (
    as_float64_matrix,
    cdist_mode,
    kth_nearest_distance,
    median,
    pairwise_block_sum,
    rows_per_block,
)


def _float64(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _same_dim(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names}: expected the same feature dimension, found {a.shape[1]} and {b.shape[1]}")


# ----------------------------------------------------------------------------- Frechet distance


def frechet_distance_from_stats(mu1: Any, s1: Any, mu2: Any, s2: Any) -> float:
    """d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2}).

    tr((S1 S2)^{1/2}) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix S1^{1/2} S2 S1^{1/2} (same spectrum as S1 S2), with S1^{1/2} from
    an eigendecomposition; tiny negative eigenvalues from rounding are clipped to 0, and so
    is the result.
    """
    m1, m2 = _float64(mu1).reshape(-1), _float64(mu2).reshape(-1)
    c1, c2 = _float64(s1), _float64(s2)
    d = m1.shape[0]
    for nm, arr, shape in (("mu2", m2, (d,)), ("s1", c1, (d, d)), ("s2", c2, (d, d))):
        if tuple(arr.shape) != shape:
            raise ValueError(f"{nm}: expected shape {shape} to match mu1, found {tuple(arr.shape)}")
    w1, v1 = torch.linalg.eigh((c1 + c1.T) / 2)
    sqrt1 = (v1 * w1.clamp_min(0).sqrt()) @ v1.T  # (D, D)
    inner = sqrt1 @ c2 @ sqrt1
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    value = (m1 - m2).square().sum() + c1.trace() + c2.trace() - 2 * tr_sqrt
    return max(float(value), 0.0)


def mean_and_covariance(feats: Any, name: str = "feats") -> tuple[torch.Tensor, torch.Tensor]:
    """mu = mean_i x_i (D,), S = sum_i (x_i - mu)(x_i - mu)^T / (N - 1) (D, D)."""
    x = as_float64_matrix(feats, name)
    if x.shape[0] < 2:
        raise ValueError(f"{name}: expected at least 2 rows for a covariance, found {x.shape[0]}")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D); FID on Inception features."""
    mu1, s1 = mean_and_covariance(feats_a, "feats_a")
    mu2, s2 = mean_and_covariance(feats_b, "feats_b")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feats_a and feats_b: expected the same dimension, found {mu1.shape[0]} and {mu2.shape[0]}")
    return frechet_distance_from_stats(mu1, s1, mu2, s2)


# ----------------------------------------------------------------------------- KID


def polynomial_mmd2_unbiased(x: Any, y: Any, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with k(a, b) = (gamma a.b + coef0)^degree, gamma = 1/D by default.

    MMD_u^2 = sum_{i != j} k(x_i, x_j) / (m(m-1)) + sum_{i != j} k(y_i, y_j) / (n(n-1))
              - 2 sum_{i,j} k(x_i, y_j) / (mn).
    """
    xs, ys = as_float64_matrix(x, "x"), as_float64_matrix(y, "y")
    _same_dim(xs, ys, "x and y")
    m, n = xs.shape[0], ys.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"x and y: expected at least 2 rows each, found {m} and {n}")
    g = 1.0 / xs.shape[1] if gamma is None else float(gamma)
    kxx = (g * xs @ xs.T + coef0) ** degree  # (m, m)
    kyy = (g * ys @ ys.T + coef0) ** degree  # (n, n)
    kxy = (g * xs @ ys.T + coef0) ** degree  # (m, n)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid_subset_indices(
    n_a: int, n_b: int, num_subsets: int, subset_size: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Row indices (subset_size,) drawn without replacement from each set, one pair per subset."""
    if num_subsets < 1:
        raise ValueError(f"num_subsets: expected >= 1, found {num_subsets}")
    if not 2 <= subset_size <= min(n_a, n_b):
        limit = min(n_a, n_b)
        raise ValueError(f"subset_size: expected 2 <= subset_size <= {limit} (rows per set), found {subset_size}")
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randperm(n_a, generator=gen)[:subset_size], torch.randperm(n_b, generator=gen)[:subset_size])
            for _ in range(num_subsets)]


def kid(
    feats_a: Any,
    feats_b: Any,
    num_subsets: int = 100,
    subset_size: int | None = None,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and standard error of the
    unbiased polynomial MMD^2 over ``num_subsets`` random subsets (subset_size defaults to
    min(1000, N_a, N_b)). Standard error = std over subsets (ddof=1) / sqrt(num_subsets),
    nan for one subset. Can be slightly negative when the two laws match.
    """
    a, b = as_float64_matrix(feats_a, "feats_a"), as_float64_matrix(feats_b, "feats_b")
    _same_dim(a, b, "feats_a and feats_b")
    size = min(1000, a.shape[0], b.shape[0]) if subset_size is None else subset_size
    values = torch.tensor([polynomial_mmd2_unbiased(a[ia], b[ib], degree, gamma, coef0)
                           for ia, ib in kid_subset_indices(a.shape[0], b.shape[0], num_subsets, size, seed)],
                          dtype=torch.float64)
    if num_subsets == 1:
        return float(values[0]), math.nan
    return float(values.mean()), float(values.std() / math.sqrt(num_subsets))


# ----------------------------------------------------------------------------- Inception score


def inception_score(logits: Any, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split of the rows, p(y|x) = softmax(logits) (N, C).

    Returns the mean and std (ddof=0) over the splits (np.array_split sizes), as in Salimans et al.
    """
    z = as_float64_matrix(logits, "logits")
    if not 1 <= splits <= z.shape[0]:
        raise ValueError(f"splits: expected 1 <= splits <= {z.shape[0]} (rows), found {splits}")
    logp = torch.log_softmax(z, dim=1)  # (N, C)
    scores = []
    for idx in np.array_split(np.arange(z.shape[0]), splits):
        lp = logp[torch.from_numpy(idx)]
        log_marginal = torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])  # (C,)
        kl = (lp.exp() * (lp - log_marginal)).sum(1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------- precision / recall


def _manifold_coverage(points: torch.Tensor, support: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of points with ||p - s_j|| <= r_j for some support point j.

    The j of least margin ||p - s_j|| - r_j is found (fast distances for D >= 16), then checked exactly.
    """
    inside = torch.zeros(points.shape[0], dtype=torch.bool)
    step = rows_per_block(support.shape[0])
    for i in range(0, points.shape[0], step):
        chunk = points[i : i + step]  # (c, D)
        d = torch.cdist(chunk, support, compute_mode=cdist_mode(chunk.shape[1]))  # (c, M)
        j = (d - radii[None, :]).argmin(1)  # (c,)
        inside[i : i + step] = (chunk - support[j]).norm(dim=1) <= radii[j]
    return float(inside.double().mean())


def precision_recall(real_feats: Any, fake_feats: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius = distance to the
    k-th nearest other point of the set. precision = share of fake inside the real manifold;
    recall = share of real inside the fake manifold.
    """
    real, fake = as_float64_matrix(real_feats, "real_feats"), as_float64_matrix(fake_feats, "fake_feats")
    _same_dim(real, fake, "real_feats and fake_feats")
    r_real, r_fake = kth_nearest_distance(real, k=k), kth_nearest_distance(fake, k=k)
    return _manifold_coverage(fake, real, r_real), _manifold_coverage(real, fake, r_fake)


# ----------------------------------------------------------------------------- MMD and energy


def median_heuristic(x: Any, y: Any, max_points: int = 4000, seed: int = 0) -> float:
    """Median of ||z_i - z_j|| over pairs i < j of the pooled set z = [x; y] (a random subset of
    ``max_points`` rows when larger)."""
    z = torch.cat([as_float64_matrix(x, "x"), as_float64_matrix(y, "y")])
    if z.shape[0] > max_points:
        z = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]]
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
    return median(torch.cdist(z, z, compute_mode=cdist_mode(z.shape[1], exact=True))[iu[0], iu[1]])


def mmd_rbf(x: Any, y: Any, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-||a - b||^2 / (2 h^2)); h = median heuristic if None.

    MMD_u^2 = (S_xx - m) / (m(m-1)) + (S_yy - n) / (n(n-1)) - 2 S_xy / (mn), S = kernel sums
    (the diagonal k(x_i, x_i) = 1 is removed). Slightly negative when the laws match.
    """
    xs, ys = as_float64_matrix(x, "x"), as_float64_matrix(y, "y")
    _same_dim(xs, ys, "x and y")
    m, n = xs.shape[0], ys.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"x and y: expected at least 2 rows each, found {m} and {n}")
    h = median_heuristic(xs, ys) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth: expected > 0, found {h}")

    def kern(d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-d.square() / (2 * h * h))

    sxx, syy, sxy = (pairwise_block_sum(a, b, kern, exact=False) for a, b in ((xs, xs), (ys, ys), (xs, ys)))
    return (sxx - m) / (m * (m - 1)) + (syy - n) / (n * (n - 1)) - 2 * sxy / (m * n)


def energy_distance(x: Any, y: Any) -> float:
    """Energy distance (V-statistic, squared form): 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||.

    Means run over all pairs including i = j, so it is >= 0 and exactly 0 for identical sets;
    in 1-D it equals scipy.stats.energy_distance(x, y) ** 2.
    """
    xs, ys = as_float64_matrix(x, "x"), as_float64_matrix(y, "y")
    _same_dim(xs, ys, "x and y")
    m, n = xs.shape[0], ys.shape[0]
    value = (2 * pairwise_block_sum(xs, ys, lambda d: d) / (m * n)
             - pairwise_block_sum(xs, xs, lambda d: d) / m**2 - pairwise_block_sum(ys, ys, lambda d: d) / n**2)
    return max(value, 0.0)


# ----------------------------------------------------------------------------- torchmetrics FID


class _Float64Features(torch.nn.Module):
    """Wraps a feature extractor: float64 outputs of shape (N, F), with ``num_features`` = F."""

    def __init__(self, extractor: torch.nn.Module, num_features: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x).reshape(x.shape[0], -1).double()


def fid_torchmetrics(real: Any, fake: Any, feature_extractor: torch.nn.Module, batch_size: int = 1024) -> float:
    """FID from ``torchmetrics.image.fid.FrechetInceptionDistance`` with a custom extractor.

    torchmetrics accumulates sums in float64 and returns the result in the extractor's output
    dtype; the wrapper casts features to float64 and gives ``num_features`` (otherwise
    torchmetrics probes the module with a dummy 3x299x299 image). Inputs are fed as given
    (tensors or arrays with a leading batch axis), ``batch_size`` rows at a time.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real_t, fake_t = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in (real, fake))
    if real_t.shape[0] < 2 or fake_t.shape[0] < 2:
        raise ValueError(f"real and fake: expected at least 2 rows each, found {real_t.shape[0]} and {fake_t.shape[0]}")
    with torch.no_grad():
        num_features = int(feature_extractor(real_t[:1]).reshape(1, -1).shape[1])
        metric = FrechetInceptionDistance(feature=_Float64Features(feature_extractor, num_features))
        for data, is_real in ((real_t, True), (fake_t, False)):
            for i in range(0, data.shape[0], batch_size):
                metric.update(data[i : i + batch_size], real=is_real)
        return float(metric.compute())


def class_figures(probs: torch.Tensor, heldout_confidence: float) -> dict:
    """Each class's share of the samples (by top class), the mean top-class probability, and the same
    mean on held-out data (the "classes" entry of dmmd sample's report)."""
    shares = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double() / len(probs)
    return {"class_shares": [round(float(v), 4) for v in shares],
            "min_class_share": float(shares.min()), "max_class_share": float(shares.max()),
            "confidence": float(probs.max(1).values.mean()), "confidence_heldout": float(heldout_confidence)}
