"""Tests of dmmd.evaluation.diversity: brute-force references, collapse, known mixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.spatial.distance
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmmd.evaluation.diversity import (
    distinct_share,
    diversity_report,
    median_distance_to_set,
    median_nn_distance,
    mode_report,
    near_duplicate_share,
    rms_radius,
)

FEW = settings(max_examples=8, deadline=None)
RADIUS, STD = 2.0, 0.05
CENTRES = RADIUS * np.array([[math.cos(a), math.sin(a)] for a in np.arange(8) * 2 * math.pi / 8])


def eight_gaussians(n: int, seed: int, weights: np.ndarray | None = None) -> np.ndarray:
    """n points of the 8-Gaussian mixture (radius 2, std 0.05), shape (n, 2)."""
    rng = np.random.default_rng(seed)
    modes = rng.choice(8, size=n, p=weights)
    return CENTRES[modes] + STD * rng.normal(size=(n, 2))


def collapsed(n: int = 2000, distinct: int = 20, seed: int = 9) -> np.ndarray:
    """n samples that are ``distinct`` points of the mixture, each repeated n / distinct times."""
    return np.repeat(eight_gaussians(distinct, seed), n // distinct, axis=0)


@FEW
@given(n=st.integers(2, 60), d=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_nearest_neighbour_functions_match_brute_force(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, ref = rng.normal(size=(n, d)), rng.normal(size=(n + 3, d))
    full = scipy.spatial.distance.cdist(x, x)
    np.fill_diagonal(full, np.inf)
    nn = full.min(1)
    assert median_nn_distance(x) == pytest.approx(np.median(nn), rel=1e-12)
    assert median_nn_distance(torch.from_numpy(x)) == pytest.approx(np.median(nn), rel=1e-12)
    u = np.unique(nn)  # threshold between two distinct values: no ties with rounding differences
    thr = float((u[len(u) // 2] + u[len(u) // 2 - 1]) / 2) if len(u) > 1 else float(u[0]) + 1.0
    assert near_duplicate_share(x, thr) == pytest.approx((nn < thr).mean(), abs=1e-12)
    to_ref = scipy.spatial.distance.cdist(x, ref).min(1)
    assert median_distance_to_set(x, ref) == pytest.approx(np.median(to_ref), rel=1e-12)


@FEW
@given(distinct=st.integers(1, 30), copies=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_distinct_share_counts_repeated_points(distinct: int, copies: int, seed: int) -> None:
    pts = np.random.default_rng(seed).normal(size=(distinct, 3)) * 10  # far apart on a 1e-3 grid
    x = np.repeat(pts, copies, axis=0)
    assert distinct_share(x, 1e-3) == pytest.approx(distinct / (distinct * copies))
    assert distinct_share(x + 1e-9 * np.random.default_rng(seed).normal(size=x.shape), 1.0e3) == pytest.approx(
        1 / (distinct * copies), abs=0.5
    )  # a coarse grid merges everything into very few cells


def test_collapsed_samples_are_flagged() -> None:
    train, heldout = eight_gaussians(2000, 1), eight_gaussians(2000, 2)
    rep = diversity_report(collapsed(), train, heldout)
    assert rep["resolution"] == pytest.approx(1e-3 * rms_radius(train))
    assert rep["distinct_share"] == pytest.approx(0.01)
    assert rep["median_nn_samples"] == 0.0
    assert rep["near_duplicate_share"] == 1.0
    assert rep["near_duplicate_share_heldout"] < 0.1


def test_fresh_sample_from_the_data_law_passes() -> None:
    train, heldout, fresh = eight_gaussians(2000, 1), eight_gaussians(2000, 2), eight_gaussians(2000, 3)
    rep = diversity_report(fresh, train, heldout)
    assert rep["distinct_share"] > 0.95  # 250 points per mode of std 0.05 on a 2e-3 grid: a few share a cell
    assert abs(rep["distinct_share"] - rep["distinct_share_heldout"]) < 0.02
    assert rep["near_duplicate_share"] < 0.1
    assert abs(rep["near_duplicate_share"] - rep["near_duplicate_share_heldout"]) < 0.03
    assert 0.8 < rep["median_nn_samples"] / rep["median_nn_heldout"] < 1.25
    assert 0.8 < rep["nn_to_train_ratio"] < 1.25
    copies = diversity_report(train[:2000], train, heldout)  # memorised training data
    assert copies["nn_to_train_samples"] == 0.0 and copies["nn_to_train_ratio"] == 0.0


def test_diversity_report_validates_dimensions() -> None:
    with pytest.raises(ValueError, match="same dimension"):
        diversity_report(np.zeros((5, 2)), np.zeros((5, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="resolution"):
        distinct_share(np.zeros((5, 2)), 0.0)


def test_mode_report_exact_on_constructed_mixture() -> None:
    # 4 modes; mode j holds 4 * (j + 1) points at centre + (+-a, +-a), so every coordinate
    # deviates by exactly a from the mode mean; plus 10 outliers far from every centre.
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    a, std = 0.1, 0.1
    pattern = a * np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]])
    blocks = [np.tile(pattern, (j + 1, 1)) + centres[j] for j in range(4)]
    outliers = np.array([[5.0, -0.5]] * 10)  # nearest centre: 0 (distance ~5.02), not near
    x = np.vstack(blocks + [outliers])
    n, n_near = len(x), 40
    rep = mode_report(x, centres, data_std=std, radius_in_std=3.0)
    assert rep["radius"] == pytest.approx(0.3)
    assert rep["near_share"] == pytest.approx(n_near / n)
    assert rep["mode_shares"] == pytest.approx([(4 + 10) / n, 8 / n, 12 / n, 16 / n])
    assert rep["near_mode_shares"] == pytest.approx([4 / n, 8 / n, 12 / n, 16 / n])
    assert rep["modes_covered"] == 4
    expected = a * math.sqrt(n_near / (n_near - 4))  # pooled: sum n_j * 2a^2 / (2 * sum (n_j - 1))
    assert rep["within_mode_std"] == pytest.approx(expected, rel=1e-12)
    assert rep["within_mode_std_ratio"] == pytest.approx(expected / std, rel=1e-12)


def test_mode_report_on_sampled_mixture_matches_theory() -> None:
    weights = np.array([0.05, 0.05, 0.1, 0.1, 0.1, 0.15, 0.2, 0.25])
    x = eight_gaussians(20000, 4, weights)
    rep = mode_report(x, CENTRES, data_std=STD)
    # 2-D Gaussian: P(r <= 3 sigma) = 1 - exp(-4.5); per-coordinate variance given r <= 3 sigma is
    # sigma^2 * (2 - 9 e^{-4.5} / (1 - e^{-4.5})) / 2
    p_in = 1 - math.exp(-4.5)
    std_ratio = math.sqrt((2 - 9 * math.exp(-4.5) / p_in) / 2)
    assert rep["near_share"] == pytest.approx(p_in, abs=0.005)
    assert rep["mode_shares"] == pytest.approx(weights.tolist(), abs=0.01)
    assert rep["within_mode_std_ratio"] == pytest.approx(std_ratio, abs=0.02)
    own = CENTRES[scipy.spatial.distance.cdist(x, CENTRES).argmin(1)]
    squashed = mode_report(own + 0.1 * (x - own), CENTRES, data_std=STD)  # every mode shrunk tenfold
    assert squashed["near_share"] == 1.0
    assert squashed["within_mode_std_ratio"] == pytest.approx(0.1, rel=0.05)
    missing = mode_report(x[np.linalg.norm(x - CENTRES[0], axis=1) > 1.0], CENTRES, data_std=STD)
    assert missing["modes_covered"] == 7 and missing["mode_shares"][0] == 0.0
