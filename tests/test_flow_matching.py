"""Flow matching (rectified flow; docs/compare.md) against float64 references written from its definition alone.

Spec: data x1, noise x0 ~ N(0, I), t ~ U[0, 1], x_t = (1 - t) x0 + t x1, loss = mean over batch and
coordinates of (v(x_t, t) - (x1 - x0))^2, with the draws t = rand(N, float64) then x0 = randn(x1's
shape and dtype) from the generator. Sampling integrates dx/dt = v(x, t) from t = 0 to 1 on
t_k = k / S: Euler (S = NFE) or Heun (predictor x~ = x + h v(x, t), corrector
x + h/2 (v(x, t) + v(x~, t + h)), the last step Euler; S = (NFE + 1) // 2, 2 S - 1 evaluations).

The references below are explicit loops over rows and steps; the closed forms (constant and
time-linear fields, v = x) are derived in the test docstrings, not measured.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dmmd.config import ModelConfig
from dmmd.methods.ddpm import build_eps_net
from dmmd.methods.flow_matching import fm_loss, num_evaluations, num_steps, sample

METHODS = ("euler", "heun")


# ------------------------------------------------------------------------------------- helpers


def _times(t, n):
    """A scalar or (n,) time as an (n,) float64 tensor (nets must accept both)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return t.expand(n) if t.ndim == 0 else t.reshape(n)


class LinearField(nn.Module):
    """v(x, t) = A x + b t on flattened rows (closed-form gradients; acts on each row alone)."""

    def __init__(self, dim, seed=0, scale=0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(scale * torch.randn(dim, dim, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, x, t):
        n = x.shape[0]
        t = _times(t, n).to(x.dtype)
        return (x.reshape(n, -1) @ self.A.T + t[:, None] * self.b).reshape(x.shape)


class ScaleField(nn.Module):
    """v(x, t) = a x + b t + c elementwise: any data shape."""

    def __init__(self, a=0.7, b=-1.3, c=0.4):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, x, t):
        t = _times(t, x.shape[0]).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return self.a.to(x.dtype) * x + self.b.to(x.dtype) * t + self.c.to(x.dtype)


class Recorder(nn.Module):
    """Wraps a net and records every call's (x, t) (t as the (n,) float64 tensor it stands for)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = []

    def forward(self, x, t):
        t_rec = t.detach().clone() if torch.is_tensor(t) else torch.tensor(float(t), dtype=torch.float64)
        self.calls.append((x.detach().clone(), t_rec))
        return self.net(x, t)


class Counter:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


def _small_net(data_shape=(3, 2), seed=0):
    torch.manual_seed(seed)
    return build_eps_net(ModelConfig(width=16, depth=2, time_dim=8), data_shape).double()


def _hand_loss(net, x1, seed):
    """The spec's loss with the draws recreated in order, one row at a time, in float64."""
    g = torch.Generator().manual_seed(seed)
    n = x1.shape[0]
    t = torch.rand(n, generator=g, dtype=torch.float64)
    x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
    total = 0.0
    for i in range(n):
        xt_i = (1 - t[i]) * x0[i].double() + t[i] * x1[i].double()
        v_i = net(xt_i[None].to(x1.dtype), t[i:i + 1]).double()
        total = total + ((v_i[0] - (x1[i].double() - x0[i].double())) ** 2).sum()
    return total / x1.numel(), t, x0


def _ref_sample(field, z, nfe, method):
    """Explicit float64 loop: t_k = k / S, h = 1 / S; Heun's last step is Euler."""
    s_steps = nfe if method == "euler" else (nfe + 1) // 2
    h = 1.0 / s_steps
    x = z.double().clone()
    for k in range(s_steps):
        t = k / s_steps
        v = field(x, t)
        if method == "euler" or k == s_steps - 1:
            x = x + h * v
        else:
            x_pred = x + h * v
            x = x + h / 2 * (v + field(x_pred, (k + 1) / s_steps))
    return x


# --------------------------------------------------------------------------------------- loss


def test_loss_matches_float64_hand_computation():
    net = _small_net()
    x1 = torch.randn(9, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rec = Recorder(net)
    loss, stats = fm_loss(rec, x1, torch.Generator().manual_seed(5))
    expected, t, x0 = _hand_loss(net, x1, 5)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert loss.shape == () and loss.requires_grad
    assert stats["mse"] == loss.detach() and not stats["mse"].requires_grad
    # the net is called once, as net(x_t, t), with the drawn float64 t of shape (N,)
    assert len(rec.calls) == 1
    x_seen, t_seen = rec.calls[0]
    assert t_seen.dtype == torch.float64 and t_seen.shape == (9,)
    torch.testing.assert_close(t_seen, t, rtol=0, atol=0)
    torch.testing.assert_close(x_seen, (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * x1, rtol=0, atol=1e-15)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_loss_seeds():
    """Same generator seed: same loss; the global RNG is used when no generator is given."""
    net, x1 = _small_net(), torch.randn(6, 3, 2, dtype=torch.float64)
    a, _ = fm_loss(net, x1, torch.Generator().manual_seed(3))
    b, _ = fm_loss(net, x1, torch.Generator().manual_seed(3))
    c, _ = fm_loss(net, x1, torch.Generator().manual_seed(4))
    assert a == b and a != c
    torch.manual_seed(3)
    d, _ = fm_loss(net, x1)
    torch.testing.assert_close(d, a, rtol=0, atol=0)


def test_loss_gradient_matches_closed_form():
    """For v = A x + b t, with r_i = A x_t,i + b t_i - (x1_i - x0_i) and L = sum |r_i|^2 / (N D):
    dL/dA = 2 / (N D) sum_i r_i x_t,i^T and dL/db = 2 / (N D) sum_i r_i t_i."""
    n, d = 7, 3
    net = LinearField(d, seed=2)
    x1 = torch.randn(n, d, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    loss, _ = fm_loss(net, x1, torch.Generator().manual_seed(9))
    loss.backward()

    g = torch.Generator().manual_seed(9)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    A, b = net.A.detach(), net.b.detach()
    grad_A, grad_b, value = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0.0
    for i in range(n):
        xt = (1 - t[i]) * x0[i] + t[i] * x1[i]
        r = A @ xt + b * t[i] - (x1[i] - x0[i])
        value += float(r @ r) / (n * d)
        grad_A += 2 / (n * d) * torch.outer(r, xt)
        grad_b += 2 / (n * d) * r * t[i]
    assert math.isclose(loss.item(), value, rel_tol=1e-12)
    torch.testing.assert_close(net.A.grad, grad_A, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(net.b.grad, grad_b, rtol=1e-11, atol=1e-14)


def test_perfect_velocity_has_zero_loss_only_for_the_right_target():
    """A net returning exactly x1 - x0 (known from the recreated draws) has loss 0; x0 - x1 has
    loss 4 mean((x1 - x0)^2). Checks the sign of the target and the interpolation direction."""
    x1 = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    t = torch.rand(5, generator=g, dtype=torch.float64)
    x0 = torch.randn(5, 4, generator=g, dtype=torch.float64)

    class Oracle(nn.Module):
        def __init__(self, sign):
            super().__init__()
            self.sign = sign

        def forward(self, x, tt):
            tt = _times(tt, x.shape[0])
            # invert x_t = (1 - t) x0 + t x1 given the known x1 (t < 1): x0 = (x_t - t x1) / (1 - t)
            x0_rec = (x - tt[:, None] * x1) / (1 - tt[:, None])
            return self.sign * (x1 - x0_rec)

    loss, _ = fm_loss(Oracle(1.0), x1, torch.Generator().manual_seed(1))
    assert float(loss) < 1e-20
    loss, _ = fm_loss(Oracle(-1.0), x1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, 4 * ((x1 - x0) ** 2).mean(), rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 7, 10])
def test_sample_matches_float64_loop_for_linear_field(method, nfe):
    d = 4
    net = LinearField(d, seed=1)
    A, b = net.A.detach().clone(), net.b.detach().clone()
    z = torch.randn(6, d, generator=torch.Generator().manual_seed(nfe), dtype=torch.float64)
    z_before = z.clone()
    out = sample(net, z, nfe, method)
    ref = _ref_sample(lambda x, t: x @ A.T + b * t, z, nfe, method)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out.shape == z.shape and out.dtype == z.dtype
    assert not out.requires_grad
    torch.testing.assert_close(z, z_before, rtol=0, atol=0)  # z is left alone: a new tensor
    assert out.data_ptr() != z.data_ptr()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("nfe", [1, 2, 5, 8])
def test_constant_field_is_exact(method, nfe):
    """v = c: every step adds h c, so both methods land on z + c exactly (no rounding above 1e-14)."""
    c = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)

    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(c.clone())

        def forward(self, x, t):
            return self.p.expand_as(x)

    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(sample(Const(), z, nfe, method), z + c, rtol=0, atol=1e-13)


@pytest.mark.parametrize("nfe", list(range(1, 13)))
def test_time_linear_field_pins_the_grid_and_heuns_last_step(nfe):
    """v = t c. Euler: sum_k h (k h) c = (S - 1) / (2 S) c. Heun (trapezoid, exact for linear t)
    over [0, (S - 1) / S], then one Euler step h (S - 1) / S:
    (S - 1)^2 / (2 S^2) + (S - 1) / S^2 = (S^2 - 1) / (2 S^2) (times c). A Heun without the
    Euler last step would give exactly 1/2."""
    net = ScaleField(a=0.0, b=1.0, c=0.0)  # v = t in every coordinate (c = 1)
    z = torch.zeros(1, 2, dtype=torch.float64)
    s_e = nfe
    out = sample(net, z, nfe, "euler")
    torch.testing.assert_close(out, torch.full_like(z, (s_e - 1) / (2 * s_e)), rtol=0, atol=1e-14)
    s_h = (nfe + 1) // 2
    out = sample(net, z, nfe, "heun")
    torch.testing.assert_close(out, torch.full_like(z, (s_h**2 - 1) / (2 * s_h**2)), rtol=0, atol=1e-14)


def test_convergence_orders_on_exponential_growth():
    """v = x: exact x(1) = e z. Euler gives (1 + h)^S z (order 1); Heun gives
    (1 + h + h^2/2)^(S - 1) (1 + h) z (order 2: the one Euler step's local error is O(h^2))."""
    net = ScaleField(a=1.0, b=0.0, c=0.0)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errs = {"euler": [], "heun": []}
    sizes = [8, 16, 32, 64]
    for s in sizes:
        h = 1.0 / s
        euler = sample(net, z, s, "euler")
        torch.testing.assert_close(euler, (1 + h) ** s * z, rtol=1e-12, atol=0)
        heun = sample(net, z, 2 * s - 1, "heun")
        torch.testing.assert_close(heun, (1 + h + h**2 / 2) ** (s - 1) * (1 + h) * z, rtol=1e-12, atol=0)
        torch.testing.assert_close(sample(net, z, 2 * s, "heun"), heun, rtol=0, atol=0)  # same S
        errs["euler"].append(float((euler - math.e * z).abs().max()))
        errs["heun"].append(float((heun - math.e * z).abs().max()))
    for method, order in (("euler", 1.0), ("heun", 2.0)):
        e = errs[method]
        orders = [math.log2(e[i] / e[i + 1]) for i in range(len(e) - 1)]
        assert all(abs(o - order) < 0.15 for o in orders[1:]), (method, orders)
    assert errs["heun"][-1] < 0.05 * errs["euler"][-1]


# ----------------------------------------------------------------------------------- counting


@pytest.mark.parametrize("method", METHODS)
def test_evaluation_counts_and_times(method):
    net = LinearField(2, seed=3)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for nfe in range(1, 13):
        s = nfe if method == "euler" else (nfe + 1) // 2
        evals = nfe if method == "euler" else 2 * s - 1
        assert num_steps(nfe, method) == s
        assert num_evaluations(nfe, method) == evals <= nfe
        if method == "heun":
            assert evals in (nfe, nfe - 1)
        expected_times = []
        for k in range(s):
            expected_times.append(k / s)
            if method == "heun" and k < s - 1:
                expected_times.append((k + 1) / s)
        assert len(expected_times) == evals

        rec, bar = Recorder(net), Counter()
        out = sample(rec, z, nfe, method, progress=bar)
        assert bar.n == evals and len(rec.calls) == evals
        seen = []
        for x_seen, t_seen in rec.calls:
            assert x_seen.shape == z.shape
            tt = _times(t_seen, z.shape[0])
            assert float((tt - tt[0]).abs().max()) == 0.0
            seen.append(float(tt[0]))
        assert seen == pytest.approx(expected_times, abs=1e-14)

        # chunking: calls of at most 2 rows, the same evaluations counted and the same result
        rec, bar = Recorder(net), Counter()
        chunked = sample(rec, z, nfe, method, progress=bar, chunk_size=2)
        assert bar.n == evals
        assert len(rec.calls) == 3 * evals and max(x.shape[0] for x, _ in rec.calls) <= 2
        torch.testing.assert_close(chunked, out, rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------- independence


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_one_by_one(method):
    net = _small_net()
    z = torch.randn(6, 3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    full = sample(net, z, 7, method)
    assert torch.isfinite(full).all()
    for i in range(6):
        torch.testing.assert_close(sample(net, z[i:i + 1], 7, method), full[i:i + 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(sample(net, z[2:5], 7, method), full[2:5], rtol=0, atol=1e-12)
    # and against the explicit loop with the MLP as the field
    with torch.no_grad():
        ref = _ref_sample(lambda x, t: net(x, _times(t, x.shape[0])), z, 7, method)
    torch.testing.assert_close(full, ref, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------- shapes


_shapes = st.one_of(
    st.tuples(st.integers(1, 6), st.integers(1, 5)),
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
)


@settings(max_examples=30, deadline=None)
@given(shape=_shapes, dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16),
       nfe=st.integers(1, 5), method=st.sampled_from(METHODS))
def test_shape_contracts(shape, dtype, seed, nfe, method):
    net = ScaleField()
    x1 = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    rec = Recorder(net)
    loss, stats = fm_loss(rec, x1, torch.Generator().manual_seed(seed + 1))
    assert loss.shape == () and loss.dtype == dtype and torch.isfinite(loss)
    assert stats["mse"].shape == () and not stats["mse"].requires_grad
    (x_seen, t_seen), = rec.calls
    assert x_seen.shape == x1.shape and x_seen.dtype == dtype
    assert t_seen.shape == (shape[0],) and t_seen.dtype == torch.float64
    expected, _, _ = _hand_loss(net, x1, seed + 1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=tol, atol=tol)

    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64).to(dtype)
    out = sample(net, z, nfe, method)
    assert out.shape == z.shape and out.dtype == dtype
    with torch.no_grad():
        ref = _ref_sample(lambda x, t: net(x, t), z, nfe, method)
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
