"""A shortened 8-Gaussians check of the shipped preset: both samplers reach every mode, with diversity.

The full check (2000 samples, seeds 0-2, the preset as shipped) is benchmarks/toy_acceptance.py.
This one trains the preset's network on half its batch, 800 steps at lr 1.5e-3 (about 30 CPU-s on
one thread against about 110 for the preset as shipped; measured near 0.99 / 0.99 for exact /
approx, modes 11.6-14.2%, 98-99% distinct, std ratio 0.73, and 0.008 distinct with the flow's noise
off, the preset's own figure), and checks 1000 samples of one seed against the issue's thresholds.
Less does not get there: 700 steps at lr 1e-3 on the full batch reach the radius but not the modes
(near 0.26); a batch of 64 (near 0.69) or half the levels as well (near 0.77) fall short.
"""

import pytest
import torch

from dmmd import config
from dmmd.data.datasets import load_dataset
from dmmd.evaluation.report import eight_gaussians_scores
from dmmd.methods.build import build_process
from dmmd.methods.sample import sample
from dmmd.training.loop import train

# the preset's network on half its batch, 800 steps at lr 1.5e-3 (the module docstring has the figures)
SHORTER = ["train.batch_size=128", "train.steps=800", "train.lr=1.5e-3"]
# the KALE check's network: smaller and shorter than the preset's (see that test's docstring)
KALE_SMALL = ["model.width=64", "train.batch_size=128", "train.steps=500", "train.lr=1.5e-3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    old = torch.get_num_threads()
    # one thread: deterministic (two threads reorder float sums between runs, and this training
    # amplifies that), and faster for this small MLP on a 2-core machine (94 s against 147 s)
    torch.set_num_threads(1)
    try:
        cfg = config.load("configs/eight_gaussians.toml", ["sample.replay_particles=1000", *SHORTER])
        data = load_dataset(cfg.data, cfg.seed)
        state = train(cfg, data.train, tmp_path_factory.mktemp("g8"), progress=False)
    finally:
        torch.set_num_threads(old)
    return cfg, state


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["exact", "approx"])
def test_short_run_reaches_every_mode_without_collapse(trained, sampler):
    cfg, state = trained
    cfg.sample.sampler = sampler
    z = sample(state.ema.module, cfg, state.stats, build_process(cfg.process), (2,), 1000, seed=0)
    r = eight_gaussians_scores(z)
    assert r["near"] >= 0.9, r
    assert 0.08 <= r["min_mode"] and r["max_mode"] <= 0.17, r
    assert r["distinct"] >= 0.95, r
    assert 0.6 <= r["std_ratio"] <= 1.5, r


@pytest.mark.slow
def test_collapse_is_flagged_without_noise(trained):
    """With the noise in the flow off, the approximate sampler makes copies, and the check sees it."""
    cfg, state = trained
    cfg.sample.sampler, cfg.sample.reading = "approx", "data_noised"
    cfg.sample.inject = cfg.sample.renoise = 0.0
    z = sample(state.ema.module, cfg, state.stats, build_process(cfg.process), (2,), 1000, seed=0)
    assert eight_gaussians_scores(z)["distinct"] < 0.1  # measured 0.008 (an earlier probe: about 0.01)


@pytest.mark.slow
def test_kale_with_its_own_defaults_spreads_over_every_mode(tmp_path):
    """The KALE flow with its defaults (eta 0.02, injection and re-noise 0.3 sigma_t),
    switched on from the MMD preset as the README does: every mode 8-17%, >= 90% distinct points and
    the data's within-mode spread. NOT the full criteria: 'near' (share within 3 std of a centre)
    measured 0.78 against the 0.9 asked; a sweep of eta 0.01-0.05, injection 0-0.3 and re-noise
    0.05-0.3 on this network found no setting passing all (less noise: copies; more: blur).
    docs/sampling.md has the table.

    The network is trained smaller than the preset's (width 64, batch 128, 500 steps at lr 1.5e-3:
    about 9 CPU-s against 110 on one thread; the sampler settings are the preset's KALE defaults
    untouched). Measured there: near 0.74, modes 10.5-13.7%, 99% distinct, std ratio 0.90 (the
    preset's own network: near 0.78). The MMD tests above keep the preset as shipped: smaller
    networks do not reach its modes (near 0.17 at the same sizes)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = config.load("configs/eight_gaussians.toml", ["model.objective=kale", *KALE_SMALL])
        assert (cfg.sample.sampler, cfg.sample.step_size) == ("kale", 0.02)
        assert (cfg.sample.inject, cfg.sample.renoise) == (0.3, 0.3)
        data = load_dataset(cfg.data, cfg.seed)
        state = train(cfg, data.train, tmp_path / "kale", progress=False)
    finally:
        torch.set_num_threads(old)
    z = sample(state.ema.module, cfg, state.stats, build_process(cfg.process), (2,), 1000, seed=0)
    r = eight_gaussians_scores(z)
    assert 0.08 <= r["min_mode"] and r["max_mode"] <= 0.17, r
    assert r["distinct"] >= 0.9 and 0.6 <= r["std_ratio"] <= 1.5, r
    assert r["near"] >= 0.7, r  # measured 0.78; the criterion is 0.9 (see the docstring)
