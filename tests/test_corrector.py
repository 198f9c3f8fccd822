"""DMMD as a corrector of flow matching, against float64 references written from its definition.

Definition: after each Euler step of the rectified flow (x_s = (1 - s) x0 + s x1), map to the VP
level t with alpha_t / sigma_t = s / (1 - s), x_t = (alpha_t / s) x_s; there, a corrector step is
x_i + r sigma_t g_i / rms(g), g_i = J_i^T (m_t - mean_j phi(x_j, t)), J_i the Jacobian of
phi(., t) at x_i, rms(g) = sqrt(sum_ij g_ij^2 / (N D)). The reference takes J_i by central
finite differences (no autograd), one particle and one coordinate at a time.
"""

import math

import pytest
import torch

from dmmd.config import ModelConfig
from dmmd.math.noising import VPProcess
from dmmd.methods.corrector import corrector_step, fm_predictor_corrector, level_targets, vp_level
from dmmd.methods.ddpm import build_eps_net
from dmmd.methods.discriminator import build_discriminator
from dmmd.methods.flow_matching import sample as fm_sample

SHAPE = (3,)


def _disc(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(width=16, depth=2, feature_dim=5, time_dim=8)
    return build_discriminator(cfg, SHAPE).double().eval().requires_grad_(False)


def _reference_step(disc, x, t, sigma, target, r, h=1e-6):
    n, d = x.shape
    with torch.no_grad():
        feats = disc.features(x, t)
    c = target - feats.mean(0)
    g = torch.zeros_like(x)
    for i in range(n):
        for j in range(d):
            e = torch.zeros(1, d, dtype=torch.float64)
            e[0, j] = h
            with torch.no_grad():
                up = float(disc.features(x[i:i + 1] + e, t)[0] @ c)
                down = float(disc.features(x[i:i + 1] - e, t)[0] @ c)
            g[i, j] = (up - down) / (2 * h)
    rms = math.sqrt(sum(float(v) ** 2 for v in g.flatten()) / (n * d))
    return x + r * sigma / rms * g


@pytest.mark.parametrize("t, r", [(0.05, 0.1), (0.4, 0.5), (0.9, 1.0)])
def test_one_corrector_step_matches_the_float64_reference(t, r):
    disc = _disc()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    target = torch.randn(5, generator=gen, dtype=torch.float64)
    got = corrector_step(disc, x, t, 0.7, target, r)
    want = _reference_step(disc, x, t, 0.7, target, r)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-8), (got - want).abs().max()
    # the step moves a coordinate by r sigma on average (root mean square)
    assert math.isclose(float((got - x).square().mean().sqrt()), r * 0.7, rel_tol=1e-9)


def test_a_zero_gradient_leaves_particles_unchanged():
    disc = _disc()
    x = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        target = disc.features(x, 0.3).mean(0)  # population mean = target: no force
    x1 = torch.randn(1, 3, dtype=torch.float64).expand(4, 3).clone()  # identical particles
    with torch.no_grad():
        target1 = disc.features(x1, 0.3).mean(0)
    assert torch.equal(corrector_step(disc, x1, 0.3, 1.0, target1, 0.5), x1)
    assert corrector_step(disc, x, 0.3, 1.0, target, 0.5).shape == x.shape


@pytest.mark.parametrize("s", [0.01, 0.2, 0.5, 0.9, 0.98])
def test_vp_level_matches_the_rectified_flow_law(s):
    """scale * x_s = scale (1 - s) x0 + scale s x1 must be sigma_t x0 + alpha_t x1."""
    process = VPProcess()
    t, scale = vp_level(process, s)
    alpha = float(process.alpha(torch.tensor(t, dtype=torch.float64)))
    sigma = float(process.sigma(torch.tensor(t, dtype=torch.float64)))
    assert math.isclose(scale * s, alpha, rel_tol=1e-12)
    assert math.isclose(scale * (1 - s), sigma, rel_tol=1e-6)
    assert process.t_min < t < process.t_max


def test_vp_level_clamps_outside_the_process_range():
    process = VPProcess()
    assert vp_level(process, 1.0)[0] == process.t_min == vp_level(process, 0.999)[0]  # beyond t_min's 1/sigma
    assert vp_level(process, 1e-6)[0] == process.t_max
    with pytest.raises(ValueError):
        vp_level(process, 0.0)


def test_no_corrector_steps_is_plain_euler():
    torch.manual_seed(0)
    net = build_eps_net(ModelConfig(width=16, depth=1, time_dim=8), SHAPE).double().eval()
    disc = _disc()
    process = VPProcess()
    z = torch.randn(10, 3, dtype=torch.float64)
    targets = level_targets(disc, torch.randn(50, 3, dtype=torch.float64), process, 4)
    assert targets.shape == (4, 5)
    got = fm_predictor_corrector(net, disc, z, process, 4, targets, corrector_steps=0)
    assert torch.allclose(got, fm_sample(net, z, 4, "euler"), atol=1e-12)
    heun = fm_predictor_corrector(net, disc, z, process, 4, targets, corrector_steps=0, predictor="heun")
    assert torch.allclose(heun, fm_sample(net, z, 7, "heun"), atol=1e-12)  # 4 Heun steps: 2 * 4 - 1 evaluations
    counted = []

    class Bar:
        def update(self, k):
            counted.append(k)

    moved = fm_predictor_corrector(net, disc, z, process, 4, targets, corrector_steps=2, snr=0.2, skip_last=True,
                                   progress=Bar())
    assert len(counted) == 4 + 3 * 2 and not torch.allclose(moved, got)
    with pytest.raises(ValueError):
        fm_predictor_corrector(net, disc, z, process, 3, targets)
