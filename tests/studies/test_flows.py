"""Checks for dmmd.apps.studies.flows (fixed-width MMD flow against autograd in float64; the
step-by-step DMMD flow against dmmd.methods.sample.sample) and the --quick runs of flows and pictures."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import small_disc

from dmmd.apps.studies import flows, pictures
from dmmd.config import Config, set_value
from dmmd.math import divergences as dv
from dmmd.math.noising import VPProcess
from dmmd.methods.sample import calibrate, sample


def _points(seed, n, m, d=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64) + 0.5


@pytest.mark.parametrize("width", [0.1, 0.5, 2.0])
def test_witness_gradient_matches_autograd(width):
    z, x = _points(0, 9, 13, d=3)
    pop = z + 0.1
    zz = z.clone().requires_grad_(True)
    f = dv.rbf_kernel(zz, x, width).mean(1) - dv.rbf_kernel(zz, pop, width).mean(1)
    (expected,) = torch.autograd.grad(f.sum(), zz)
    got = flows.rbf_witness_gradient(z, pop, x, width)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("width,eta", [(0.2, 0.01), (1.0, 0.3)])
def test_fixed_width_step_is_scaled_mmd_gradient_descent(width, eta):
    """With no noise: z - eta * (N/2) * grad_z MMD2_biased(z, x), by autograd in float64."""
    z, x = _points(1, 11, 17)
    zz = z.clone().requires_grad_(True)
    k = lambda a, b: dv.rbf_kernel(a, b, width)
    mmd2 = dv.mmd2_biased(k(zz, zz), k(x, x), k(zz, x))
    (grad,) = torch.autograd.grad(mmd2, zz)
    expected = z - eta * z.shape[0] / 2 * grad
    got = flows.fixed_width_step(z, x, width, eta)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-13)
    assert not torch.equal(got, z)


def test_noisy_step_evaluates_at_noised_points_with_clean_population():
    z, x = _points(2, 8, 10)
    got = flows.fixed_width_step(z, x, 0.3, 0.05, 0.2, torch.Generator().manual_seed(4))
    u = torch.randn(z.shape, generator=torch.Generator().manual_seed(4), dtype=z.dtype)
    expected = z + 0.05 * flows.rbf_witness_gradient(z + 0.2 * u, z, x, 0.3)
    assert torch.equal(got, expected)


def test_fixed_width_flow_records_every_step_and_moves_towards_data():
    z, x = _points(3, 50, 80)
    x = 0.2 * x + 3.0  # far from the particles, within reach of a wide kernel
    seen = []
    out = flows.fixed_width_flow(z, x, 2.0, 2.0, 20, record=lambda s, p: seen.append(s))
    assert seen == list(range(1, 21))
    assert (out.mean(0) - x.mean(0)).norm() < (z.mean(0) - x.mean(0)).norm()


def test_record_steps():
    steps = flows.record_steps(500, 10)
    assert steps[0] == 1 and steps[-1] == 500 and 100 in steps and steps == sorted(set(steps))


@pytest.mark.parametrize("sampler,reading,inject,renoise", [("exact", "replay", 0.3, 0.05),
                                                             ("approx", "replay", 0.0, 0.3),
                                                             ("approx", "data_noised", 0.2, 0.0)])
def test_step_by_step_flow_equals_pipeline_sample(sampler, reading, inject, renoise):
    cfg = Config()
    for key, value in {"sample.sampler": sampler, "sample.reading": reading, "sample.inject": inject,
                       "sample.renoise": renoise, "sample.num_levels": 3, "sample.steps_per_level": 2,
                       "sample.replay_particles": 16}.items():
        set_value(cfg, f"{key}", value)
    disc = small_disc(dtype=torch.float32)
    process = VPProcess()
    train = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    stats = calibrate(disc, cfg, train, process)
    seen = []
    got = flows.dmmd_flow_by_step(disc, cfg, stats, process, (2,), 12, 5, record=lambda s, k, z: seen.append((s, k)))
    expected = sample(disc, cfg, stats, process, (2,), 12, 5)
    assert torch.equal(got, expected)
    assert seen == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2)]


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def test_quick_flows_main_writes_files(tmp_path, quick_runs):
    assert flows.main(["--out", str(tmp_path), "--quick", "--runs", str(quick_runs)]) == 0
    payload = json.loads((tmp_path / "flows.json").read_text())
    r = payload["results"]["eight_gaussians"]
    assert r["table"][0]["method"] == "DMMD (exact)" and len(r["curves"]["DMMD (exact)"]["step"]) == 100
    assert len(r["table"]) == 1 + len(flows.QUICK.widths) * len(flows.QUICK.noise_factors)
    assert "modes" in r["table"][0] and "dmmd_below_every_fixed_final" in r["acceptance"]
    png = tmp_path / "flows_eight_gaussians.png"
    assert png.is_file() and png.stat().st_size < 400_000
    assert "| DMMD (exact) |" in (tmp_path / "flows.md").read_text()


def test_quick_pictures_main_writes_files(tmp_path, quick_runs):
    assert pictures.main(["--out", str(tmp_path), "--quick", "--runs", str(quick_runs)]) == 0
    for name in ("flow_eight_gaussians.gif", "digits_levels.png", "marginals.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size < 400_000
    payload = json.loads((tmp_path / "marginals.json").read_text())
    for name in ("eight_gaussians", "digits"):
        r = payload["results"][name]
        assert len(r["mmd2"]) == len(r["floor"]) == len(r["t_star"]) == len(r["t"])
    with pytest.raises(ValueError, match="other settings"):  # a cached run of other training settings
        flows.trained_preset("eight_gaussians", quick_runs / "eight_gaussians", ["train.steps=3"])


def test_best_fixed_flow_keeps_the_lowest_final_score():
    z, x = _points(6, 40, 60)
    scorer = flows.Scorer(x[:30])
    st = flows.FlowStudySettings(step_factors=(1.0, 16.0), num_steps=6, tune_particles=40, tune_data=60)
    best = flows.best_fixed_flow(z, x, scorer, 0.5, 0.0, st, steps=[1, 6])
    assert best["curve"]["step"] == [1, 6]
    assert best["tuning"][f"{best['step_size']:g}"] == min(best["tuning"].values())
    assert best["curve"]["mmd2"][-1] == pytest.approx(min(best["tuning"].values()))  # same population here
    assert set(best["tuning"]) == {"0.25", "4"}
