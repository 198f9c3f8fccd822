"""The DDPM baseline: step math against diffusers, the loss against a float64 hand computation,
per-particle sampling, and sampler sanity checks on 2-D Gaussians.

Mapping to diffusers (the tests below build it). Our sampler walks the uniform grid
time_grid(process, N_INF) = t_max = t_0 > ... > t_{N_INF-1} = t_min, then (final_denoise) one
noise-free step to clean data. Diffusers walks discrete timesteps k with alphas_cumprod[k]. We take
K = N_INF * RATIO training timesteps on the fine continuous grid

    tau_k = t_min + k h,   h = (t_max - t_min) / ((N_INF - 1) RATIO),   k = 0 .. K - 1,

and give the scheduler trained_betas with beta_k = 1 - abar(tau_k) / abar(tau_{k-1}) (beta_0 =
1 - abar(tau_0)), so alphas_cumprod[k] = abar(tau_k) (up to diffusers' float32 cumprod, checked
separately). set_timesteps(N_INF) with 'leading' spacing and steps_offset 0 gives
k_j = (N_INF - 1 - j) RATIO, i.e. tau_{k_j} = t_j, and both schedulers step k_j -> k_{j+1}
(DDPM: the next entry of the timestep list; DDIM: k - K // N_INF = k - RATIO). The last
timestep k = 0 (tau = t_min) steps to 'previous alphas_cumprod = 1' without noise (DDPM: t = 0 adds
none; DDIM: set_alpha_to_one=True gives zero variance), which is our final_denoise step to x0_hat.
The entries k > (N_INF - 1) RATIO (tau slightly beyond t_max) are never used. For the step
comparisons we then overwrite scheduler.alphas_cumprod with the same abar(tau_k) in float64, so
the comparison isolates the step formulas from float32 rounding. clip_sample=False,
prediction_type='epsilon', variance_type='fixed_small', thresholding off (the default).
"""

import pytest
import torch
from torch import nn

from dmmd.config import ModelConfig
from dmmd.math.noising import BlurProcess, VPProcess, time_grid
from dmmd.methods.ddpm import (
    EpsMLP,
    alpha_bar,
    build_eps_net,
    ddim_step,
    ddpm_loss,
    ddpm_step,
    num_evaluations,
    predict_x0,
    sample,
)
from dmmd.methods.mmd_flow import ParticleNoise

PROCESS = VPProcess()
N_INF, RATIO = 11, 100
K = N_INF * RATIO
SHAPE = (4, 3, 2)  # (N, C, D): diffusers' step looks at dim 1 only for learned variances
TOL = 1e-5  # the bound asked for; float64 steps agree to ~1e-13, float32 ones to ~3e-6


def _small_net(data_shape=(3, 2), seed=0):
    torch.manual_seed(seed)
    return build_eps_net(ModelConfig(width=16, depth=2, time_dim=8), data_shape).double()


# ------------------------------------------------------------------------------------ diffusers


def _fine_abar():
    h = (PROCESS.t_max - PROCESS.t_min) / ((N_INF - 1) * RATIO)
    tau = PROCESS.t_min + h * torch.arange(K, dtype=torch.float64)
    return tau, PROCESS.alpha(tau) ** 2


def _scheduler(kind):
    diffusers = pytest.importorskip("diffusers")
    tau, abar = _fine_abar()
    betas = torch.cat([1 - abar[:1], 1 - abar[1:] / abar[:-1]])
    common = {"num_train_timesteps": K, "trained_betas": betas.tolist(), "clip_sample": False,
              "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 0}
    if kind == "ddpm":
        sched = diffusers.DDPMScheduler(variance_type="fixed_small", **common)
    else:
        sched = diffusers.DDIMScheduler(set_alpha_to_one=True, **common)
    # diffusers' own float32 cumprod reproduces our schedule ...
    torch.testing.assert_close(sched.alphas_cumprod.double(), abar, rtol=1e-5, atol=0)
    sched.set_timesteps(N_INF)
    assert sched.timesteps.tolist() == [(N_INF - 1 - j) * RATIO for j in range(N_INF)]
    grid = time_grid(PROCESS, N_INF)
    torch.testing.assert_close(tau[sched.timesteps], grid, rtol=0, atol=1e-14)
    # ... and the step comparisons use it in float64 (float32: see test_float32_ddpm_step_...).
    sched.float32_alphas_cumprod = sched.alphas_cumprod
    sched.alphas_cumprod = abar
    return sched, grid


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g, dtype=torch.float64)


def test_ddpm_step_matches_diffusers():
    sched, grid = _scheduler("ddpm")
    for j, k in enumerate(sched.timesteps.tolist()):
        x, eps = _inputs(j)
        ref = sched.step(eps, k, x, generator=torch.Generator().manual_seed(100 + j)).prev_sample
        if j < N_INF - 1:
            noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + j), dtype=torch.float64)
            ours = ddpm_step(eps, x, grid[j], grid[j + 1], noise, process=PROCESS)
        else:  # k = 0: to abar = 1, no noise: x0_hat
            ours = ddpm_step(eps, x, grid[j], 0.0, None, process=PROCESS)
            torch.testing.assert_close(predict_x0(eps, x, grid[j], PROCESS), ref, rtol=0, atol=TOL)
        torch.testing.assert_close(ours, ref, rtol=0, atol=TOL)


def test_float32_ddpm_step_matches_diffusers_own_schedule():
    """float32 inputs against diffusers' own float32 alphas_cumprod from our trained_betas."""
    sched, grid = _scheduler("ddpm")
    sched.alphas_cumprod = sched.float32_alphas_cumprod
    for j, k in enumerate(sched.timesteps.tolist()[:-1]):
        x, eps = (v.float() for v in _inputs(j))
        ref = sched.step(eps, k, x, generator=torch.Generator().manual_seed(300 + j)).prev_sample
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(300 + j))
        ours = ddpm_step(eps, x, grid[j], grid[j + 1], noise, process=PROCESS)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_ddim_step_matches_diffusers(eta):
    sched, grid = _scheduler("ddim")
    for j, k in enumerate(sched.timesteps.tolist()):
        x, eps = _inputs(j)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(200 + j), dtype=torch.float64)
        ref = sched.step(eps, k, x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
        s = grid[j + 1] if j < N_INF - 1 else 0.0
        ours = ddim_step(eps, x, grid[j], s, eta, noise if eta > 0 else None, process=PROCESS)
        torch.testing.assert_close(ours, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_sampler_matches_diffusers_loop(monkeypatch, method, eta):
    """The whole chain with final_denoise equals diffusers' loop over timesteps 1000, ..., 0."""
    sched, grid = _scheduler(method)
    net = _small_net()
    z = ParticleNoise(3, 5, (3, 2), dtype=torch.float64).prior(PROCESS)
    ours = sample(net, z, PROCESS, N_INF, method, ParticleNoise(4, 5, (3, 2), dtype=torch.float64), eta=eta)

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
                x = sched.step(eps, k, x, eta=eta, variance_noise=ref_noise.draw() if eta and k > 0 else None).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------- step algebra


def test_ddim_eta_one_is_ddpm_and_steps_reduce_to_x0():
    x, eps = _inputs(7)
    noise = torch.randn_like(x)
    t, s = torch.tensor([0.9, 0.5, 0.2, 0.01], dtype=torch.float64), torch.tensor([0.7, 0.3, 0.1, 0.001], dtype=torch.float64)
    torch.testing.assert_close(ddim_step(eps, x, t, s, 1.0, noise, process=PROCESS),
                               ddpm_step(eps, x, t, s, noise, process=PROCESS), rtol=0, atol=1e-12)
    x0 = predict_x0(eps, x, t, PROCESS)
    abar_t, one_t = alpha_bar(PROCESS, t)
    torch.testing.assert_close(x, abar_t.sqrt().view(-1, 1, 1) * x0 + one_t.sqrt().view(-1, 1, 1) * eps)
    for step in (lambda: ddpm_step(eps, x, t, 0.0, None, process=PROCESS),
                 lambda: ddim_step(eps, x, t, 0.0, 0.3, noise, process=PROCESS)):
        torch.testing.assert_close(step(), x0, rtol=0, atol=1e-12)


def test_steps_reject_bad_times_and_processes():
    x, eps = _inputs(0)
    with pytest.raises(ValueError, match="s < t"):
        ddpm_step(eps, x, 0.3, 0.5, process=PROCESS)
    with pytest.raises(ValueError, match="eta"):
        ddim_step(eps, x, 0.5, 0.3, eta=1.5, process=PROCESS)
    with pytest.raises(ValueError, match="VP"):
        ddpm_step(eps, x, 0.5, 0.3, process=BlurProcess())


# ---------------------------------------------------------------------------------------- loss


def test_loss_matches_float64_hand_computation():
    net = _small_net()
    x0 = torch.randn(9, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    process = VPProcess(beta_min=0.2, beta_max=15.0, t_min=0.01, t_max=0.9)
    loss, stats = ddpm_loss(net, x0, process, torch.Generator().manual_seed(5))

    g = torch.Generator().manual_seed(5)
    u = torch.rand(9, generator=g, dtype=torch.float64)
    t = 0.01 + 0.89 * u
    eps = torch.randn(9, 3, 2, generator=g, dtype=torch.float64)
    log_alpha = -0.5 * (0.2 * t + 0.5 * (15.0 - 0.2) * t**2)
    alpha = torch.exp(log_alpha).view(-1, 1, 1)
    x_t = alpha * x0 + torch.sqrt(1 - alpha**2) * eps
    expected = sum(((net(x_t[i:i + 1], t[i:i + 1]) - eps[i:i + 1]) ** 2).sum() for i in range(9)) / (9 * 6)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert stats["mse"] == loss.detach() and not stats["mse"].requires_grad
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


# ------------------------------------------------------------------------------------- networks


def test_eps_nets_are_image_shaped():
    mlp = build_eps_net(ModelConfig(width=16, depth=1, time_dim=8), (2,))
    assert isinstance(mlp, EpsMLP) and mlp.body.feature_dim == 2
    assert mlp(torch.randn(5, 2), 0.3).shape == (5, 2)
    img = build_eps_net(ModelConfig(backbone="unet", base_channels=8, channel_mults=[1, 2], attn_resolutions=[]),
                        (1, 8, 8))
    assert img(torch.randn(3, 1, 8, 8), torch.rand(3)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="image"):
        build_eps_net(ModelConfig(backbone="unet"), (2,))


def test_eps_mlp_skip_path_against_float64_reference():
    """out = body(x, t) + g(t) x with g = skip(time embedding); g = 0 at initialisation."""
    net = _small_net((1, 2, 3))
    x, t = torch.randn(5, 1, 2, 3, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(net(x, t), net.body(x, t).reshape(x.shape), rtol=0, atol=0)
    with torch.no_grad():
        net.skip.weight.normal_()
        net.skip.bias.fill_(0.5)
    temb = net.body.time(t.float()).double()  # (5, time_dim)
    gain = temb @ net.skip.weight.double().T[:, 0] + 0.5
    expected = net.body(x, t).reshape(x.shape) + gain.view(5, 1, 1, 1) * x
    torch.testing.assert_close(net(x, t), expected, rtol=1e-12, atol=1e-12)


def test_eps_mlp_narrower_than_data_learns_eps_at_high_noise():
    """Regression (pixel Fashion-MNIST DDPM gave saturated noise): with width < prod(data_shape) the
    MLP body alone has rank <= width in x, so at t near t_max, where eps ~ x_t, its eps-MSE on
    isotropic eps cannot fall below 1 - width / D = 0.75 here; the skip path g(t) x reaches ~0."""
    torch.manual_seed(0)
    net = build_eps_net(ModelConfig(width=4, depth=1, time_dim=8), (1, 4, 4)).double()
    process = VPProcess(t_min=0.9, t_max=1.0)  # alpha(t) <= 0.017: the optimal eps-MSE is < 1e-3 for |x0| <= 1
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        x0 = torch.rand(64, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
        loss, _ = ddpm_loss(net, x0, process, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0 = torch.rand(512, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        held_out, _ = ddpm_loss(net, x0, process, gen)
    assert held_out < 0.05


# ------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.7)])
@pytest.mark.parametrize("final_denoise", [True, False])
def test_sample_is_per_particle_and_deterministic(method, eta, final_denoise):
    net = _small_net()

    def run(num, start=0):
        z = ParticleNoise(11, num, (3, 2), start=start, dtype=torch.float64).prior(PROCESS)
        return sample(net, z, PROCESS, 6, method, ParticleNoise(12, num, (3, 2), start=start, dtype=torch.float64),
                      eta=eta, final_denoise=final_denoise, chunk_size=2)

    full = run(5)
    assert full.shape == (5, 3, 2) and torch.isfinite(full).all()
    torch.testing.assert_close(run(5), full, rtol=0, atol=0)
    torch.testing.assert_close(run(3), full[:3], rtol=0, atol=1e-12)
    torch.testing.assert_close(run(2, start=3), full[3:], rtol=0, atol=1e-12)


def test_sample_evaluations_and_errors():
    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    net, z = _small_net(), torch.randn(4, 3, 2, dtype=torch.float64)
    for final in (True, False):
        bar = Counter()
        sample(net, z, PROCESS, 5, "ddim", progress=bar, final_denoise=final)
        assert bar.n == num_evaluations(5, final) == 4 + final
    with pytest.raises(ValueError, match="ParticleNoise"):
        sample(net, z, PROCESS, 5, "ddpm")
    with pytest.raises(ValueError, match="method"):
        sample(net, z, PROCESS, 5, "euler")


class GaussianEps(nn.Module):
    """The exact eps for data N(m, s^2 I): E[eps | x_t] = sigma_t (x_t - alpha_t m) / (alpha_t^2 s^2 + sigma_t^2)."""

    def __init__(self, m, s, process):
        super().__init__()
        self.m, self.s, self.process = m, s, process

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        a, sig = float(self.process.alpha(t)), float(self.process.sigma(t))
        return sig * (x - a * self.m) / (a**2 * self.s**2 + sig**2)


def test_exact_eps_recovers_gaussian():
    """With the exact eps of N(m, s^2 I) the samplers get the mean; the std comes out low by the
    discretisation error of the uniform t grid (the last steps are coarse next to s = 0.1) and that
    error shrinks as the grid is refined."""
    m, s, n = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.1, 2000
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net = GaussianEps(m, s, PROCESS)
    runs = {"ddpm100": sample(net, z, PROCESS, 100, "ddpm", ParticleNoise(1, n, (2,), dtype=torch.float64)),
            "ddim50": sample(net, z, PROCESS, 50, "ddim"), "ddim200": sample(net, z, PROCESS, 200, "ddim")}
    for x in runs.values():
        torch.testing.assert_close(x.mean(0), m, rtol=0, atol=0.01)
        assert ((x.std(0) > 0.07) & (x.std(0) < 0.105)).all()
    assert (runs["ddim200"].std(0) - s).abs().max() < 0.5 * (runs["ddim50"].std(0) - s).abs().min()


def test_trained_mlp_ddim_lands_near_mean():
    """400 Adam steps on N(m, 0.1^2 I) in 2-D; DDIM samples' mean lands near m."""
    torch.manual_seed(0)
    m = torch.tensor([1.0, -0.5])
    net = build_eps_net(ModelConfig(width=64, depth=2, time_dim=16), (2,))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(400):
        x0 = m + 0.1 * torch.randn(256, 2, generator=gen)
        loss, _ = ddpm_loss(net, x0, PROCESS, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    x = sample(net.eval(), z, PROCESS, 50, "ddim")
    assert (x.mean(0) - m).abs().max() < 0.1, x.mean(0)
    # An under-trained eps (loss ~0.05) maps a few prior tails far off under deterministic DDIM
    # (~2% here), so bound the bulk rather than the std.
    assert (x.median(0).values - m).abs().max() < 0.05
    assert ((x - m).norm(dim=1) < 0.5).float().mean() > 0.95


def test_checkpoint_without_skip_path_loads_as_zero_skip(tmp_path):
    """A DDPM / flow-matching MLP checkpoint written before EpsMLP's skip path (no skip.* keys) loads
    for sampling with g(t) = 0, the network it was trained as; a DMMD checkpoint is untouched."""
    from dmmd.config import load
    from dmmd.methods.build import load_model
    from dmmd.methods.ddpm import add_missing_skip
    from dmmd.runtime import checkpoint as ckpt
    from dmmd.training.loop import save_checkpoint
    from dmmd.training.state import new_state

    cfg = load(None, ["data.name=eight_gaussians", "method=fm", "sample.sampler=euler", "model.width=8",
                      "model.depth=1", "model.time_dim=8", "train.threads=1"])
    state = new_state(cfg, (2,))
    with torch.no_grad():
        state.ema.module.skip.bias.fill_(0.7)  # a trained skip; removing it must not matter below
    path = save_checkpoint(state, cfg, tmp_path / "run", final=True)
    payload = ckpt.load(path)
    old = {k: v for k, v in payload["ema"].items() if ".skip." not in k}
    payload["ema"] = old
    torch.save(payload, path)
    _, net, _, _ = load_model(path)
    assert float(net.skip.bias) == 0.0 and float(net.skip.weight.abs().sum()) == 0.0
    x, t = torch.randn(5, 2), torch.rand(5)
    body = net.body(x, t)
    torch.testing.assert_close(net(x, t), body, rtol=0, atol=0)
    dmmd_like = {"module.features.weight": torch.zeros(2)}
    assert add_missing_skip(dmmd_like) is dmmd_like
