import pytest

from dmmd import config
from dmmd.config import ConfigError


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = config.Config()
    config.validate(cfg)
    path = tmp_path / "c.json"
    path.write_text(config.to_json(cfg))
    assert config.load(path) == cfg


def test_presets_load():
    from pathlib import Path

    presets = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.toml"))
    assert {p.stem for p in presets} >= {"digits", "eight_gaussians", "two_moons", "checkerboard", "swiss_roll"}
    for p in presets:
        config.load(p)


def test_overrides_are_typed():
    cfg = config.load(None, ["train.steps=5", "train.lr=1e-3", "sample.leave_one_out=true",
                             "model.channel_mults=1,2", "data.name=two_moons"])
    assert cfg.train.steps == 5 and cfg.train.lr == 1e-3 and cfg.sample.leave_one_out is True
    assert cfg.model.channel_mults == [1, 2] and cfg.data.name == "two_moons"


@pytest.mark.parametrize("item,match", [
    ("train.stepz=5", "unknown config key 'train.stepz'; valid keys: .*train.steps"),
    ("train.steps=five", "train.steps must be of type int"),
    ("train.steps=1.5", "train.steps must be of type int"),
    ("train.steps=0", "train.steps must be > 0"),
    ("sample.step_size=-0.1", "sample.step_size must be > 0"),
    ("sample.num_levels=0", "sample.num_levels must be > 0"),
    ("process.t_min=1.0", "t_min < process.t_max"),
    ("model.kernel=cosine", "model.kernel must be one of"),
    ("train.gp_lazy=often", "train.gp_lazy must be one of"),
    ("sample.leave_one_out=maybe", "must be of type bool"),
    ("train.ema_decay=1.5", r"train.ema_decay must be in \[0, 1\)"),
    ("steps", "--set expects key=value"),
])
def test_bad_overrides(item, match):
    with pytest.raises(ConfigError, match=match):
        config.load(None, [item])


def test_approx_needs_linear_kernel():
    with pytest.raises(ConfigError, match="approx.*linear"):
        config.load(None, ["model.kernel=rbf", "sample.sampler=approx"])


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[trian]\nsteps = 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'trian.steps'"):
        config.load(unknown)
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(tmp_path / "missing.toml")


def test_runs_written_before_calibration_rows_calibrate_on_every_row():
    from dmmd.config import Config, stored_run

    assert stored_run(Config(), {"sample": {"num_levels": 10}}).sample.calibration_rows == 0
    assert stored_run(Config(), {"sample": {"calibration_rows": 500}}).sample.calibration_rows == Config().sample.calibration_rows
    assert stored_run(Config()).sample.calibration_rows == 10000  # a config file: the default
