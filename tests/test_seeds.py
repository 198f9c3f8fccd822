"""Seeds are what they say: the CLI and the API refuse seeds outside 0 .. 2**32 - 1 (larger ones
would wrap onto smaller ones and repeat their samples) and arguments of the wrong type."""

import shutil
from pathlib import Path

import pytest

import dmmd
from dmmd.cli import main
from dmmd.config import ConfigError

RUN = Path(__file__).parent / "fixtures" / "main_424bbc3" / "g8"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    copy = tmp_path_factory.mktemp("seeds") / "g8"
    shutil.copytree(RUN, copy)
    return dmmd.Pipeline.from_run(copy)


@pytest.mark.parametrize("seed", ["4294967296", "-1"])
def test_cli_refuses_seeds_that_would_wrap(pipe, tmp_path, capsys, seed):
    assert main(["sample", "--checkpoint", str(pipe.source), "--seed", seed, "--out", str(tmp_path / "s")]) == 2
    assert "seed must be" in capsys.readouterr().err
    assert main(["train", "--preset", "digits", "--seed", seed, "--dry-run"]) == 2


def test_the_largest_seed_differs_from_zero(pipe):
    assert not pipe.sample(4, seed=2**32 - 1).equal(pipe.sample(4, seed=0))


@pytest.mark.parametrize("kwargs, name", [({"seed": -1}, "seed must be >= 0"), ({"seed": 2**32}, "seed must be at most"),
                                          ({"seed": 1.5}, "seed must be an integer"), ({"n": 2.5}, "n must be an integer"),
                                          ({"n": "10"}, "n must be an integer"), ({"seed": True}, "seed must be an integer")])
def test_api_refuses_wrong_arguments_by_name(pipe, kwargs, name):
    with pytest.raises(ConfigError, match=name):
        pipe.sample(**{"n": 4, **kwargs})


def test_diverged_samples_are_counted_loudly(pipe, tmp_path, capsys):
    with pytest.warns(RuntimeWarning, match=r"4 of 4 samples hold NaN or Inf"):
        pipe.sample(4, step_size=1e30)
    assert main(["sample", "--checkpoint", str(pipe.source), "--num-samples", "4", "--set", "sample.step_size=1e30",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert "warning: 4 of 4 samples hold NaN or Inf values" in capsys.readouterr().err
