"""Checks for dmmd.apps.studies.optimal_width: closed forms against autograd, quadrature and Monte
Carlo (float64); closed-form maximisers against numeric search; monotonicity in the distance."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from dmmd.apps.studies import optimal_width as ow
from dmmd.math.divergences import rbf_kernel
from dmmd.math.divergences import witness as sample_witness

DIMS = (1, 2, 8, 64)
DELTAS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)


def _mean_vector(delta: float, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(d)
    return delta * v / np.linalg.norm(v)


def _torch_witness(z, m, width: float, s: float):
    """Closed-form witness in torch (float64), for autograd."""
    d = m.shape[-1]
    u = width * width + s * s
    c = (width * width / u) ** (d / 2)
    return c * (torch.exp(-(z * z).sum(-1) / (2 * u)) - torch.exp(-((z - m) ** 2).sum(-1) / (2 * u)))


def _gauss_hermite_expectation(fn, m: np.ndarray, s: float, n: int):
    """E_{Z ~ N(m, s^2 I_d)} fn(Z) by a tensor-product Gauss-Hermite rule (fn: (N, d) -> (N, ...))."""
    d = m.shape[0]
    x, wts = np.polynomial.hermite.hermgauss(n)
    nodes = np.array(list(itertools.product(x, repeat=d)))
    weights = np.prod(np.array(list(itertools.product(wts, repeat=d))), axis=1) / math.pi ** (d / 2)
    vals = fn(m + math.sqrt(2.0) * s * nodes)
    return np.tensordot(weights, vals, axes=(0, 0))


def _normal_pdf(x, mu, s):
    return math.exp(-(x - mu) ** 2 / (2 * s * s)) / math.sqrt(2 * math.pi * s * s)


# ------------------------------------------------------------------------------ witness
@pytest.mark.parametrize("width,delta,s", [(0.3, 1.0, 1.0), (1.0, 2.5, 0.5), (4.0, 0.2, 2.0)])
def test_witness_matches_quadrature_d1(width, delta, s):
    m = np.array([delta])
    for z in (-1.3, 0.0, 0.4 * delta, delta, 2.0 * delta + 1.0):
        k = lambda x: math.exp(-(z - x) ** 2 / (2 * width * width))  # noqa: E731
        ep = quad(lambda x: k(x) * _normal_pdf(x, 0.0, s), -np.inf, np.inf, epsabs=0, epsrel=1e-13)[0]
        eq = quad(lambda y: k(y) * _normal_pdf(y, delta, s), -np.inf, np.inf, epsabs=0, epsrel=1e-13)[0]
        assert ow.witness(np.array([z]), m, width, s) == pytest.approx(ep - eq, rel=1e-10, abs=1e-14)


def test_witness_matches_sample_based_witness_d3():
    """Loose Monte-Carlo link to the project's own estimator (dmmd.math.divergences.witness)."""
    torch.manual_seed(0)
    d, s, width, n = 3, 0.8, 1.1, 200_000
    m = _mean_vector(1.5, d)
    x = s * torch.randn(n, d, dtype=torch.float64)
    y = torch.from_numpy(m) + s * torch.randn(n, d, dtype=torch.float64)
    z = torch.from_numpy(np.stack([np.zeros(d), m, 0.5 * m, np.ones(d)]))
    kern = lambda a, b: rbf_kernel(a, b, width)  # noqa: E731
    est = sample_witness(kern, z, x, y).numpy()
    # standard error of a difference of two sample means of values in [0, 1]
    se = np.sqrt((kern(z, x).var(1) + kern(z, y).var(1)).numpy() / n)
    exact = ow.witness(z.numpy(), m, width, s)
    assert np.all(np.abs(est - exact) < 5 * se + 1e-12)


@pytest.mark.parametrize("d", [1, 2, 3, 8, 64])
def test_witness_gradient_matches_autograd(d):
    rng = np.random.default_rng(d)
    m = _mean_vector(2.0, d, seed=d)
    z = torch.tensor(rng.standard_normal((5, d)) + m, dtype=torch.float64, requires_grad=True)
    for width, s in [(0.7, 1.0), (3.0, 0.4)]:
        (grad,) = torch.autograd.grad(_torch_witness(z, torch.from_numpy(m), width, s).sum(), z)
        np.testing.assert_allclose(ow.witness_gradient(z.detach().numpy(), m, width, s), grad.numpy(),
                                   rtol=1e-12, atol=1e-300)


# ------------------------------------------------------------------------------ criteria
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("delta", [0.1, 1.0, 4.0, 20.0])
def test_gradient_norm_at_mean_matches_autograd(d, delta):
    m = torch.from_numpy(_mean_vector(delta, d))
    for width, s in [(0.2, 1.0), (1.0, 1.0), (5.0, 0.3), (30.0, 2.0)]:
        z = m.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_torch_witness(z, m, width, s), z)
        expected = grad.norm().item()
        assert ow.gradient_norm_at_mean(width, delta, s, d) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_criteria_broadcast_over_widths():
    widths = np.geomspace(0.1, 10, 7)
    vec = ow.gradient_norm_at_mean(widths, 2.0, 1.0, 3)
    assert vec.shape == (7,)
    np.testing.assert_allclose(vec, [ow.gradient_norm_at_mean(w, 2.0, 1.0, 3) for w in widths], rtol=1e-15)
    assert ow.expected_sq_gradient_norm(widths, 2.0, 1.0, 3).shape == (7,)


@pytest.mark.parametrize("width,delta,s", [(0.5, 1.0, 1.0), (2.0, 3.0, 0.7), (1.0, 0.1, 1.0), (0.1, 2.0, 1.5),
                                           (10.0, 25.0, 1.0)])
def test_expected_sq_and_drift_match_quadrature_d1(width, delta, s):
    m = np.array([delta])
    grad = lambda z: ow.witness_gradient(np.array([z]), m, width, s)[0]  # noqa: E731
    G = quad(lambda z: grad(z) ** 2 * _normal_pdf(z, delta, s), -np.inf, np.inf, epsabs=0, epsrel=1e-13,
             limit=200)[0]
    h = quad(lambda z: grad(z) * _normal_pdf(z, delta, s), -np.inf, np.inf, epsabs=0, epsrel=1e-13,
             limit=200)[0]
    assert ow.expected_sq_gradient_norm(width, delta, s, 1) == pytest.approx(G, rel=1e-9)
    assert ow.mean_drift_norm(width, delta, s, 1) == pytest.approx(abs(h), rel=1e-9)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("width,delta,s", [(0.6, 1.0, 1.0), (2.0, 2.5, 0.8), (1.0, 0.3, 1.0)])
def test_expected_sq_and_drift_match_gauss_hermite(d, width, delta, s):
    m = _mean_vector(delta, d, seed=7)
    n = 60 if d == 2 else 36
    G = _gauss_hermite_expectation(lambda z: (ow.witness_gradient(z, m, width, s) ** 2).sum(-1), m, s, n)
    drift = _gauss_hermite_expectation(lambda z: ow.witness_gradient(z, m, width, s), m, s, n)
    assert ow.expected_sq_gradient_norm(width, delta, s, d) == pytest.approx(G, rel=1e-8)
    assert ow.mean_drift_norm(width, delta, s, d) == pytest.approx(np.linalg.norm(drift), rel=1e-8)
    # the drift points from the particles toward the data: along -m
    assert np.allclose(drift / np.linalg.norm(drift), -m / delta, atol=1e-10)


@pytest.mark.parametrize("d", [2, 3])
def test_expected_sq_matches_monte_carlo_autograd(d):
    """Independent path: torch autograd of the witness on samples Z ~ Q, loose tolerance."""
    torch.manual_seed(d)
    n, width, delta, s = 200_000, 0.9, 1.7, 1.0
    m = torch.from_numpy(_mean_vector(delta, d, seed=3))
    z = (m + s * torch.randn(n, d, dtype=torch.float64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(_torch_witness(z, m, width, s).sum(), z)
    sq = (grad * grad).sum(-1)
    est, se = sq.mean().item(), sq.std().item() / math.sqrt(n)
    assert abs(est - ow.expected_sq_gradient_norm(width, delta, s, d)) < 5 * se
    drift = grad.mean(0)
    drift_se = grad.std(0).max().item() / math.sqrt(n)
    assert abs(drift.norm().item() - ow.mean_drift_norm(width, delta, s, d)) < 5 * math.sqrt(d) * drift_se


@pytest.mark.parametrize("d", [1, 5, 64])
def test_drift_is_half_the_gradient_of_mmd2_in_the_translation(d):
    """MMD^2(P, Q_m) = 2 c2 (1 - exp(-|m|^2 / (2 (w^2 + 2 s^2)))), c2 = (w^2 / (w^2 + 2 s^2))^(d/2)."""
    width, s, delta = 1.3, 0.9, 2.2
    m = torch.from_numpy(_mean_vector(delta, d)).requires_grad_(True)
    a = width**2 + 2 * s**2
    mmd2 = 2 * (width**2 / a) ** (d / 2) * (1 - torch.exp(-(m * m).sum() / (2 * a)))
    (g,) = torch.autograd.grad(mmd2, m)
    assert ow.mean_drift_norm(width, delta, s, d) == pytest.approx(0.5 * g.norm().item(), rel=1e-12)


# ------------------------------------------------------------------------------ maximisers
@pytest.mark.parametrize("criterion", ow.CLOSED_FORM_CRITERIA)
@pytest.mark.parametrize("d", DIMS)
def test_closed_form_optimum_equals_numeric(criterion, d):
    for delta, s in itertools.product(DELTAS, (1.0, 0.3, 3.0)):
        closed = ow.optimal_width(delta, s, d, criterion)
        numeric = ow.optimal_width_numeric(delta, s, d, criterion)
        assert closed == pytest.approx(numeric, rel=1e-6), (delta, s)


@pytest.mark.parametrize("criterion", ow.CLOSED_FORM_CRITERIA)
@pytest.mark.parametrize("d", DIMS)
def test_closed_form_optimum_is_stationary(criterion, d):
    """d/dw log(criterion) vanishes at w*, by torch autograd of the log criterion."""
    a = 1.0 if criterion == "mean" else 2.0
    for delta in DELTAS:
        w_star = torch.tensor(ow.optimal_width(delta, 1.0, d, criterion), dtype=torch.float64,
                              requires_grad=True)
        u = w_star**2 + a
        logf = d * torch.log(w_star) - (d / 2 + 1) * torch.log(u) - delta**2 / (2 * u)
        (dlog,) = torch.autograd.grad(logf, w_star)
        assert abs(dlog.item()) * w_star.item() < 1e-10 * d


@settings(max_examples=60, deadline=None)
@given(delta=st.floats(1e-3, 1e3), s=st.floats(1e-2, 1e2), d=st.integers(1, 256),
       criterion=st.sampled_from(ow.CLOSED_FORM_CRITERIA), factor=st.floats(1e-3, 1e3))
def test_closed_form_optimum_beats_any_other_width(delta, s, d, criterion, factor):
    w_star = ow.optimal_width(delta, s, d, criterion)
    assert np.isfinite(w_star) and w_star > 0
    best = ow.log_criterion(criterion, w_star, delta, s, d)
    for w in (w_star * factor, w_star * (1 + 1e-4), w_star * (1 - 1e-4)):
        assert ow.log_criterion(criterion, w, delta, s, d) <= best + 1e-12 * max(1.0, abs(best))


@pytest.mark.parametrize("criterion", ow.CLOSED_FORM_CRITERIA)
@pytest.mark.parametrize("d", DIMS + (3, 256))
def test_optimal_width_increases_with_distance(criterion, d):
    deltas = np.geomspace(1e-3, 1e3, 2001)
    ws = ow.optimal_width(deltas, 1.0, d, criterion)
    assert np.all(np.diff(ws) > 0)
    numeric = [ow.optimal_width_numeric(x, 1.0, d, criterion) for x in DELTAS]
    assert np.all(np.diff(numeric) > 0)


@pytest.mark.parametrize("criterion", ow.CLOSED_FORM_CRITERIA)
@pytest.mark.parametrize("d", DIMS)
def test_optimal_width_limits_and_scaling(criterion, d):
    a = 1.0 if criterion == "mean" else 2.0
    s = 0.7
    # delta -> 0: w*^2 -> d a s^2 / 2 (the data scale, not zero); exactly that at delta = 0
    assert ow.optimal_width(0.0, s, d, criterion) == pytest.approx(math.sqrt(d * a / 2) * s, rel=1e-14)
    assert ow.optimal_width(1e-6, s, d, criterion) == pytest.approx(math.sqrt(d * a / 2) * s, rel=1e-10)
    # delta -> inf: w* ~ delta / sqrt(2)
    assert ow.optimal_width(1e6, s, d, criterion) == pytest.approx(1e6 / math.sqrt(2), rel=1e-9)
    # scale equivariance: w*(delta, s) = s w*(delta / s, 1)
    for delta in DELTAS:
        assert ow.optimal_width(delta, s, d, criterion) == pytest.approx(
            s * ow.optimal_width(delta / s, 1.0, d, criterion), rel=1e-13)


def test_drift_optimum_is_mean_optimum_at_sqrt2_s():
    for d, delta in itertools.product(DIMS, DELTAS):
        assert ow.optimal_width(delta, 1.0, d, "drift") == pytest.approx(
            ow.optimal_width(delta, math.sqrt(2), d, "mean"), rel=1e-14)


@pytest.mark.parametrize("d,peak", [(1, 4.5), (2, 4.5), (8, 4.5), (64, 10.0)])
def test_expected_sq_optimum_rises_then_falls_back(d, peak):
    """E_Q ||grad f||^2 is not a faithful proxy at large distance: its maximiser grows with delta up
    to ~peak, then returns to the delta-independent repulsion scale."""
    near = [ow.optimal_width_numeric(x, 1.0, d, "expected_sq") for x in (0.5, 1.0, 2.0, peak)]
    assert np.all(np.diff(near) > 0)
    far = ow.optimal_width_numeric(4 * peak, 1.0, d, "expected_sq")
    assert far < near[-1]
    limit = ow.optimal_width_numeric(1e4, 1.0, d, "expected_sq")
    assert ow.optimal_width_numeric(1e3, 1.0, d, "expected_sq") == pytest.approx(limit, rel=1e-6)
    assert limit < near[-1]


def test_invalid_inputs():
    with pytest.raises(ValueError):
        ow.optimal_width(1.0, 1.0, 2, "expected_sq")
    with pytest.raises(ValueError):
        ow.optimal_width(1.0, 1.0, 2, "nope")
    with pytest.raises(ValueError):
        ow.gradient_norm_at_mean(-1.0, 1.0, 1.0, 2)
    with pytest.raises(ValueError):
        ow.gradient_norm_at_mean(1.0, 1.0, 0.0, 2)
    with pytest.raises(ValueError):
        ow.optimal_width(-1.0, 1.0, 2)
    with pytest.raises(ValueError):
        ow.optimal_width(1.0, 1.0, 0)
    with pytest.raises(ValueError):
        ow.optimal_width_numeric(0.0, 1.0, 2)


# ------------------------------------------------------------------------------ plot / CLI
def test_main_writes_png_and_json(tmp_path):
    assert ow.main(["--out", str(tmp_path), "--num", "12", "--dims", "1", "8"]) == 0
    png = tmp_path / "optimal_width.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 200_000
    data = json.loads((tmp_path / "optimal_width.json").read_text())
    assert len(data["deltas"]) == 12 and data["dims"] == [1, 8]
    assert set(data["curves"]) == set(ow.CRITERIA)
    for crit in ow.CLOSED_FORM_CRITERIA:
        for d in ("1", "8"):
            ws = np.array(data["curves"][crit][d])
            assert np.all(np.diff(ws) > 0)
            np.testing.assert_allclose(ws, ow.optimal_width(np.array(data["deltas"]), 1.0, int(d), crit))


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dmmd.apps.studies.optimal_width", "--out", str(tmp_path),
                           "--num", "5", "--dims", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "optimal_width.png").exists() and (tmp_path / "optimal_width.json").exists()
