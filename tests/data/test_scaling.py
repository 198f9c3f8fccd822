"""A user's own array file is mapped to the model's range and back (dmmd.data.scaling): images of
uint8, [0, 1] and [0, 255] floats, and vectors in the thousands each train a short run whose
samples come back in the data's own units."""

import numpy as np
import pytest
import torch

from dmmd import config
from dmmd.cli import main
from dmmd.data.scaling import choose_scale, from_data_space, parse_range, to_data_space

TINY = ["--set", "train.steps=40", "--set", "model.width=32", "--set", "model.depth=1", "--set", "model.feature_dim=8",
        "--set", "model.time_dim=16", "--set", "train.threads=1", "--set", "sample.replay_particles=100",
        "--set", "train.checkpoint_every=40", "--set", "train.log_every=20", "--set", "train.best_by=none"]


def _images(dtype, top):
    """Blobby 8x8 images: a bright square at a random place on a dark background, values in [0, top]."""
    rng = np.random.RandomState(0)
    x = np.zeros((400, 1, 8, 8))
    for i, (r, c) in enumerate(rng.randint(0, 5, size=(400, 2))):
        x[i, 0, r:r + 4, c:c + 4] = 1.0
    return (x * top).astype(dtype)


def _vectors():
    rng = np.random.RandomState(0)
    return (5000.0 + 1000.0 * rng.randn(400, 4)).astype(np.float64)


CASES = {  # name -> (array, the data.scale auto chooses, start of the printed line)
    "uint8 images": (_images(np.uint8, 255), "0,255", "data: images of uint8 values in [0, 255]; scaled from [0, 255]"),
    "float images in [0, 1]": (_images(np.float32, 1.0), "0,1", "data: images of float32 values in [0, 1]; scaled"),
    "float images in [0, 255]": (_images(np.float32, 255.0), "0,255", "data: images of float32 values in [0, 255]"),
    "vectors in thousands": (_vectors(), None, "data: vectors with mean 4.98e+03 and standard deviation 980, far"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_auto_choice(name):
    array, scale, line = CASES[name]
    chosen, note = choose_scale(array)
    if scale is not None:
        assert chosen == scale
    else:  # standardised: [mean - std, mean + std] maps to [-1, 1]
        lo, hi = parse_range(chosen)
        assert (lo + hi) / 2 == pytest.approx(array.mean(), rel=1e-6) and (hi - lo) / 2 == pytest.approx(array.std(), rel=1e-6)
    assert note.startswith(line), note


def test_unit_vectors_and_signed_images_are_kept():
    assert choose_scale(np.random.RandomState(0).randn(50, 3))[0] == "none"
    assert choose_scale(np.random.RandomState(0).uniform(-1, 1, (5, 1, 4, 4)))[0] == "none"
    assert choose_scale(np.full((5, 3), 7.0))[0] == "none"  # constant: nothing to standardise by


def test_maps_are_inverse_affine_maps():
    """float64 reference: [LO, HI] -> [-1, 1] and back, written out independently."""
    x = torch.tensor([[-3.0, 0.0, 12.5, 40.0]], dtype=torch.float64)
    data = config.load(None, ["data.name=file", "data.root=x.npz", "data.scale=-3,40"]).data
    model = from_data_space(data, x)
    assert torch.allclose(model, 2 * (x + 3) / 43 - 1, atol=1e-12)
    assert torch.allclose(to_data_space(data, model), x, atol=1e-12)
    data.scale = "none"
    assert torch.equal(to_data_space(data, x), x) and torch.equal(to_data_space("file", x), x)


@pytest.mark.parametrize("value", ["0", "1,1", "a,b", "1,2,3", "nan,1"])
def test_bad_scale_is_refused(value):
    with pytest.raises(config.ConfigError, match="data.scale"):
        config.load(None, ["data.name=file", "data.root=x.npz", f"data.scale={value}"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_short_run_samples_come_back_in_the_data_units(tmp_path, capsys, name):
    array, _, line = CASES[name]
    np.savez(tmp_path / "mine.npz", x=array)
    run = tmp_path / "run"
    preset = ["--preset", "digits"] if array.ndim == 4 else ["--preset", "eight_gaussians"]
    assert main(["train", *preset, "--set", "data.name=file", "--set", f"data.root={tmp_path / 'mine.npz'}",
                 *TINY, "--out", str(run), "--no-progress"]) == 0
    assert line in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "200", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    samples = np.load(tmp_path / "s" / "samples.npz")["samples"]
    lo, hi, spread = float(array.min()), float(array.max()), float(array.std())
    assert lo - spread < np.median(samples) < hi + spread  # in the data's units: not in model scale
    assert 0.3 < samples.std() / spread < 3.0, (samples.std(), spread)


def test_a_run_made_before_data_scale_keeps_its_values(tmp_path):
    """A stored run config without data.scale (written before it existed) used the file as it is."""
    old = config.from_dict({"data": {"name": "file", "root": "x.npz"}})
    assert old.data.scale == "auto" and config.stored_run(old).data.scale == "none"
    new = config.from_dict({"data": {"name": "file", "root": "x.npz", "scale": "0,255"}})
    assert config.stored_run(new).data.scale == "0,255"
    assert config.stored_run(config.from_dict({"data": {"name": "digits"}})).data.scale == "auto"
