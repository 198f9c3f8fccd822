"""sample.step_norm = "gradient": each step moves a coordinate by step_size * sigma_t in root mean
square over the population (exact flow), and the population-free replay moves each particle by the
scales its exact run recorded. References: explicit per-step loops in float64."""

import math

import pytest
import torch
from conftest import small_disc

from dmmd import config, presets
from dmmd.math.noising import VPProcess
from dmmd.methods.mmd_flow import FlowSettings, ParticleNoise, approx_flow, exact_flow, level_features
from dmmd.methods.sample import settings_for_nfe
from dmmd.runtime.checkpoint import CheckpointError, check_stats

PROCESS = VPProcess()


def _reference(disc, z, grid, mu, r, steps):
    """z + r sigma_t g / rms(g) per step, g the exact linear witness gradient, in a loop."""
    z, scales = z.clone(), []
    for k, t in enumerate(grid.tolist()):
        sigma = float(PROCESS.sigma(torch.tensor(t)))  # the flow reads sigma at t rounded to float32, as here
        for _ in range(steps):
            g = torch.zeros_like(z)
            with torch.no_grad():
                pop = disc.features(z, t).mean(0)
            for i in range(len(z)):
                zi = z[i:i + 1].clone().requires_grad_(True)
                (gi,) = torch.autograd.grad((disc.features(zi, t) @ (mu[k] - pop)).sum(), zi)
                g[i] = gi[0]
            rms = math.sqrt(float(g.square().sum()) / g.numel())
            scales.append(sigma / rms)
            z = z + r * sigma / rms * g
    return z, scales


@pytest.mark.parametrize("chunk", [1000, 7])
def test_gradient_steps_match_the_loop_and_the_replay_repeats_them(chunk):
    disc = small_disc("linear")
    z = ParticleNoise(3, 20, (2,), dtype=torch.float64).prior(PROCESS)
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grid = torch.tensor([0.8, 0.4, 0.1], dtype=torch.float64)
    s = FlowSettings(3, 2, 0.25, chunk_size=chunk, step_norm="gradient")
    mu = level_features(disc, x, grid)
    out, means, scales = exact_flow(disc, z, grid, s, PROCESS, mu, record_means=True)
    want, want_scales = _reference(disc, z, grid, mu, 0.25, 2)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(scales, torch.tensor(want_scales, dtype=torch.float64), rtol=1e-10, atol=0)
    replay = approx_flow(disc, z, grid, s, PROCESS, mu, means, per_step=True, step_scales=scales)
    torch.testing.assert_close(replay, out, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="step scales"):
        approx_flow(disc, z, grid, s, PROCESS, mu, means, per_step=True)


class Scaled(torch.nn.Module):
    """The discriminator's features times a constant: a longer-trained model's larger features."""

    def __init__(self, disc, factor):
        super().__init__()
        self.disc, self.factor, self.kernel_name = disc, factor, disc.kernel_name

    def features(self, x, t):
        return self.factor * self.disc.features(x, t)


def test_a_step_moves_by_r_sigma_whatever_the_feature_scale():
    disc = small_disc("linear")
    z = ParticleNoise(0, 50, (2,), dtype=torch.float64).prior(PROCESS)
    grid = torch.tensor([0.5], dtype=torch.float64)
    x = torch.randn(40, 2, dtype=torch.float64)
    sigma = float(PROCESS.sigma(torch.tensor(0.5)))
    moves = {}
    for norm in ("fixed", "gradient"):
        for factor in (1.0, 10.0):
            scaled = Scaled(disc, factor)
            out, _ = exact_flow(scaled, z, grid, FlowSettings(1, 1, 0.3, step_norm=norm), PROCESS,
                                level_features(scaled, x, grid))
            moves[norm, factor] = float((out - z).square().mean().sqrt())
    assert moves["gradient", 1.0] == pytest.approx(0.3 * sigma, rel=1e-9) == moves["gradient", 10.0]
    assert moves["fixed", 10.0] == pytest.approx(100 * moves["fixed", 1.0], rel=1e-9)  # the overshoot it removes


def test_tags_of_fixed_steps_are_unchanged():
    assert FlowSettings(10, 10, 0.2).tag() == "T=10,Ns=10,eta=0.2,grid=uniform,inject=0,renoise=0,loo=0"
    assert FlowSettings(10, 10, 0.2, step_norm="gradient").tag().endswith(",norm=gradient")


def test_nfe_rule_scales_a_gradient_step_by_the_square_root_of_the_levels():
    cfg = config.load(presets.path("digits"), ["sample.step_norm=gradient", "sample.step_size=0.06"])
    base = cfg.sample
    for nfe, levels, steps in ((10, 10, 1), (20, 20, 1), (100, 10, 10)):
        c = config.load(presets.path("digits"), ["sample.step_norm=gradient", "sample.step_size=0.06"])
        settings_for_nfe(c, nfe)
        assert (c.sample.num_levels, c.sample.steps_per_level) == (levels, steps)
        want = 0.06 * (base.steps_per_level / steps) ** base.step_size_power * math.sqrt(base.num_levels / levels)
        assert c.sample.step_size == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("overrides", [["sample.reading=own"], ["sample.reading=data_noised"],
                                       ["sample.sampler=kale", "model.objective=kale"]])
def test_gradient_steps_need_an_exact_run(overrides):
    with pytest.raises(config.ConfigError, match="step_norm"):
        config.load(None, ["sample.step_norm=gradient", *overrides])
    config.load(None, ["sample.step_norm=gradient", "sample.sampler=exact"])  # accepted


@pytest.mark.parametrize("scales, ok", [({"T=1": torch.ones(3, dtype=torch.float64)}, True),
                                        ({"T=1": torch.ones(4)}, False), ({"T=2": torch.ones(3)}, False),
                                        ({"T=1": torch.full((3,), float("nan"))}, False), ([1.0], False)])
def test_stored_step_scales_are_checked(scales, ok):
    stats = {"grid": "T=1,grid=uniform", "data_mean": torch.zeros(1, 4), "replay": {"T=1": torch.zeros(3, 4)},
             "replay_scale": scales}
    if ok:
        assert check_stats(stats, "x.pt") is stats
    else:
        with pytest.raises(CheckpointError, match="replay_scale"):
            check_stats(stats, "x.pt")
