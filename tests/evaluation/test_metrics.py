"""Tests of dmmd.evaluation.metrics against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmmd.evaluation import diversity, metrics
from dmmd.evaluation.diversity import as_float64_matrix, kth_nearest_distance, pairwise_block_sum
from dmmd.evaluation.metrics import (
    energy_distance,
    frechet_distance,
    frechet_distance_from_stats,
    inception_score,
    kid,
    kid_subset_indices,
    median_heuristic,
    mmd_rbf,
    polynomial_mmd2_unbiased,
    precision_recall,
)

FEW = settings(max_examples=8, deadline=None)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Reference FID: np.cov + scipy.linalg.sqrtm(S1 S2), float64 (as in pytorch-fid)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@FEW
@given(d=st.integers(1, 8), n=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_frechet_matches_scipy(d: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(2 * d + 10 + n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(3 * d + 10, d)) * rng.uniform(0.5, 2, size=d) + rng.normal(size=d)
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-6, abs=1e-9)
    assert frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(
        scipy_frechet(a.astype(np.float32).astype(np.float64), b), rel=1e-6, abs=1e-9
    )


def test_frechet_from_stats_closed_form_and_errors() -> None:
    # diagonal Gaussians: d^2 = ||mu1 - mu2||^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="s2"):
        frechet_distance_from_stats(mu1, np.diag(a), mu2, np.eye(2))
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance(np.zeros((5, 2)), np.zeros((5, 3)))


def _feature_net(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 5)).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_frechet_matches_torchmetrics(dtype: torch.dtype) -> None:
    pytest.importorskip("torchmetrics")
    net = _feature_net(dtype)
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(700, 6, generator=gen, dtype=dtype)
    fake = (1.3 * torch.randn(500, 6, generator=gen) + 0.2).to(dtype)
    with torch.no_grad():
        ours = frechet_distance(net(real), net(fake))
    theirs = metrics.fid_torchmetrics(real, fake, net, batch_size=256)
    assert ours > 1e-3
    assert theirs == pytest.approx(ours, rel=1e-4)


def brute_poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2, k(a, b) = (a.b / D + 1)^3, by explicit loops over pairs."""
    d = x.shape[1]

    def k(a, b):
        return (sum(float(ai) * float(bi) for ai, bi in zip(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_kid_matches_brute_force_loop() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) + 0.5
    subsets = kid_subset_indices(30, 25, num_subsets=3, subset_size=10, seed=7)
    values = np.array([brute_poly_mmd2(a[ia.numpy()], b[ib.numpy()]) for ia, ib in subsets])
    mean, se = kid(a, b, num_subsets=3, subset_size=10, seed=7)
    assert mean == pytest.approx(values.mean(), rel=1e-10)
    assert se == pytest.approx(values.std(ddof=1) / math.sqrt(3), rel=1e-8)
    assert polynomial_mmd2_unbiased(a, b) == pytest.approx(brute_poly_mmd2(a, b), rel=1e-10)
    assert math.isnan(kid(a, b, num_subsets=1, subset_size=10)[1])
    with pytest.raises(ValueError, match="subset_size"):
        kid(a, b, subset_size=26)


def brute_rbf_mmd2(x: np.ndarray, y: np.ndarray, h: float) -> float:
    kxx = np.exp(-scipy.spatial.distance.cdist(x, x, "sqeuclidean") / (2 * h * h))
    kyy = np.exp(-scipy.spatial.distance.cdist(y, y, "sqeuclidean") / (2 * h * h))
    kxy = np.exp(-scipy.spatial.distance.cdist(x, y, "sqeuclidean") / (2 * h * h))
    m, n = len(x), len(y)
    return (kxx.sum() - m) / (m * (m - 1)) + (kyy.sum() - n) / (n * (n - 1)) - 2 * kxy.mean()


@FEW
@given(m=st.integers(2, 40), n=st.integers(2, 40), d=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_mmd_energy_median_match_references(m: int, n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(m, d)), rng.normal(size=(n, d)) + 0.3
    h = median_heuristic(x, y)
    assert h == pytest.approx(np.median(scipy.spatial.distance.pdist(np.vstack([x, y]))), rel=1e-12)
    assert mmd_rbf(x, y, bandwidth=0.7) == pytest.approx(brute_rbf_mmd2(x, y, 0.7), rel=1e-9, abs=1e-12)
    assert mmd_rbf(x, y) == pytest.approx(brute_rbf_mmd2(x, y, h), rel=1e-9, abs=1e-12)
    assert energy_distance(x[:, :1], y[:, :1]) == pytest.approx(
        scipy.stats.energy_distance(x[:, 0], y[:, 0]) ** 2, rel=1e-9, abs=1e-12
    )


def test_metrics_floor_on_identical_sets_and_grow_with_mean_shift() -> None:
    x = np.random.default_rng(0).normal(size=(400, 3))
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]
    fns = {
        "frechet": frechet_distance,
        "kid": lambda a, b: kid(a, b, num_subsets=5, subset_size=400)[0],
        "mmd_rbf": lambda a, b: mmd_rbf(a, b, bandwidth=1.0),
        "mmd_rbf_median": mmd_rbf,
        "energy": energy_distance,
    }
    for name, fn in fns.items():
        values = [fn(x, x + np.array([s, 0.0, 0.0])) for s in shifts]
        # 0, or for the unbiased estimators (KID, MMD) their floor just below 0 (order 1/N)
        assert -0.1 < values[0] <= 1e-12, (name, values)
        assert all(b > a for a, b in zip(values, values[1:])), (name, values)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(x, x + 2.0) == pytest.approx(12.0, rel=1e-9)
    assert energy_distance(x, x) == 0.0


def test_inception_score_uniform_and_confident() -> None:
    assert inception_score(np.zeros((100, 7)), splits=5) == pytest.approx((1.0, 0.0), abs=1e-12)


@FEW
@given(k=st.integers(1, 12), splits=st.integers(1, 5), per=st.integers(1, 4))
def test_inception_score_of_confident_distinct_classes_is_class_count(k: int, splits: int, per: int) -> None:
    labels = torch.arange(k * splits * per) % k  # every split holds each class equally often
    logits = 60.0 * torch.nn.functional.one_hot(labels, k).double()
    mean, std = inception_score(logits, splits=splits)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_errors() -> None:
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((3, 4)), splits=4)


def test_precision_recall_identical_disjoint_and_partial() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 2))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # two well-separated clusters of real data; fake covers only one: precision 1, recall ~1/2
    two = np.vstack([real[:150], real[150:] + 50.0])
    fake = rng.normal(size=(150, 2))
    p, r = precision_recall(two, fake, k=3)
    assert p > 0.95 and 0.4 < r < 0.55


@pytest.mark.parametrize("d", [3, 20])  # exact cdist below D = 16, matrix-product + exact recheck above
def test_chunked_distances_match_full_matrix(monkeypatch: pytest.MonkeyPatch, d: int) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(57, d)), rng.normal(size=(41, d))
    full = scipy.spatial.distance.cdist(x, x)
    np.fill_diagonal(full, np.inf)
    monkeypatch.setattr(diversity, "_BLOCK_ELEMENTS", 100)  # 2 rows per block
    kth = kth_nearest_distance(x, k=2).numpy()
    assert np.allclose(kth, np.sort(full, 1)[:, 1], rtol=1e-12)
    to_y = kth_nearest_distance(x, y, k=1).numpy()
    assert np.allclose(to_y, scipy.spatial.distance.cdist(x, y).min(1), rtol=1e-12)
    total = pairwise_block_sum(torch.from_numpy(x), torch.from_numpy(y), lambda d: d)
    assert total == pytest.approx(scipy.spatial.distance.cdist(x, y).sum(), rel=1e-12)
    copies = np.repeat(x, 3, axis=0) * 100.0  # large norms: matrix-product distances are not 0 here
    assert (kth_nearest_distance(copies, k=2) == 0.0).all()
    assert precision_recall(copies, copies, k=2) == (1.0, 1.0)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match=r"2-D array \(N, D\), found shape \(5,\)"):
        as_float64_matrix(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        as_float64_matrix(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="k: expected"):
        kth_nearest_distance(np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(np.zeros((3, 2)), np.ones((3, 2)), bandwidth=0.0)

