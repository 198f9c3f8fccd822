"""Checks for dmmd.apps.studies.kernel_width: the MMD-GAN losses and steps, the width readings
(input-space width, raw-input optimum, Spearman) against independent float64 references, and
the --quick run of main()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from dmmd.apps.studies import kernel_width as kw
from dmmd.apps.studies import mmd_gan, rank
from dmmd.math import divergences as dv
from dmmd.math.noising import VPProcess
from dmmd.methods.discriminator import Discriminator


@pytest.mark.parametrize("seed", range(4))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 30).astype(float)  # many ties
    y = x + rng.normal(size=30)
    assert rank.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert rank.spearman(np.arange(9), np.arange(9) ** 3) == pytest.approx(1.0)


def _gan(seed=0, **kwargs):
    torch.manual_seed(seed)
    s = mmd_gan.GANSettings(hidden=8, feature_dim=4, latent_dim=3, **kwargs)
    return mmd_gan.MMDGAN(2, s).double(), s


def test_mmd_gan_width_is_exp_of_its_parameter():
    gan, _ = _gan(init_width=0.7)
    assert float(gan.width().detach()) == pytest.approx(0.7)
    with torch.no_grad():
        gan.log_width.fill_(-3.0)
    assert float(gan.width().detach()) == pytest.approx(math.exp(-3.0))


def test_mmd_gan_critic_loss_terms_against_brute_force():
    gan, _ = _gan()
    x, fake = torch.randn(7, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64) + 1.0
    loss, terms = mmd_gan.mmd_gan_critic_loss(gan, x[:6], fake, 0.7, 0.3, torch.Generator().manual_seed(1))
    a, b = gan.features(x[:6]), gan.features(fake)
    # MMD^2 by explicit loops (unbiased)
    w2 = float(gan.width().detach()) ** 2
    k = lambda u, v: math.exp(-float(((u - v) ** 2).sum()) / (2 * w2))
    n = 6
    a_, b_ = a.detach(), b.detach()
    xx = sum(k(a_[i], a_[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(b_[i], b_[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a_[i], b_[j]) for i in range(n) for j in range(n)) / (n * n)
    assert terms["mmd2"] == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    # gradient penalty: per-sample autograd of the witness at the same interpolates
    r = torch.rand(6, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gp = 0.0
    for i in range(6):
        u = (r[i] * x[i] + (1 - r[i]) * fake[i]).detach().requires_grad_(True)
        f = dv.witness(gan.kernel, gan.features(u[None]), a, b).sum()
        (grad,) = torch.autograd.grad(f, u)
        gp += (float(grad.norm()) - 1.0) ** 2 / 6
    l2 = 0.5 * (float(a_.pow(2).mean()) + float(b_.pow(2).mean()))
    assert terms["gp"] == pytest.approx(gp, rel=1e-9)
    assert terms["l2"] == pytest.approx(l2, rel=1e-12)
    assert float(loss.detach()) == pytest.approx(-terms["mmd2"] + 0.7 * gp + 0.3 * l2, rel=1e-9)


def test_critic_step_raises_and_generator_step_lowers_mmd():
    gan, _ = _gan(seed=1)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.3 + 1.0
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    opt_c = torch.optim.SGD(gan.critic_parameters(), lr=1e-2)
    fake = gan.generator(z).detach()
    before = float(mmd_gan.mmd_gan_generator_loss(gan, x, fake).detach())
    loss, _ = mmd_gan.mmd_gan_critic_loss(gan, x, fake, 0.0, 0.0)
    opt_c.zero_grad()
    loss.backward()
    opt_c.step()
    after_critic = float(mmd_gan.mmd_gan_generator_loss(gan, x, fake).detach())
    assert after_critic > before
    opt_g = torch.optim.SGD(gan.generator.parameters(), lr=1e-2)
    g_loss = mmd_gan.mmd_gan_generator_loss(gan, x, gan.generator(z))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    assert float(mmd_gan.mmd_gan_generator_loss(gan, x, gan.generator(z)).detach()) < float(g_loss.detach())


def test_train_mmd_gan_history():
    x = torch.randn(200, 2)
    s = mmd_gan.GANSettings(iterations=5, batch_size=16, hidden=8, feature_dim=4, latent_dim=2)
    gan, history = mmd_gan.train_mmd_gan(x, s)
    assert len(history["width"]) == len(history["mmd2"]) == 5
    assert all(w > 0 and math.isfinite(w) for w in history["width"])
    assert float(gan.width().detach()) == pytest.approx(history["width"][-1])


def _identity_disc(width=0.5):
    return Discriminator(kw.IdentityBackbone(2), "rbf", width).double()


class _Scaled(torch.nn.Module):
    """phi(x, t) = c x: features c times larger."""

    def __init__(self, c):
        super().__init__()
        self.c, self.feature_dim = c, 2

    def forward(self, x, t):
        return self.c * x.reshape(x.shape[0], -1)


def test_input_space_width_is_scale_free():
    process = VPProcess()
    x = torch.randn(20, 2, dtype=torch.float64)
    ts = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    disc = _identity_disc(0.5)
    widths = kw.width_curve(disc, ts)
    assert kw.input_space_width(disc, x, process, ts) == pytest.approx(widths, rel=1e-6)  # gain of identity = 1
    scaled = Discriminator(_Scaled(3.0), "rbf", 1.5).double()  # features x3, width x3
    assert kw.input_space_width(scaled, x, process, ts) == pytest.approx(widths, rel=1e-6)


def test_level_mmd2_matches_direct_estimate():
    process = VPProcess()
    x, xp = torch.randn(30, 2, dtype=torch.float64), torch.randn(30, 2, dtype=torch.float64)
    ts = torch.tensor([0.2, 0.7], dtype=torch.float64)
    got = kw.level_mmd2(lambda v, t: v, lambda t: (lambda a, b: dv.rbf_kernel(a, b, 0.4)), x, xp, process, ts, seed=5)
    gen = torch.Generator().manual_seed(5)
    for t, value in zip(ts.tolist(), got):
        y = process.corrupt(xp, t, generator=gen)
        assert value == pytest.approx(float(dv.mmd2(lambda a, b: dv.rbf_kernel(a, b, 0.4), x, y)), rel=1e-12)


def test_optimal_raw_width_beats_a_fine_grid():
    process = VPProcess()
    gen = torch.Generator().manual_seed(0)
    x, xp = torch.randn(80, 2, generator=gen) * 0.3, torch.randn(80, 2, generator=gen) * 0.3
    ts = torch.tensor([0.05, 0.3], dtype=torch.float64)
    best = kw.optimal_raw_width(x, xp, process, ts, seed=1)
    gen = torch.Generator().manual_seed(1)
    for t, w in zip(ts.tolist(), best):
        y = process.corrupt(xp.double(), t, generator=gen)
        values = {v: float(dv.mmd2(lambda a, b, v=v: dv.rbf_kernel(a, b, v), x.double(), y))
                  for v in [w, *np.geomspace(1e-3, 10, 400)]}
        assert values[w] >= max(values.values()) - 1e-9


def test_quick_main_writes_files(tmp_path):
    assert kw.main(["--out", str(tmp_path), "--quick"]) == 0
    payload = json.loads((tmp_path / "kernel_width.json").read_text())
    for name in kw.DATASETS:
        png = tmp_path / f"kernel_width_{name}.png"
        assert png.is_file() and png.stat().st_size < 400_000
        r = payload["results"][name]
        assert len(r["dmmd"]["width"]) == len(r["t"]) == len(r["dmmd"]["mmd2"]) == len(r["dmmd"]["input_width"])
        assert len(r["mmd_gan"]["width"]) == payload["settings"]["gan_iterations"]
    assert "raw_inputs" in payload["results"]["eight_gaussians"]
    assert "Spearman" in (tmp_path / "kernel_width.md").read_text()
