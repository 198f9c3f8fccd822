"""Samplers against float64 references: one exact step is the Wasserstein gradient of MMD^2/2."""

import pytest
import torch
from conftest import small_disc
from hypothesis import given, settings
from hypothesis import strategies as st

from dmmd.math import divergences as dv
from dmmd.math.noising import BlurProcess, VPProcess
from dmmd.methods.mmd_flow import (
    FlowSettings,
    ParticleNoise,
    approx_flow,
    exact_flow,
    kale_flow,
    level_features,
    mean_term,
    run_flow,
)

PROCESS = VPProcess()


def _reference_step(disc, z, x, t, eta):
    """z - eta * (N / 2) * grad_z MMD2_biased(phi(z, t), phi(x, t)), by autograd."""
    z = z.clone().requires_grad_(True)
    kernel = disc.kernel(t)
    a, b = disc.features(z, t), disc.features(x, t)
    mmd2 = dv.mmd2(kernel, a, b, unbiased=False)
    (grad,) = torch.autograd.grad(mmd2, z)
    return (z - eta * z.shape[0] / 2 * grad).detach()


@pytest.mark.parametrize("kernel", ["linear", "rbf", "rq"])
@pytest.mark.parametrize("chunk", [64, 3])
def test_exact_step_is_mmd_gradient(kernel, chunk):
    disc = small_disc(kernel)
    gen = torch.Generator().manual_seed(1)
    z, x = torch.randn(7, 2, generator=gen, dtype=torch.float64), torch.randn(11, 2, generator=gen, dtype=torch.float64)
    t = 0.3
    grid = torch.tensor([t], dtype=torch.float64)
    reference = level_features(disc, x, grid, reduce_mean=kernel == "linear")
    s = FlowSettings(num_levels=1, steps_per_level=1, step_size=0.37, chunk_size=chunk)
    out, _ = exact_flow(disc, z, grid, s, PROCESS, reference)
    expected = _reference_step(disc, z, x, t, 0.37)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_exact_step_leave_one_out_linear_matches_loop():
    disc = small_disc("linear")
    gen = torch.Generator().manual_seed(2)
    z, x = torch.randn(6, 2, generator=gen, dtype=torch.float64), torch.randn(9, 2, generator=gen, dtype=torch.float64)
    t, eta = 0.5, 0.2
    grid = torch.tensor([t], dtype=torch.float64)
    s = FlowSettings(1, 1, eta, leave_one_out=True, chunk_size=4)
    out, _ = exact_flow(disc, z, grid, s, PROCESS, level_features(disc, x, grid))
    with torch.no_grad():
        mu_x, pz = disc.features(x, t).mean(0), disc.features(z, t)
    for i in range(6):
        others = torch.cat([pz[:i], pz[i + 1:]]).mean(0)
        zi = z[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad((disc.features(zi, t) @ (mu_x - others)).sum(), zi)
        torch.testing.assert_close(out[i], z[i] + eta * g[0], rtol=0, atol=1e-12)


def test_exact_records_particle_means_and_replay_reproduces_it():
    """Reading (c) driven by the exact run's own means moves each particle as the exact run did."""
    disc = small_disc("linear")
    z = ParticleNoise(3, 40, (2,), dtype=torch.float64).prior(PROCESS)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grid = torch.tensor([0.8, 0.4, 0.1], dtype=torch.float64)
    s = FlowSettings(3, 4, 0.3, chunk_size=1000)
    mu = level_features(disc, x, grid)
    out, means = exact_flow(disc, z, grid, s, PROCESS, mu, record_means=True)
    assert means.shape == (12, disc.feature_dim)
    replay = approx_flow(disc, z, grid, s, PROCESS, mu, means, per_step=True)
    torch.testing.assert_close(replay, out, rtol=0, atol=1e-10)


def test_approx_own_reading_is_gradient_of_feature_distance():
    disc = small_disc("linear")
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mu = torch.randn(1, disc.feature_dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grid = torch.tensor([0.25], dtype=torch.float64)
    out = approx_flow(disc, z, grid, FlowSettings(1, 1, 0.1), PROCESS, mu, None)
    zr = z.clone().requires_grad_(True)
    loss = -0.5 * (mu[0] - disc.features(zr, 0.25)).pow(2).sum()
    (g,) = torch.autograd.grad(loss, zr)
    torch.testing.assert_close(out, z + 0.1 * g, rtol=0, atol=1e-12)


def test_approx_data_noised_reading_uses_level_mean():
    disc = small_disc("linear")
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    mu, m = torch.randn(2, disc.feature_dim, generator=g, dtype=torch.float64), torch.randn(2, disc.feature_dim, generator=g, dtype=torch.float64)
    grid = torch.tensor([0.6, 0.2], dtype=torch.float64)
    out = approx_flow(disc, z, grid, FlowSettings(2, 1, 0.1), PROCESS, mu, m)
    ref = z.clone()
    for k, t in enumerate(grid.tolist()):
        zr = ref.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad((disc.features(zr, t) @ (mu[k] - m[k])).sum(), zr)
        ref = ref + 0.1 * gr
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_kale_flow_ascends_critic():
    disc = small_disc("linear", objective="kale")
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grid = torch.tensor([0.5], dtype=torch.float64)
    out = kale_flow(disc, z, grid, FlowSettings(1, 1, 0.05), PROCESS)
    zr = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(disc.critic_value(disc.features(zr, 0.5)).sum(), zr)
    torch.testing.assert_close(out, z + 0.05 * g, rtol=0, atol=1e-12)


def test_noise_in_flow_is_seeded_and_per_particle():
    """Injection and re-noising are reproducible, and particle i's path ignores its batch."""
    disc = small_disc("linear", dtype=torch.float32)
    grid = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    mu = torch.randn(3, disc.feature_dim, generator=torch.Generator().manual_seed(1))
    s = FlowSettings(3, 3, 0.1, inject=0.3, renoise=0.2)

    def draw(start, n):
        noise = ParticleNoise(11, n, (2,), start=start)
        return approx_flow(disc, noise.prior(PROCESS), grid, s, PROCESS, mu, None, noise=noise)

    full = draw(0, 20)
    torch.testing.assert_close(draw(0, 20), full, rtol=0, atol=0)
    torch.testing.assert_close(draw(13, 1)[0], full[13], rtol=0, atol=1e-6)
    torch.testing.assert_close(draw(5, 7), full[5:12], rtol=0, atol=1e-6)
    plain = approx_flow(disc, ParticleNoise(11, 20, (2,)).prior(PROCESS), grid, FlowSettings(3, 3, 0.1), PROCESS, mu, None)
    assert (plain - full).abs().max() > 1e-3  # the noise does something


def test_noise_needs_a_source():
    disc = small_disc("linear")
    with pytest.raises(ValueError, match="ParticleNoise"):
        run_flow(disc, torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                 FlowSettings(1, 1, 0.1, inject=0.1), PROCESS, mean_term(torch.zeros(1, 5, dtype=torch.float64), None))


def test_approx_refuses_nonlinear_kernel():
    disc = small_disc("rbf")
    with pytest.raises(ValueError, match="linear kernel"):
        approx_flow(disc, torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                    FlowSettings(1, 1, 0.1), PROCESS, torch.zeros(1, 5, dtype=torch.float64))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 9), m=st.integers(2, 9), chunk=st.integers(1, 10))
def test_exact_chunking_does_not_change_result(n, m, chunk):
    disc = small_disc("rq")
    gen = torch.Generator().manual_seed(n * 31 + m)
    z, x = torch.randn(n, 2, generator=gen, dtype=torch.float64), torch.randn(m, 2, generator=gen, dtype=torch.float64)
    grid = torch.tensor([0.7, 0.2], dtype=torch.float64)
    ref = level_features(disc, x, grid, reduce_mean=False)
    a, _ = exact_flow(disc, z, grid, FlowSettings(2, 2, 0.1, chunk_size=chunk), PROCESS, ref)
    b, _ = exact_flow(disc, z, grid, FlowSettings(2, 2, 0.1, chunk_size=100), PROCESS, ref)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_replay_reading_is_per_seed_whatever_the_batch():
    """Sample k of seed s is the same drawn alone, in a batch of 7 or in a batch of 1000 (float32)."""
    from dmmd.config import Config
    from dmmd.methods.sample import calibrate, sample

    disc = small_disc("linear", dtype=torch.float32)
    cfg = Config()
    cfg.sample.num_levels, cfg.sample.steps_per_level, cfg.sample.replay_particles = 4, 3, 300
    cfg.sample.inject, cfg.sample.renoise = 0.2, 0.1
    train = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    stats = calibrate(disc, cfg, train, PROCESS)
    big = sample(disc, cfg, stats, PROCESS, (2,), 1000, seed=3)
    for k in (0, 5, 998):
        alone = sample(disc, cfg, stats, PROCESS, (2,), 1, seed=3, start=k)
        assert (alone[0] - big[k]).abs().max() < 1e-4
    seven = sample(disc, cfg, stats, PROCESS, (2,), 7, seed=3, start=500)
    assert (seven - big[500:507]).abs().max() < 1e-4
    other_seed = sample(disc, cfg, stats, PROCESS, (2,), 7, seed=4, start=500)
    assert (other_seed - seven).abs().max() > 1e-3


def test_kernel_step_size_applies_to_nonlinear_exact_sampler():
    from dmmd.config import Config
    from dmmd.methods.sample import sample

    disc = small_disc("rq", dtype=torch.float32)
    cfg = Config()
    cfg.model.kernel, cfg.sample.sampler = "rq", "exact"
    cfg.sample.num_levels, cfg.sample.steps_per_level, cfg.sample.inject = 2, 1, 0.0
    ref = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    base = sample(disc, cfg, {}, PROCESS, (2,), 10, seed=1, reference=ref)
    cfg.sample.kernel_step_size = cfg.sample.step_size
    assert torch.equal(sample(disc, cfg, {}, PROCESS, (2,), 10, seed=1, reference=ref), base)
    cfg.sample.kernel_step_size = 0.5
    assert (sample(disc, cfg, {}, PROCESS, (2,), 10, seed=1, reference=ref) - base).abs().max() > 1e-4


# ------------------------------------------------------------------ batched per-particle noise


@pytest.mark.parametrize("shape,process", [((3,), VPProcess()), ((1, 20, 20), VPProcess()), ((3, 32, 32), BlurProcess())])
def test_particle_noise_unaligned_batches_match_one_batch(shape, process):
    """Sample i's prior and its later draws are the same numbers whatever batch holds it: unaligned
    starts, batches inside one block, and batches crossing several block boundaries."""
    from dmmd.methods.mmd_flow import block_rows

    rows = block_rows(shape)  # 256, 128 and 16 rows
    total = 3 * rows + 17
    full = ParticleNoise(5, total, shape)
    ref = [full.prior(process), full.draw(), full.draw()]
    for start, num in [(0, 1), (rows - 1, 2), (1, rows), (rows, rows), (3, 2 * rows + 5),
                       (rows + 7, 1), (total - 1, 1), (2 * rows - 3, rows + 19)]:
        part = ParticleNoise(5, num, shape, start=start)
        got = [part.prior(process), part.draw(), part.draw()]
        for a, b in zip(got, ref):
            assert a.shape == (num, *shape)
            torch.testing.assert_close(a, b[start:start + num], rtol=0, atol=0)


def test_block_rows_and_seeds():
    from dmmd.methods.mmd_flow import BLOCK_VALUES, block_rows, block_seed

    assert block_rows((64,)) == 256 and block_rows((1, 28, 28)) == 64 and block_rows((3, 32, 32)) == 16
    assert block_rows((3, 256, 256)) == 1
    for shape in [(1,), (64,), (1, 28, 28), (3, 64, 64)]:
        r = block_rows(shape)
        assert r & (r - 1) == 0 and (r == 1 or r * torch.Size(shape).numel() <= BLOCK_VALUES)
    seeds = {block_seed(s, b) for s in range(50) for b in range(200)}
    assert len(seeds) == 50 * 200 and all(0 <= x < 2**32 for x in seeds)  # distinct, fit torch's 32 bits


def test_particle_noise_is_standard_normal_and_seeded():
    a = ParticleNoise(0, 2000, (8,)).draw()
    assert abs(float(a.mean())) < 0.02 and abs(float(a.std()) - 1) < 0.02
    assert torch.equal(ParticleNoise(0, 2000, (8,)).draw(), a)
    b = ParticleNoise(1, 2000, (8,)).draw()
    assert float((a * b).mean().abs()) < 0.02  # another seed: independent numbers
    c = ParticleNoise(0, 2000, (8,), dtype=torch.float64).draw()
    assert c.dtype == torch.float64 and torch.equal(c.float(), a)
    assert ParticleNoise(0, 0, (8,)).draw().shape == (0, 8)


# ------------------------------------------------- exact sampler: one pass above chunk_size


def _two_pass_exact_flow(disc, z, grid, s, process, reference, noise=None):
    """The exact flow as it was before graphs were kept (reference): every step a no-grad
    population pass, then a forward and backward per chunk, the population sum taken per chunk."""
    z = z.detach().clone()
    n, means = z.shape[0], []
    linear = disc.kernel_name == "linear"
    for k, t in enumerate(grid.tolist()):
        sigma = float(process.noise_scale(torch.tensor(t)))
        for _ in range(s.steps_per_level):
            z_eval = z + s.inject * sigma * noise.draw() if s.inject else z
            with torch.no_grad():
                pop = torch.cat([disc.features(z_eval[i:i + s.chunk_size], t) for i in range(0, n, s.chunk_size)])
            means.append(pop.mean(0))
            new_z = torch.empty_like(z)
            for i in range(0, n, s.chunk_size):
                chunk = slice(i, min(i + s.chunk_size, n))
                zc = z_eval[chunk].detach().requires_grad_(True)
                feats = disc.features(zc, t)
                if linear:
                    particle = feats @ pop.sum(0)
                    if s.leave_one_out:
                        particle = particle - (feats * pop[chunk]).sum(1)
                    values = feats @ reference[k] - particle / (n - 1 if s.leave_one_out else n)
                else:
                    kernel = disc.kernel(grid[k])
                    values = kernel(feats, reference[k]).mean(1) - kernel(feats, pop).mean(1)
                (g,) = torch.autograd.grad(values.sum(), zc)
                new_z[chunk] = z[chunk] + s.step_size * g
            z = new_z
        if s.renoise and k < len(grid) - 1:
            z = z + s.renoise * sigma * noise.draw()
    return z, torch.stack(means)


def _counting(disc):
    calls = []
    inner = disc.features

    def features(x, t):
        calls.append(x.shape[0])
        return inner(x, t)

    disc.features = features
    return calls


@pytest.mark.parametrize("kernel,loo", [("linear", False), ("linear", True), ("rbf", False)])
@pytest.mark.parametrize("budget", [1024.0, 0.0])
def test_exact_one_pass_equals_two_pass_reference(kernel, loo, budget):
    """Above chunk_size the exact flow keeps every chunk's graph (budget permitting) and forwards
    each particle once per step; with budget 0 it takes the no-grad population pass. Both equal
    the two-pass reference (float64) over several levels with injection and re-noising."""
    disc = small_disc(kernel)
    gen = torch.Generator().manual_seed(21)
    z, x = torch.randn(23, 2, generator=gen, dtype=torch.float64), torch.randn(30, 2, generator=gen, dtype=torch.float64)
    grid = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    reference = level_features(disc, x, grid, reduce_mean=kernel == "linear")
    s = FlowSettings(3, 2, 0.3, inject=0.2, renoise=0.1, leave_one_out=loo, chunk_size=5, graph_budget_mb=budget)
    expected, expected_means = _two_pass_exact_flow(disc, z, grid, s, PROCESS, reference,
                                                    ParticleNoise(2, 23, (2,), dtype=torch.float64))
    calls = _counting(disc)
    out, means = exact_flow(disc, z, grid, s, PROCESS, reference, ParticleNoise(2, 23, (2,), dtype=torch.float64),
                            record_means=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(means, expected_means, rtol=0, atol=1e-10)
    passes = sum(calls) / (23 * s.num_steps)  # particles forwarded per particle per step
    assert passes == (1 if budget else 2)


def test_exact_population_sum_taken_once_per_step():
    """The linear exact term sums the population once per step, not once per chunk."""
    disc = small_disc("linear")
    z = torch.randn(20, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = torch.tensor([0.6, 0.3], dtype=torch.float64)
    mu = torch.randn(2, disc.feature_dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sums = []
    original = torch.Tensor.sum

    def counting_sum(self, *args, **kwargs):
        if self.ndim == 2 and self.shape[0] == 20 and args[:1] == (0,):
            sums.append(1)
        return original(self, *args, **kwargs)

    torch.Tensor.sum = counting_sum
    try:
        exact_flow(disc, z, grid, FlowSettings(2, 3, 0.1, chunk_size=4), PROCESS, mu)
    finally:
        torch.Tensor.sum = original
    assert len(sums) == 6  # 2 levels x 3 steps, with 5 chunks per step


def test_calibration_averages_over_a_fixed_random_subset_of_rows():
    """sample.calibration_rows = k: mu_data(t) is the mean over k rows in seed-0 random order (not the
    first k, which in a sorted file would be one class); 0 or k >= N: every row."""
    from dmmd.config import Config
    from dmmd.methods.sample import calibrate, calibration_subset

    disc = small_disc("linear", dtype=torch.float32)
    cfg = Config()
    cfg.sample.num_levels, cfg.sample.steps_per_level, cfg.sample.replay_particles = 3, 1, 50
    train = torch.cat([torch.zeros(100, 2), torch.ones(100, 2)])  # sorted: the first 60 rows are all zeros
    cfg.sample.calibration_rows = 60
    sub, _ = calibration_subset(train, None, 60)
    assert sub.shape == (60, 2) and 0 < sub[:, 0].sum() < 60  # both halves drawn
    assert torch.equal(calibration_subset(train, None, 60)[0], sub)  # the same rows every time
    grid = torch.tensor([1.0, 0.5005, 0.001], dtype=torch.float64)
    stats = calibrate(disc, cfg, train, PROCESS)
    torch.testing.assert_close(stats["data_mean"], level_features(disc, sub, grid))
    assert not torch.allclose(stats["data_mean"], level_features(disc, train, grid))
    for rows in (0, 200, 500):
        cfg.sample.calibration_rows = rows
        torch.testing.assert_close(calibrate(disc, cfg, train, PROCESS)["data_mean"], level_features(disc, train, grid))


def test_calibration_subset_keeps_every_class_or_takes_all_rows():
    from dmmd.methods.sample import calibration_subset

    train = torch.arange(100.0).view(100, 1)
    labels = torch.zeros(100, dtype=torch.long)
    labels[:50] = 1
    sub, sub_labels = calibration_subset(train, labels, 20)
    assert sub.shape == (20, 1) and torch.equal(sub_labels, labels[sub[:, 0].long()])
    drawn = set(sub[:, 0].long().tolist())
    labels[min(set(range(100)) - drawn)] = 2  # a class of one row, outside the subset
    sub, sub_labels = calibration_subset(train, labels, 20)
    assert sub is train and sub_labels is labels
