"""--nfe for every method: the DMMD split and step-size rule, evaluation counts, x0 clipping by data."""

import pytest

from dmmd import config
from dmmd.methods.sample import clip_range, dmmd_split, nfe, settings_for_nfe


@pytest.mark.parametrize("n", [1, 3, 7, 10, 20, 30, 37, 50, 100, 250])
def test_dmmd_rule_spends_the_nfe_and_scales_step_and_renoise(n):
    cfg = config.load(None, ["sample.num_levels=10", "sample.steps_per_level=10", "sample.step_size=0.2",
                             "sample.step_size_power=0.7", "sample.renoise=0.3"])
    settings_for_nfe(cfg, n)
    s = cfg.sample
    assert s.num_levels * s.steps_per_level == n == nfe(cfg)
    assert (s.num_levels, s.steps_per_level) == dmmd_split(n)
    assert (s.num_levels, s.steps_per_level) == ((n, 1) if n <= 20 or n % 10 else (10, n // 10))
    # eta N_s^0.7 T and the re-noise variance per level times T are invariant
    assert s.step_size * s.steps_per_level ** 0.7 * s.num_levels == pytest.approx(0.2 * 10 ** 0.7 * 10, rel=1e-12)
    assert s.renoise ** 2 * s.num_levels == pytest.approx(0.3 ** 2 * 10, rel=1e-12)


def test_dmmd_rule_reproduces_the_measured_tuning():
    """Per-NFE tuning on digits (benchmarks/results/nfe_rule.json) chose eta = 1 at 10 x 1, 0.5 at
    20 x 1 and 0.3 at 10 x 5; 0.2-0.3 at 10 x 10."""
    for n, split, eta in ((10, (10, 1), 1.0), (20, (20, 1), 0.5), (50, (10, 5), 0.3), (100, (10, 10), 0.2)):
        cfg = config.load(None, ["sample.step_size=0.2", "sample.steps_per_level=10", "sample.num_levels=10"])
        settings_for_nfe(cfg, n)
        assert (cfg.sample.num_levels, cfg.sample.steps_per_level) == split
        assert cfg.sample.step_size == pytest.approx(eta, rel=0.1)


def test_rule_keeps_keys_the_user_set():
    cfg = config.load(None, ["sample.step_size=0.05", "sample.renoise=0.2"])
    settings_for_nfe(cfg, 20, keep={"sample.step_size", "sample.renoise"})
    assert (cfg.sample.step_size, cfg.sample.renoise) == (0.05, 0.2)
    assert cfg.sample.num_levels * cfg.sample.steps_per_level == 20
    cfg = config.load(None, ["sample.num_levels=4"])
    settings_for_nfe(cfg, 20, keep={"sample.num_levels"})
    assert (cfg.sample.num_levels, cfg.sample.steps_per_level) == (4, 5)


@pytest.mark.parametrize("split", [(20, 5), (50, 2), (100, 1), (5, 20)])
def test_rule_takes_a_given_split(split):
    """An explicit (T, N_s) replaces dmmd_split's, and the step and re-noise follow the same rule."""
    cfg = config.load(None, ["sample.num_levels=10", "sample.steps_per_level=10", "sample.step_size=0.2",
                             "sample.renoise=0.3"])
    settings_for_nfe(cfg, 100, split=split)
    s = cfg.sample
    assert (s.num_levels, s.steps_per_level) == split
    assert s.step_size * s.steps_per_level ** 0.7 * s.num_levels == pytest.approx(0.2 * 10 ** 0.7 * 10, rel=1e-12)
    assert s.renoise ** 2 * s.num_levels == pytest.approx(0.3 ** 2 * 10, rel=1e-12)


@pytest.mark.parametrize("method, sampler, n, used", [("ddpm", "ddpm", 10, 10), ("ddpm", "ddim", 7, 7),
                                                      ("fm", "euler", 9, 9), ("fm", "heun", 10, 9),
                                                      ("fm", "heun", 9, 9), ("fm", "heun", 1, 1)])
def test_baselines_take_nfe_as_steps(method, sampler, n, used):
    cfg = config.load(None, [f"method={method}", f"sample.sampler={sampler}"])
    settings_for_nfe(cfg, n)
    assert cfg.sample.num_steps == n and nfe(cfg) == used


@pytest.mark.parametrize("name, mode, expected", [("digits", "auto", 1.0), ("fashion_mnist", "auto", 1.0),
                                                  ("eight_gaussians", "auto", None), ("file", "auto", None),
                                                  ("file", "on", 1.0), ("digits", "off", None)])
def test_clip_follows_the_data_range(name, mode, expected):
    cfg = config.load(None, ["method=ddpm", f"data.name={name}", f"sample.clip_x0={mode}"])
    assert clip_range(cfg) == expected


def test_method_picks_its_sampler_and_kale_its_flow_defaults(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[sample]\nsampler = "approx"\n')
    assert config.load(preset, ["method=fm"]).sample.sampler == "euler"
    assert config.load(preset, ["method=ddpm"]).sample.sampler == "ddpm"
    with pytest.raises(config.ConfigError, match="samples with"):
        config.load(None, ["method=fm", "sample.sampler=approx"])
    kale = config.load(None, ["model.objective=kale"])
    assert (kale.sample.sampler, kale.sample.step_size, kale.sample.inject, kale.sample.renoise) == ("kale", 0.02, 0.3, 0.3)
    assert config.load(None, ["model.objective=kale", "sample.step_size=0.01"]).sample.step_size == 0.01
    # a DMMD preset's flow settings give way to KALE's; a KALE preset's own settings are kept
    mmd_preset = tmp_path / "mmd.toml"
    mmd_preset.write_text('[sample]\nstep_size = 0.1\ninject = 0.0\n')
    assert config.load(mmd_preset, ["model.objective=kale"]).sample.step_size == 0.02
    kale_preset = tmp_path / "kale.toml"
    kale_preset.write_text('[model]\nobjective = "kale"\n[sample]\nsampler = "kale"\nstep_size = 0.01\n')
    assert config.load(kale_preset).sample.step_size == 0.01


@pytest.mark.parametrize("levels, n, split", [(10, 20, (10, 2)), (10, 100, (10, 10)), (10, 10, (10, 1)),
                                              (10, 7, (7, 1)), (10, 25, (25, 1)), (5, 20, (5, 4)),
                                              (0, 20, (20, 1)), (0, 100, (10, 10))])
def test_nfe_levels_picks_the_split(levels, n, split):
    """sample.nfe_levels = k: k levels of NFE / k steps when k divides NFE, else the default rule."""
    assert dmmd_split(n, levels) == split
    cfg = config.load(None, [f"sample.nfe_levels={levels}"])
    settings_for_nfe(cfg, n)
    assert (cfg.sample.num_levels, cfg.sample.steps_per_level) == split and nfe(cfg) == n


def test_nfe_levels_must_not_be_negative():
    with pytest.raises(config.ConfigError, match="nfe_levels"):
        config.load(None, ["sample.nfe_levels=-1"])
