"""Independent float64 reference tests for dmmd.math.divergences (docs/method.md).

Every reference below is written from the formulas alone with explicit Python loops over samples
and plain ``math`` arithmetic, so that it shares no code (and no vectorisation trick)
with the implementation under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmmd.math.divergences import (
    kale_objective,
    linear_kernel,
    linear_witness,
    mmd2,
    mmd2_biased,
    mmd2_linear_unbiased,
    mmd2_unbiased,
    rbf_kernel,
    rq_kernel,
    squared_distances,
    witness,
)

DT = torch.float64
TOL = 1e-10
RQ_ALPHAS = (0.2, 0.5, 1.0, 2.0, 5.0)

HYP = settings(max_examples=30, deadline=None)
HYP_SLOW = settings(max_examples=12, deadline=None)

sizes = st.integers(min_value=2, max_value=12)
dims = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def rand(*shape, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT) * scale + shift


def close(actual: torch.Tensor, expected, tol: float = TOL) -> None:
    expected = torch.as_tensor(expected, dtype=DT)
    assert actual.dtype == DT, f"expected float64 output, got {actual.dtype}"
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- references
def ref_sqdist(u, v) -> float:
    return sum((float(a) - float(b)) ** 2 for a, b in zip(u, v))


def ref_dot(u, v) -> float:
    return sum(float(a) * float(b) for a, b in zip(u, v))


def ref_rbf(u, v, width: float) -> float:
    return math.exp(-ref_sqdist(u, v) / (2.0 * width * width))


def ref_rq(u, v, alphas=RQ_ALPHAS, dot_weight=0.0) -> float:
    d = ref_sqdist(u, v)
    return sum((1.0 + d / (2.0 * a)) ** (-a) for a in alphas) + dot_weight * ref_dot(u, v)


def ref_gram(k, x, y) -> list[list[float]]:
    return [[k(x[i], y[j]) for j in range(y.shape[0])] for i in range(x.shape[0])]


def ref_mmd2_biased_from_gram(Kxx, Kyy, Kxy) -> float:
    n, m = len(Kxx), len(Kyy)
    sxx = sum(Kxx[i][j] for i in range(n) for j in range(n))
    syy = sum(Kyy[i][j] for i in range(m) for j in range(m))
    sxy = sum(Kxy[i][j] for i in range(n) for j in range(m))
    return sxx / (n * n) + syy / (m * m) - 2.0 * sxy / (n * m)


def ref_mmd2_unbiased_from_gram(Kxx, Kyy, Kxy) -> float:
    n, m = len(Kxx), len(Kyy)
    sxx = sum(Kxx[i][j] for i in range(n) for j in range(n) if i != j)
    syy = sum(Kyy[i][j] for i in range(m) for j in range(m) if i != j)
    sxy = sum(Kxy[i][j] for i in range(n) for j in range(m))
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)


def ref_mmd2(k, x, y, unbiased: bool) -> float:
    Kxx, Kyy, Kxy = ref_gram(k, x, x), ref_gram(k, y, y), ref_gram(k, x, y)
    if unbiased:
        return ref_mmd2_unbiased_from_gram(Kxx, Kyy, Kxy)
    return ref_mmd2_biased_from_gram(Kxx, Kyy, Kxy)


def ref_witness(k, z, x, y) -> list[float]:
    out = []
    for zi in z:
        px = sum(k(zi, xi) for xi in x) / x.shape[0]
        py = sum(k(zi, yj) for yj in y) / y.shape[0]
        out.append(px - py)
    return out


def t(a) -> torch.Tensor:
    return torch.tensor(a, dtype=DT)


# Kernel callables (implementation) paired with their loop references.
KERNELS = {
    "linear": (linear_kernel, ref_dot),
    "rbf_0.7": (lambda a, b: rbf_kernel(a, b, 0.7), lambda u, v: ref_rbf(u, v, 0.7)),
    "rbf_2.5": (lambda a, b: rbf_kernel(a, b, 2.5), lambda u, v: ref_rbf(u, v, 2.5)),
    "rq": (rq_kernel, ref_rq),
    "rq_dot": (
        lambda a, b: rq_kernel(a, b, dot_weight=0.3),
        lambda u, v: ref_rq(u, v, dot_weight=0.3),
    ),
}
PD_KERNELS = ["linear", "rbf_0.7", "rbf_2.5", "rq", "rq_dot"]


# --------------------------------------------------------------------------- Gram entries
@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds)
def test_squared_distances_loop(n, m, d, seed):
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1, scale=2.0, shift=0.5)
    close(squared_distances(x, y), ref_gram(ref_sqdist, x, y))


def test_squared_distances_clamped_nonnegative_under_cancellation():
    # Large common offset: ||x||^2 + ||y||^2 - 2<x,y> cancels catastrophically; the true
    # value is >= 0 and the output must be too (the helper's contract: clamped >= 0).
    x = rand(9, 4, seed=3, scale=1e-6, shift=1e5)
    y = torch.cat([x, x + 1e-7])  # exact duplicates and near-duplicates
    d = squared_distances(x, y)
    assert d.shape == (9, 18)
    assert (d >= 0).all()
    assert torch.isfinite(d).all()
    # Duplicates: the true distance is 0. The expansion ||x||^2 + ||y||^2 - 2<x,y> is
    # allowed, so the error may be a few ulps of ||x||^2 + ||y||^2 (here ~8e10, ulp ~1.5e-5),
    # but no more than that.
    scale = 2.0 * float((x * x).sum(1).max())
    assert float(d[:, :9].diagonal().max()) <= 64 * torch.finfo(DT).eps * scale


def test_squared_distances_self_diagonal_zero_and_symmetric():
    x = rand(7, 3, seed=11)
    d = squared_distances(x, x)
    close(d, d.T)
    close(d.diagonal(), torch.zeros(7, dtype=DT))


@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds)
def test_linear_kernel_loop(n, m, d, seed):
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1, shift=-0.3)
    close(linear_kernel(x, y), ref_gram(ref_dot, x, y))


@HYP
@given(
    n=sizes,
    m=sizes,
    d=dims,
    seed=seeds,
    width=st.floats(min_value=0.2, max_value=5.0),
    as_tensor=st.booleans(),
)
def test_rbf_kernel_loop(n, m, d, seed, width, as_tensor):
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1, scale=1.5)
    w = torch.tensor(width, dtype=DT) if as_tensor else width
    close(rbf_kernel(x, y, w), ref_gram(lambda u, v: ref_rbf(u, v, width), x, y))


@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds, dot_weight=st.sampled_from([0.0, 0.25, 1.5]))
def test_rq_kernel_loop_default_alphas(n, m, d, seed, dot_weight):
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1, scale=2.0)
    expected = ref_gram(lambda u, v: ref_rq(u, v, RQ_ALPHAS, dot_weight), x, y)
    close(rq_kernel(x, y, dot_weight=dot_weight), expected)


def test_rq_kernel_default_alphas_are_the_spec_mixture():
    # Same call with and without the MMD-GAN alphas spelled out; and an explicit value:
    # at distance 0 each RQ term is 1, so k(x, x) = number of alphas + dot_weight ||x||^2.
    x, y = rand(5, 3, seed=1), rand(4, 3, seed=2)
    close(rq_kernel(x, y), rq_kernel(x, y, alphas=(0.2, 0.5, 1.0, 2.0, 5.0)))
    diag = rq_kernel(x, x, dot_weight=0.5).diagonal()
    close(diag, 5.0 + 0.5 * (x * x).sum(1))


def test_rq_kernel_custom_alphas():
    x, y = rand(6, 2, seed=5), rand(3, 2, seed=6)
    alphas = (0.1, 3.0)
    close(
        rq_kernel(x, y, alphas=alphas, dot_weight=0.2),
        ref_gram(lambda u, v: ref_rq(u, v, alphas, 0.2), x, y),
    )


def test_rq_single_alpha_closed_form():
    # One pair at squared distance 8 (points (0,0) and (2,2)), alpha = 2:
    # (1 + 8/4)^(-2) = 1/9.
    x, y = t([[0.0, 0.0]]), t([[2.0, 2.0]])
    close(rq_kernel(x, y, alphas=(2.0,)), t([[1.0 / 9.0]]))


def test_rbf_closed_form_value():
    # Squared distance 9 (3-4-... : (0,0) vs (3,0)), width 1.5: exp(-9 / 4.5) = exp(-2).
    close(rbf_kernel(t([[0.0, 0.0]]), t([[3.0, 0.0]]), 1.5), t([[math.exp(-2.0)]]))


@HYP
@given(n=sizes, d=dims, seed=seeds, name=st.sampled_from(PD_KERNELS))
def test_gram_symmetric(n, d, seed, name):
    x = rand(n, d, seed=seed)
    K = KERNELS[name][0](x, x)
    assert K.shape == (n, n)
    close(K, K.T)


@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds, name=st.sampled_from(PD_KERNELS))
def test_gram_transpose_swaps_arguments(n, m, d, seed, name):
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1)
    k = KERNELS[name][0]
    close(k(x, y), k(y, x).T)


@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds, name=st.sampled_from(["rbf_0.7", "rq"]))
def test_stationary_kernels_translation_invariant(n, m, d, seed, name):
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1)
    shift = rand(1, d, seed=seed + 2, scale=3.0)
    k = KERNELS[name][0]
    close(k(x + shift, y + shift), k(x, y), tol=1e-9)


# --------------------------------------------------------------------------- RBF width grad
def test_rbf_width_gradient_matches_analytic():
    x, y = rand(5, 3, seed=21), rand(4, 3, seed=22)
    w = torch.tensor(1.3, dtype=DT, requires_grad=True)
    K = rbf_kernel(x, y, w)
    assert K.requires_grad
    K.sum().backward()
    # d/dw exp(-d / (2 w^2)) = exp(-d / (2 w^2)) * d / w^3
    wv = 1.3
    expected = 0.0
    for i in range(5):
        for j in range(4):
            dd = ref_sqdist(x[i], y[j])
            expected += math.exp(-dd / (2 * wv * wv)) * dd / wv**3
    close(w.grad, t(expected))


def test_rbf_float_and_tensor_width_agree():
    x, y = rand(6, 4, seed=31), rand(5, 4, seed=32)
    close(rbf_kernel(x, y, 0.9), rbf_kernel(x, y, torch.tensor(0.9, dtype=DT)))


# --------------------------------------------------------------------------- gradchecks
def _req(a: torch.Tensor) -> torch.Tensor:
    return a.detach().clone().requires_grad_(True)


@pytest.mark.parametrize("name", list(KERNELS))
def test_gradcheck_kernels_wrt_x_and_y(name):
    k = KERNELS[name][0]
    x, y = _req(rand(4, 3, seed=41)), _req(rand(5, 3, seed=42))
    assert torch.autograd.gradcheck(k, (x, y))


def test_gradcheck_squared_distances():
    x, y = _req(rand(4, 3, seed=43)), _req(rand(5, 3, seed=44, shift=1.0))
    assert torch.autograd.gradcheck(squared_distances, (x, y))


@pytest.mark.parametrize("width", [0.5, 1.7])
def test_gradcheck_rbf_wrt_width_x_y(width):
    x, y = _req(rand(4, 2, seed=45)), _req(rand(3, 2, seed=46))
    w = torch.tensor(width, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: rbf_kernel(a, b, s), (x, y, w))


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("name", list(KERNELS))
def test_gradcheck_mmd2_through_kernels(name, unbiased):
    k = KERNELS[name][0]
    x, y = _req(rand(4, 3, seed=51)), _req(rand(5, 3, seed=52, shift=0.4))
    assert torch.autograd.gradcheck(lambda a, b: mmd2(k, a, b, unbiased=unbiased), (x, y))


@pytest.mark.parametrize("unbiased", [True, False])
def test_gradcheck_mmd2_rbf_wrt_width(unbiased):
    x, y = _req(rand(4, 2, seed=53)), _req(rand(5, 2, seed=54, shift=0.7))
    w = torch.tensor(0.8, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, s: mmd2(lambda p, q: rbf_kernel(p, q, s), a, b, unbiased=unbiased),
        (x, y, w),
    )


@pytest.mark.parametrize("estimator", [mmd2_biased, mmd2_unbiased])
def test_gradcheck_mmd2_estimators_wrt_gram_blocks(estimator):
    Kxx = _req(rand(4, 4, seed=55))
    Kyy = _req(rand(3, 3, seed=56))
    Kxy = _req(rand(4, 3, seed=57))
    assert torch.autograd.gradcheck(estimator, (Kxx, Kyy, Kxy))


def test_gradcheck_mmd2_linear_unbiased():
    a, b = _req(rand(5, 3, seed=58)), _req(rand(4, 3, seed=59, shift=-0.5))
    assert torch.autograd.gradcheck(mmd2_linear_unbiased, (a, b))


@pytest.mark.parametrize("name", list(KERNELS))
def test_gradcheck_witness(name):
    k = KERNELS[name][0]
    z = _req(rand(3, 2, seed=61))
    x, y = _req(rand(5, 2, seed=62)), _req(rand(4, 2, seed=63, shift=1.0))
    # wrt z (the sampler's use) and also wrt the two sample sets.
    assert torch.autograd.gradcheck(lambda zz: witness(k, zz, x.detach(), y.detach()), (z,))
    assert torch.autograd.gradcheck(lambda zz, a, b: witness(k, zz, a, b), (z, x, y))


def test_gradcheck_linear_witness():
    z = _req(rand(4, 3, seed=64))
    mx, my = _req(rand(3, seed=65)), _req(rand(3, seed=66))
    assert torch.autograd.gradcheck(linear_witness, (z, mx, my))


def test_gradcheck_kale_objective():
    hp, hq = _req(rand(6, seed=67)), _req(rand(5, seed=68, scale=0.5))
    assert torch.autograd.gradcheck(kale_objective, (hp, hq))


def test_witness_grad_wrt_z_linear_is_mean_difference():
    # grad_z f(z) = mean(x) - mean(y) for every particle with the linear kernel.
    z = _req(rand(5, 3, seed=69))
    x, y = rand(7, 3, seed=70), rand(4, 3, seed=71, shift=2.0)
    witness(linear_kernel, z, x, y).sum().backward()
    diff = [
        sum(float(x[i, c]) for i in range(7)) / 7 - sum(float(y[j, c]) for j in range(4)) / 4
        for c in range(3)
    ]
    close(z.grad, t([diff] * 5))


# --------------------------------------------------------------------------- MMD estimators
@HYP
@given(n=sizes, m=sizes, seed=seeds)
def test_mmd2_biased_from_gram_blocks_loop(n, m, seed):
    # Arbitrary (not kernel-derived) symmetric blocks: the estimator is defined on blocks.
    A, B = rand(n, n, seed=seed), rand(m, m, seed=seed + 1)
    Kxx, Kyy, Kxy = A + A.T, B + B.T, rand(n, m, seed=seed + 2)
    ref = ref_mmd2_biased_from_gram(Kxx.tolist(), Kyy.tolist(), Kxy.tolist())
    close(mmd2_biased(Kxx, Kyy, Kxy), t(ref))


@HYP
@given(n=sizes, m=sizes, seed=seeds)
def test_mmd2_unbiased_from_gram_blocks_loop(n, m, seed):
    A, B = rand(n, n, seed=seed), rand(m, m, seed=seed + 1)
    Kxx, Kyy, Kxy = A + A.T, B + B.T, rand(n, m, seed=seed + 2)
    ref = ref_mmd2_unbiased_from_gram(Kxx.tolist(), Kyy.tolist(), Kxy.tolist())
    close(mmd2_unbiased(Kxx, Kyy, Kxy), t(ref))


def test_mmd2_unbiased_ignores_diagonals():
    Kxx, Kyy, Kxy = rand(4, 4, seed=1), rand(3, 3, seed=2), rand(4, 3, seed=3)
    Kxx, Kyy = Kxx + Kxx.T, Kyy + Kyy.T
    base = mmd2_unbiased(Kxx, Kyy, Kxy)
    moved = mmd2_unbiased(
        Kxx + torch.diag(t([10.0, -3.0, 7.0, 1.0])), Kyy + 5.0 * torch.eye(3, dtype=DT), Kxy
    )
    close(moved, base)
    # ...while the biased estimator does see them (so the check above can fail).
    assert abs(float(mmd2_biased(Kxx + 5 * torch.eye(4, dtype=DT), Kyy, Kxy))
               - float(mmd2_biased(Kxx, Kyy, Kxy))) > 1.0


@pytest.mark.parametrize("n,m", [(1, 5), (5, 1), (1, 1)])
def test_mmd2_unbiased_rejects_fewer_than_two_samples(n, m):
    Kxx, Kyy, Kxy = rand(n, n, seed=1), rand(m, m, seed=2), rand(n, m, seed=3)
    with pytest.raises(ValueError):
        mmd2_unbiased(Kxx, Kyy, Kxy)
    x, y = rand(n, 2, seed=4), rand(m, 2, seed=5)
    with pytest.raises(ValueError):
        mmd2(linear_kernel, x, y, unbiased=True)


def test_mmd2_biased_accepts_single_samples():
    x, y = t([[1.0, 2.0]]), t([[4.0, -2.0]])
    # One sample each, linear kernel: ||x - y||^2 = 9 + 16.
    close(mmd2(linear_kernel, x, y, unbiased=False), t(25.0))


@HYP
@given(
    n=sizes, m=sizes, d=dims, seed=seeds,
    name=st.sampled_from(list(KERNELS)), unbiased=st.booleans(),
)
def test_mmd2_through_kernel_loop(n, m, d, seed, name, unbiased):
    k, kref = KERNELS[name]
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1, shift=0.3)
    close(mmd2(k, x, y, unbiased=unbiased), t(ref_mmd2(kref, x, y, unbiased)))


@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds)
def test_mmd2_default_is_unbiased(n, m, d, seed):
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1)
    close(mmd2(rq_kernel, x, y), t(ref_mmd2(ref_rq, x, y, unbiased=True)))


@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds, shift=st.floats(-3.0, 3.0))
def test_mmd2_linear_unbiased_matches_gram_form_and_loop(n, m, d, seed, shift):
    a, b = rand(n, d, seed=seed), rand(m, d, seed=seed + 1, scale=1.7, shift=shift)
    fast = mmd2_linear_unbiased(a, b)
    gram = mmd2_unbiased(linear_kernel(a, a), linear_kernel(b, b), linear_kernel(a, b))
    close(fast, gram)
    close(fast, t(ref_mmd2(ref_dot, a, b, unbiased=True)))
    # The O(B D) linear-kernel formula of dmmd.math.divergences, from sums written out by hand.
    A = [sum(float(a[i, c]) for i in range(n)) for c in range(d)]
    B = [sum(float(b[j, c]) for j in range(m)) for c in range(d)]
    Sa = sum(float(a[i, c]) ** 2 for i in range(n) for c in range(d))
    Sb = sum(float(b[j, c]) ** 2 for j in range(m) for c in range(d))
    spec = (
        (sum(v * v for v in A) - Sa) / (n * (n - 1))
        + (sum(v * v for v in B) - Sb) / (m * (m - 1))
        - 2 * sum(p * q for p, q in zip(A, B)) / (n * m)
    )
    close(fast, t(spec))


def test_mmd2_linear_unbiased_hand_value():
    # a = {(1,0), (3,0)}, b = {(0,2), (0,4)}:
    # <a1,a2> = 3, <b1,b2> = 8, all cross products 0 -> 3 + 8 - 0 = 11.
    a, b = t([[1.0, 0.0], [3.0, 0.0]]), t([[0.0, 2.0], [0.0, 4.0]])
    close(mmd2_linear_unbiased(a, b), t(11.0))


@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds)
def test_biased_linear_mmd_is_squared_mean_gap(n, m, d, seed):
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1, shift=1.0)
    gap = [
        sum(float(x[i, c]) for i in range(n)) / n - sum(float(y[j, c]) for j in range(m)) / m
        for c in range(d)
    ]
    close(mmd2(linear_kernel, x, y, unbiased=False), t(sum(g * g for g in gap)))


@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds, name=st.sampled_from(PD_KERNELS))
def test_mmd2_biased_nonnegative(n, m, d, seed, name):
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1)
    assert float(mmd2(KERNELS[name][0], x, y, unbiased=False)) >= -1e-12


@HYP
@given(n=sizes, d=dims, seed=seeds, name=st.sampled_from(PD_KERNELS))
def test_mmd2_biased_of_set_against_itself_is_zero(n, d, seed, name):
    x = rand(n, d, seed=seed)
    close(mmd2(KERNELS[name][0], x, x.clone(), unbiased=False), t(0.0))


@HYP
@given(
    n=sizes, m=sizes, d=dims, seed=seeds,
    name=st.sampled_from(PD_KERNELS), unbiased=st.booleans(),
)
def test_mmd2_permutation_invariant_and_symmetric(n, m, d, seed, name, unbiased):
    k = KERNELS[name][0]
    x, y = rand(n, d, seed=seed), rand(m, d, seed=seed + 1, shift=0.5)
    g = torch.Generator().manual_seed(seed)
    px, py = torch.randperm(n, generator=g), torch.randperm(m, generator=g)
    base = mmd2(k, x, y, unbiased=unbiased)
    close(mmd2(k, x[px], y[py], unbiased=unbiased), base)
    close(mmd2(k, y, x, unbiased=unbiased), base)


@HYP
@given(n=sizes, m=sizes, d=dims, seed=seeds)
def test_mmd2_linear_unbiased_permutation_invariant(n, m, d, seed):
    a, b = rand(n, d, seed=seed), rand(m, d, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    pa, pb = torch.randperm(n, generator=g), torch.randperm(m, generator=g)
    close(mmd2_linear_unbiased(a[pa], b[pb]), mmd2_linear_unbiased(a, b))
    close(mmd2_linear_unbiased(b, a), mmd2_linear_unbiased(a, b))


def test_mmd2_unbiased_differs_from_biased():
    # Guard: the two estimators are distinct, so neither test can pass by aliasing.
    x, y = rand(4, 2, seed=81), rand(3, 2, seed=82)
    assert abs(float(mmd2(rq_kernel, x, y, unbiased=True))
               - float(mmd2(rq_kernel, x, y, unbiased=False))) > 1e-3


# --------------------------------------------------------------------------- witness
@HYP
@given(
    nz=st.integers(1, 12), n=sizes, m=sizes, d=dims, seed=seeds,
    name=st.sampled_from(list(KERNELS)),
)
def test_witness_loop(nz, n, m, d, seed, name):
    k, kref = KERNELS[name]
    z = rand(nz, d, seed=seed)
    x, y = rand(n, d, seed=seed + 1), rand(m, d, seed=seed + 2, shift=0.8)
    close(witness(k, z, x, y), t(ref_witness(kref, z, x, y)))


@HYP
@given(nz=st.integers(1, 12), n=sizes, m=sizes, d=dims, seed=seeds)
def test_linear_witness_equals_generic_witness(nz, n, m, d, seed):
    z = rand(nz, d, seed=seed)
    x, y = rand(n, d, seed=seed + 1), rand(m, d, seed=seed + 2, shift=-1.0)
    lw = linear_witness(z, x.mean(0), y.mean(0))
    close(lw, witness(linear_kernel, z, x, y))
    close(lw, t([ref_dot(zi, x.mean(0) - y.mean(0)) for zi in z]))


def test_witness_mean_over_x_minus_mean_over_y_is_mmd2_biased():
    # Averaging the witness over x and over y: E_x f - E_y f = biased MMD^2.
    x, y = rand(6, 3, seed=91), rand(4, 3, seed=92, shift=0.5)
    f = lambda z: witness(rq_kernel, z, x, y)  # noqa: E731
    close(f(x).mean() - f(y).mean(), mmd2(rq_kernel, x, y, unbiased=False))


# --------------------------------------------------------------------------- KALE
@HYP
@given(n=st.integers(1, 12), m=st.integers(1, 12), seed=seeds)
def test_kale_objective_closed_form(n, m, seed):
    hp, hq = rand(n, seed=seed), rand(m, seed=seed + 1, scale=0.8)
    ref = sum(float(v) for v in hp) / n - sum(math.exp(float(v)) for v in hq) / m + 1.0
    close(kale_objective(hp, hq), t(ref))


def test_kale_objective_zero_critic_is_zero():
    # h = 0: E_P[0] - E_Q[exp 0] + 1 = 0 (KALE lower bound of KL is 0 at h = 0).
    close(kale_objective(torch.zeros(4, dtype=DT), torch.zeros(7, dtype=DT)), t(0.0))


def test_kale_objective_constant_critic_hand_value():
    # h = c everywhere: c - e^c + 1 ; at c = log 2: log 2 - 1.
    c = math.log(2.0)
    close(kale_objective(torch.full((3,), c, dtype=DT), torch.full((5,), c, dtype=DT)),
          t(math.log(2.0) - 1.0))
