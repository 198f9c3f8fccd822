import torch

from dmmd.config import DataConfig
from dmmd.data.datasets import DIGITS_TRAIN, load_dataset
from dmmd.data.scaling import to_data_space
from dmmd.data.toys import TOYS, eight_gaussians, eight_gaussians_centres


def test_digits_split_and_scale():
    data = load_dataset(DataConfig(name="digits"))
    assert data.train.shape == (DIGITS_TRAIN, 1, 8, 8) and data.test.shape == (1797 - DIGITS_TRAIN, 1, 8, 8)
    assert data.train.min() == -1.0 and data.train.max() == 1.0
    again = load_dataset(DataConfig(name="digits"))
    assert torch.equal(data.train, again.train) and torch.equal(data.labels_test, again.labels_test)
    raw = to_data_space("digits", data.train)
    assert torch.equal(raw, raw.round()) and raw.min() == 0 and raw.max() == 16
    assert set(data.labels_train.tolist()) == set(range(10))


def test_toys_are_seeded_and_shaped():
    for name in TOYS:
        a = load_dataset(DataConfig(name=name, num_points=300), seed=3)
        b = load_dataset(DataConfig(name=name, num_points=300), seed=3)
        assert a.train.shape == (300, 2) and torch.equal(a.train, b.train) and torch.isfinite(a.train).all()


def test_eight_gaussians_geometry():
    x = eight_gaussians(40000, torch.Generator().manual_seed(0))
    c = eight_gaussians_centres()
    d, idx = torch.cdist(x, c).min(1)
    assert (torch.bincount(idx, minlength=8).float() / len(x) - 0.125).abs().max() < 0.01
    assert abs((x - c[idx]).std().item() - 0.05) < 0.002
    assert torch.allclose(c.norm(dim=1), torch.full((8,), 2.0))


def test_checkerboard_on_dark_squares():
    x = load_dataset(DataConfig(name="checkerboard", num_points=5000)).train
    assert x.abs().max() <= 2.0
    col, row = torch.floor(x[:, 0] + 2).long(), torch.floor(x[:, 1] + 2).long()
    parity = (col + row) % 2
    assert (parity == parity[0]).all()
