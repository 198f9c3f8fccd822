"""DDPM / DDIM with the predicted clean sample clipped (Ho et al.'s code; diffusers' clip_sample=True).

With clip = c, x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) is clamped to [-c, c] before the
ancestral posterior mean / the DDIM update; DDIM keeps the network's eps in its direction term
(diffusers' use_clipped_model_output=False); the final denoise returns the clamped x0_hat.

Checked against diffusers' DDPMScheduler(clip_sample=True, variance_type='fixed_small') and
DDIMScheduler(clip_sample=True, set_alpha_to_one=True) with the schedule mapping of
tests/test_ddpm.py (copied here with a clip switch; see that module's docstring), and against an
explicit float64 per-row reference written from the formulas above. The step inputs are built so
that x0_hat is a known array with about half its entries outside [-1, 1] at every time, so every
comparison exercises the clamp on some entries and not on others (asserted).
"""

import math

import pytest
import torch

from dmmd.config import ModelConfig
from dmmd.math.noising import VPProcess, time_grid
from dmmd.methods.ddpm import build_eps_net, ddim_step, ddpm_step, predict_x0, sample
from dmmd.methods.mmd_flow import ParticleNoise

PROCESS = VPProcess()
N_INF, RATIO = 11, 100
K = N_INF * RATIO
SHAPE = (4, 3, 2)  # (N, C, D)
TOL = 1e-5  # against diffusers, as in tests/test_ddpm.py
REF_TOL = 1e-10  # against the float64 reference


def _small_net(data_shape=(3, 2), seed=0):
    torch.manual_seed(seed)
    return build_eps_net(ModelConfig(width=16, depth=2, time_dim=8), data_shape).double()


# ------------------------------------------------------------------------------------ diffusers


def _fine_abar():
    h = (PROCESS.t_max - PROCESS.t_min) / ((N_INF - 1) * RATIO)
    tau = PROCESS.t_min + h * torch.arange(K, dtype=torch.float64)
    return tau, PROCESS.alpha(tau) ** 2


def _scheduler(kind, clip_range=1.0, clip=True):
    diffusers = pytest.importorskip("diffusers")
    tau, abar = _fine_abar()
    betas = torch.cat([1 - abar[:1], 1 - abar[1:] / abar[:-1]])
    common = {"num_train_timesteps": K, "trained_betas": betas.tolist(), "clip_sample": clip,
              "clip_sample_range": clip_range, "prediction_type": "epsilon", "timestep_spacing": "leading",
              "steps_offset": 0}
    if kind == "ddpm":
        sched = diffusers.DDPMScheduler(variance_type="fixed_small", **common)
    else:
        sched = diffusers.DDIMScheduler(set_alpha_to_one=True, **common)
    assert sched.config.clip_sample is clip and sched.config.clip_sample_range == clip_range
    assert not sched.config.thresholding
    torch.testing.assert_close(sched.alphas_cumprod.double(), abar, rtol=1e-5, atol=0)
    sched.set_timesteps(N_INF)
    assert sched.timesteps.tolist() == [(N_INF - 1 - j) * RATIO for j in range(N_INF)]
    grid = time_grid(PROCESS, N_INF)
    torch.testing.assert_close(tau[sched.timesteps], grid, rtol=0, atol=1e-14)
    sched.alphas_cumprod = abar  # float64 schedule: the comparison isolates the step formulas
    return sched, grid


# ------------------------------------------------------------------------------ float64 reference


def _abar(t):
    """(abar, 1 - abar) at a Python float t in float64; t = 0 means abar = 1."""
    if t == 0.0:
        return 1.0, 0.0
    tt = torch.tensor(t, dtype=torch.float64)
    return float(PROCESS.alpha(tt)) ** 2, float(PROCESS.sigma(tt)) ** 2


def _row_times(t, n):
    t = torch.as_tensor(t, dtype=torch.float64)
    return [float(v) for v in (t.expand(n) if t.ndim == 0 else t)]


def ref_step(kind, eps, x, t, s, eta=0.0, noise=None, clip=None):
    """Explicit per-row float64 step (kind 'ddpm' or 'ddim'), written from the formulas."""
    n = x.shape[0]
    out = torch.empty_like(x, dtype=torch.float64)
    for i, (ti, si) in enumerate(zip(_row_times(t, n), _row_times(s, n))):
        ab_t, om_t = _abar(ti)
        ab_s, om_s = _abar(si)
        xi, ei = x[i].double(), eps[i].double()
        zi = torch.zeros_like(xi) if noise is None else noise[i].double()
        x0 = (xi - math.sqrt(om_t) * ei) / math.sqrt(ab_t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        beta_ts = 1.0 - ab_t / ab_s  # the one-step beta from s to t
        if kind == "ddpm":
            mean = (math.sqrt(ab_s) * beta_ts / om_t) * x0 + (math.sqrt(ab_t / ab_s) * om_s / om_t) * xi
            var = om_s / om_t * beta_ts
            out[i] = mean + math.sqrt(var) * zi
        else:
            sigma = eta * math.sqrt(om_s / om_t * beta_ts)
            out[i] = math.sqrt(ab_s) * x0 + math.sqrt(max(om_s - sigma**2, 0.0)) * ei + sigma * zi
    return out


def _inputs(seed, t, scale=1.5, dtype=torch.float64):
    """(x_t, eps, x0_hat) with x0_hat = scale * N(0, 1) exactly known: about half of it (for scale
    1.5, P(|Z| > 2/3) = 0.50) lies outside [-1, 1] at any t."""
    g = torch.Generator().manual_seed(seed)
    x0 = scale * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    ab, om = _abar(float(t))
    x = math.sqrt(ab) * x0 + math.sqrt(om) * eps
    return x.to(dtype), eps.to(dtype), x0


def _assert_partly_clipped(x0_hat, c=1.0):
    assert (x0_hat.abs() > c).any() and (x0_hat.abs() < c).any()


# ---------------------------------------------------------------------------------- step tests


def test_reference_reduces_to_closed_forms():
    """The reference itself, on x_t built from a known x0 and eps: to s = 0 both steps return x0;
    DDIM (eta 0) gives sqrt(abar_s) x0 + sqrt(1 - abar_s) eps; DDIM (eta 1) equals DDPM without
    clip; the clipped final step is clamp(x0)."""
    x, eps, x0 = _inputs(0, 0.6)
    torch.testing.assert_close(ref_step("ddpm", eps, x, 0.6, 0.0), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(ref_step("ddim", eps, x, 0.6, 0.0, 0.4), x0, rtol=0, atol=1e-12)
    ab_s, om_s = _abar(0.3)
    torch.testing.assert_close(ref_step("ddim", eps, x, 0.6, 0.3), math.sqrt(ab_s) * x0 + math.sqrt(om_s) * eps,
                               rtol=0, atol=1e-12)
    noise = torch.randn_like(x)
    torch.testing.assert_close(ref_step("ddim", eps, x, 0.6, 0.3, 1.0, noise),
                               ref_step("ddpm", eps, x, 0.6, 0.3, 0, noise), rtol=0, atol=1e-12)
    torch.testing.assert_close(ref_step("ddpm", eps, x, 0.6, 0.0, clip=1.0), x0.clamp(-1, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_clipped_ddpm_step_matches_diffusers_and_reference(clip):
    sched, grid = _scheduler("ddpm", clip_range=clip)
    for j, k in enumerate(sched.timesteps.tolist()):
        x, eps, x0 = _inputs(j, grid[j])
        _assert_partly_clipped(x0, clip)
        torch.testing.assert_close(predict_x0(eps, x, grid[j], PROCESS), x0, rtol=0, atol=1e-12)
        out = sched.step(eps, k, x, generator=torch.Generator().manual_seed(100 + j))
        torch.testing.assert_close(out.pred_original_sample, x0.clamp(-clip, clip), rtol=0, atol=1e-12)
        if j < N_INF - 1:
            s = grid[j + 1]
            noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + j), dtype=torch.float64)
        else:  # k = 0: to abar = 1 without noise: the clamped x0_hat
            s, noise = 0.0, None
        ours = ddpm_step(eps, x, grid[j], s, noise, process=PROCESS, clip=clip)
        torch.testing.assert_close(ours, out.prev_sample, rtol=0, atol=TOL)
        torch.testing.assert_close(ours, ref_step("ddpm", eps, x, float(grid[j]), float(s), 0.0, noise, clip),
                                   rtol=0, atol=REF_TOL)
        # the posterior mean (noise=None) too, and the clamp changes the step
        mean = ddpm_step(eps, x, grid[j], s, None, process=PROCESS, clip=clip)
        torch.testing.assert_close(mean, ref_step("ddpm", eps, x, float(grid[j]), float(s), clip=clip),
                                   rtol=0, atol=REF_TOL)
        unclipped = ddpm_step(eps, x, grid[j], s, None, process=PROCESS)
        assert (mean - unclipped).abs().max() > 1e-3
    torch.testing.assert_close(ours, x0.clamp(-clip, clip), rtol=0, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("with_noise", [True, False])
def test_clipped_ddim_step_matches_diffusers_and_reference(eta, with_noise):
    sched, grid = _scheduler("ddim")
    for j, k in enumerate(sched.timesteps.tolist()):
        x, eps, x0 = _inputs(50 + j, grid[j])
        _assert_partly_clipped(x0)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(200 + j), dtype=torch.float64)
        if not with_noise:
            noise = None
        # diffusers draws its own noise for eta > 0 unless given: zeros stand for 'no noise term'
        ref_noise = (noise if with_noise else torch.zeros(SHAPE, dtype=torch.float64)) if eta > 0 else None
        out = sched.step(eps, k, x, eta=eta, variance_noise=ref_noise)
        s = grid[j + 1] if j < N_INF - 1 else 0.0
        ours = ddim_step(eps, x, grid[j], s, eta, noise if eta > 0 else None, process=PROCESS, clip=1.0)
        torch.testing.assert_close(ours, out.prev_sample, rtol=0, atol=TOL)
        ref = ref_step("ddim", eps, x, float(grid[j]), float(s), eta, noise if eta > 0 else None, 1.0)
        torch.testing.assert_close(ours, ref, rtol=0, atol=REF_TOL)
        unclipped = ddim_step(eps, x, grid[j], s, eta, noise if eta > 0 else None, process=PROCESS)
        assert (ours - unclipped).abs().max() > 1e-3
    torch.testing.assert_close(ours, x0.clamp(-1, 1), rtol=0, atol=1e-12)


def test_ddim_keeps_the_networks_eps():
    """use_clipped_model_output=False: the direction term uses eps, not the eps implied by the
    clamped x0. Then DDIM(eta 1) - DDPM = -c2 sqrt(abar_t) (x0_hat - clamp(x0_hat)) with
    c2 = sqrt(abar_t / abar_s) (1 - abar_s) / (1 - abar_t) (the DDPM mean's x_t coefficient)
    since c1 + c2 sqrt(abar_t) = sqrt(abar_s); zero without clipping."""
    t, s = 0.7, 0.45
    x, eps, x0 = _inputs(9, t)
    _assert_partly_clipped(x0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ab_t, om_t = _abar(t)
    ab_s, om_s = _abar(s)
    c2 = math.sqrt(ab_t / ab_s) * om_s / om_t
    diff = ddim_step(eps, x, t, s, 1.0, noise, process=PROCESS, clip=1.0) - ddpm_step(eps, x, t, s, noise,
                                                                                      process=PROCESS, clip=1.0)
    torch.testing.assert_close(diff, -c2 * math.sqrt(ab_t) * (x0 - x0.clamp(-1, 1)), rtol=0, atol=1e-12)
    assert diff.abs().max() > 1e-2
    # the eps recomputed from the clamped x0 (Glide's variant) would give a different step
    eps_clipped = (x - math.sqrt(ab_t) * x0.clamp(-1, 1)) / math.sqrt(om_t)
    glide = math.sqrt(ab_s) * x0.clamp(-1, 1) + math.sqrt(om_s) * eps_clipped
    assert (ddim_step(eps, x, t, s, process=PROCESS, clip=1.0) - glide).abs().max() > 1e-2


def test_clipped_steps_with_per_row_times_and_float32():
    t = torch.tensor([0.95, 0.6, 0.2, 0.01], dtype=torch.float64)
    s = torch.tensor([0.9, 0.3, 0.0, 0.005], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x0 = 1.5 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    noise = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    ab = PROCESS.alpha(t).view(-1, 1, 1) ** 2
    x = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    _assert_partly_clipped(x0)
    for dtype, tol in ((torch.float64, REF_TOL), (torch.float32, 2e-4)):
        xd, ed, nd = x.to(dtype), eps.to(dtype), noise.to(dtype)
        for c in (1.0, 0.3):
            ours = ddpm_step(ed, xd, t, s, nd, process=PROCESS, clip=c)
            assert ours.dtype == dtype
            torch.testing.assert_close(ours.double(), ref_step("ddpm", eps, x, t, s, 0.0, noise, c), rtol=0, atol=tol)
            for eta in (0.0, 0.7):
                ours = ddim_step(ed, xd, t, s, eta, nd if eta else None, process=PROCESS, clip=c)
                assert ours.dtype == dtype
                ref = ref_step("ddim", eps, x, t, s, eta, noise if eta else None, c)
                torch.testing.assert_close(ours.double(), ref, rtol=0, atol=tol)


def test_clip_none_is_the_unclipped_step():
    x, eps, x0 = _inputs(4, 0.8)
    _assert_partly_clipped(x0)
    noise = torch.randn_like(x)
    for s in (0.5, 0.0):
        plain = ddpm_step(eps, x, 0.8, s, noise if s else None, process=PROCESS)
        torch.testing.assert_close(ddpm_step(eps, x, 0.8, s, noise if s else None, process=PROCESS, clip=None),
                                   plain, rtol=0, atol=0)
        torch.testing.assert_close(plain, ref_step("ddpm", eps, x, 0.8, s, 0.0, noise if s else None), rtol=0,
                                   atol=REF_TOL)
        # a clip range nothing reaches changes nothing
        torch.testing.assert_close(ddpm_step(eps, x, 0.8, s, noise if s else None, process=PROCESS, clip=1e6),
                                   plain, rtol=0, atol=1e-13)
        for eta in (0.0, 0.6):
            plain = ddim_step(eps, x, 0.8, s, eta, noise if eta else None, process=PROCESS)
            torch.testing.assert_close(ddim_step(eps, x, 0.8, s, eta, noise if eta else None, process=PROCESS,
                                                 clip=None), plain, rtol=0, atol=0)
            torch.testing.assert_close(plain, ref_step("ddim", eps, x, 0.8, s, eta, noise if eta else None),
                                       rtol=0, atol=REF_TOL)


# ------------------------------------------------------------------------------------- sampler


class _X0Spy(torch.nn.Module):
    """Wraps the net and records the unclipped x0_hat of each call (needs the time grid)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.x0 = net, []

    def forward(self, x, t):
        eps = self.net(x, t)
        self.x0.append(predict_x0(eps, x, t, PROCESS))
        return eps


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0)])
def test_clipped_sampler_matches_diffusers_loop(monkeypatch, method, eta):
    """The whole clipped chain with final_denoise equals diffusers' clip_sample=True loop."""
    sched, grid = _scheduler(method)
    net = _X0Spy(_small_net())
    z = ParticleNoise(3, 5, (3, 2), dtype=torch.float64).prior(PROCESS)
    ours = sample(net, z, PROCESS, N_INF, method, ParticleNoise(4, 5, (3, 2), dtype=torch.float64), eta=eta, clip=1.0)
    unclipped = sample(net, z, PROCESS, N_INF, method, ParticleNoise(4, 5, (3, 2), dtype=torch.float64), eta=eta)
    assert (ours - unclipped).abs().max() > 1e-2  # the clamp matters for this net
    net.x0.clear()

    ref_noise = ParticleNoise(4, 5, (3, 2), dtype=torch.float64)
    if method == "ddpm":  # DDPMScheduler.step draws its noise itself: hand it ours
        from diffusers.schedulers import scheduling_ddpm
        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: ref_noise.draw())
    x = z.clone()
    with torch.no_grad():
        for j, k in enumerate(sched.timesteps.tolist()):
            eps = net(x, grid[j])
            if method == "ddpm":
                x = sched.step(eps, k, x).prev_sample
            else:
                vn = ref_noise.draw() if eta and k > 0 else None
                x = sched.step(eps, k, x, eta=eta, variance_noise=vn).prev_sample
    seen = torch.stack(net.x0)
    assert (seen.abs() > 1).any() and (seen.abs() < 1).any()  # clipping happened along the way
    assert (net.x0[-1].abs() > 1).any()  # ... and in the final denoise
    torch.testing.assert_close(ours, x, rtol=0, atol=TOL)
    assert ours.abs().max() <= 1.0


def _ref_sampler(net, z, method, eta, clip, final_denoise, noise):
    """Explicit loop over the uniform grid t_max -> t_min, then (final_denoise) to clean data; the
    step into t_min is noise-free when final_denoise is False; noise drawn once per noisy step."""
    grid = [float(v) for v in time_grid(PROCESS, N_INF)]
    x = z.double().clone()
    with torch.no_grad():
        for j in range(N_INF - 1):
            eps = net(x, grid[j])
            last = j == N_INF - 2 and not final_denoise
            noisy = (method == "ddpm" or eta > 0) and not last
            nz = noise.draw() if noisy else None
            x = ref_step(method, eps, x, grid[j], grid[j + 1], eta, nz, clip)
        if final_denoise:
            eps = net(x, grid[-1])
            x = ref_step(method, eps, x, grid[-1], 0.0, eta, None, clip)
    return x


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.7)])
@pytest.mark.parametrize("final_denoise", [True, False])
def test_clipped_sampler_matches_float64_loop_and_is_per_particle(method, eta, final_denoise):
    net = _small_net()

    def run(num, start=0, clip=1.0):
        z = ParticleNoise(11, num, (3, 2), start=start, dtype=torch.float64).prior(PROCESS)
        return sample(net, z, PROCESS, N_INF, method, ParticleNoise(12, num, (3, 2), start=start, dtype=torch.float64),
                      eta=eta, final_denoise=final_denoise, chunk_size=2, clip=clip)

    full = run(5)
    z = ParticleNoise(11, 5, (3, 2), dtype=torch.float64).prior(PROCESS)
    ref = _ref_sampler(net, z, method, eta, 1.0, final_denoise, ParticleNoise(12, 5, (3, 2), dtype=torch.float64))
    torch.testing.assert_close(full, ref, rtol=0, atol=REF_TOL)
    torch.testing.assert_close(run(3), full[:3], rtol=0, atol=1e-12)
    torch.testing.assert_close(run(2, start=3), full[3:], rtol=0, atol=1e-12)
    # clip=None is the unclipped chain, and differs here
    plain = run(5, clip=None)
    ref_plain = _ref_sampler(net, z, method, eta, None, final_denoise,
                             ParticleNoise(12, 5, (3, 2), dtype=torch.float64))
    torch.testing.assert_close(plain, ref_plain, rtol=0, atol=REF_TOL)
    z2 = ParticleNoise(11, 5, (3, 2), dtype=torch.float64).prior(PROCESS)
    default = sample(net, z2, PROCESS, N_INF, method, ParticleNoise(12, 5, (3, 2), dtype=torch.float64), eta=eta,
                     final_denoise=final_denoise, chunk_size=2)
    torch.testing.assert_close(default, plain, rtol=0, atol=0)
    assert (full - plain).abs().max() > 1e-2


def test_ddim_clipped_eps_is_the_eps_of_the_clipped_x0():
    """clipped_eps=True (diffusers' use_clipped_model_output=True): the step equals the unclipped-
    formula DDIM step fed with eps' = (x_t - sqrt(abar_t) clamp(x0_hat)) / sqrt(1 - abar_t),
    computed here in float64 by hand; without clipping the flag changes nothing."""
    from dmmd.math.noising import VPProcess

    process = VPProcess("linear", 0.1, 20.0, t_min=1e-3, t_max=1.0)
    gen = torch.Generator().manual_seed(3)
    x_t = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 2
    eps = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    t, s = 0.7, 0.5
    abar_t = float(process.alpha(torch.tensor(t, dtype=torch.float64)) ** 2)
    x0 = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5
    assert (x0.abs() > 1).any()
    eps_c = (x_t - abar_t ** 0.5 * x0.clamp(-1, 1)) / (1 - abar_t) ** 0.5
    got = ddim_step(eps, x_t, t, s, process=process, clip=1.0, clipped_eps=True)
    want = ddim_step(eps_c, x_t, t, s, process=process)  # x0 of eps_c is already inside [-1, 1]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ddim_step(eps, x_t, t, s, process=process, clipped_eps=True),
                               ddim_step(eps, x_t, t, s, process=process), rtol=0, atol=0)
