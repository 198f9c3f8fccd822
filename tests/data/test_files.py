"""File loaders: MNIST IDX, CIFAR-10 pickles, image folders, loaders and checks.

Every file is written by the test into tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from dmmd.data.files import (
    DataError,
    ImageFolder,
    celeba64,
    celebahq128,
    check_images,
    load_cifar10,
    load_mnist,
    lsun_church64,
    make_loader,
)

# ---------------------------------------------------------------------------------- MNIST


def _idx_bytes(images: np.ndarray, magic: int = 0x803) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


def _digits(n: int, seed: int = 0) -> np.ndarray:
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images


def _expected(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32)) / 127.5 - 1.0


def test_mnist_plain_round_trip(tmp_path):
    images = _digits(5)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    x = load_mnist(tmp_path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 0, 1] == 1.0
    torch.testing.assert_close(x[:, 0], _expected(images))


def test_mnist_gzipped_in_raw_folder(tmp_path):
    images = _digits(3, seed=1)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    x = load_mnist(tmp_path, split="test")
    assert x.shape == (3, 1, 28, 28)
    torch.testing.assert_close(x[:, 0], _expected(images))


def test_mnist_truncated_names_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(_digits(4))[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        load_mnist(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_mnist_truncated_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(_digits(4)))[:-20])
    with pytest.raises(DataError, match="gzip") as err:
        load_mnist(tmp_path)
    assert str(path) in str(err.value)


def test_mnist_wrong_magic(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(_digits(2), magic=0x801))
    with pytest.raises(DataError, match=r"magic.*expected 0x00000803.*found 0x00000801"):
        load_mnist(tmp_path)


def test_mnist_missing_file_and_bad_split(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="split"):
        load_mnist(tmp_path, split="valid")


# ------------------------------------------------------------------------------- CIFAR-10


class _Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as the original CIFAR batches were written."""

    def save_bytes(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def _batch(n: int, seed: int) -> tuple[dict, np.ndarray]:
    data = np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {b"batch_label": b"batch", b"labels": list(range(n)), b"data": data}, data


def _write_batch(path, batch: dict, protocol: int = 4) -> None:
    if protocol == "py2":
        with open(path, "wb") as f:
            _Py2StylePickler(f, protocol=2).dump(batch)
        legacy = path.read_bytes().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        path.write_bytes(legacy)  # the numpy 1.x module name real batches carry
    else:
        path.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", ["py2", 4, 5])
def test_cifar_round_trip(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    arrays = []
    for i in range(1, 6):
        batch, data = _batch(2, seed=i)
        _write_batch(folder / f"data_batch_{i}", batch, protocol)
        arrays.append(data)
    test_batch, test_data = _batch(3, seed=9)
    _write_batch(folder / "test_batch", test_batch, protocol)

    x = load_cifar10(tmp_path)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    expected = _expected(np.concatenate(arrays).reshape(-1, 3, 32, 32))
    torch.testing.assert_close(x, expected)
    # channel layout: the first 1024 values of a row are the red plane, row-major
    assert x[0, 0, 0, 1] == expected.reshape(10, -1)[0, 1] and x[0, 1, 0, 0] == expected.reshape(10, -1)[0, 1024]
    torch.testing.assert_close(load_cifar10(folder, "test"), _expected(test_data.reshape(-1, 3, 32, 32)))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", ["py2", 4])
def test_cifar_malicious_pickle_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "test_batch"
    _write_batch(path, {b"data": _Evil(marker)}, protocol)
    with pytest.raises(DataError, match="refused pickle global .*system") as err:
        load_cifar10(tmp_path, "test")
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_cifar_truncated_batch(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(_batch(4, seed=0)[0])[:5000])
    with pytest.raises(DataError, match="unreadable pickle") as err:
        load_cifar10(tmp_path, "test")
    assert str(path) in str(err.value)


def test_cifar_bad_layout_and_missing_batch(tmp_path):
    _write_batch(tmp_path / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"expected data uint8 \(N>0, 3072\), found uint8 \(2, 100\)"):
        load_cifar10(tmp_path, "test")
    for i in (1, 2):
        _write_batch(tmp_path / f"data_batch_{i}", _batch(1, seed=i)[0])
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path, "train")


# ---------------------------------------------------------------------------- image folder


def _gradient(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image that is not mirror-symmetric (horizontal ramp plus noise)."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = np.random.default_rng(seed).integers(0, 40, size=(height, width, 3))
    return Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    _gradient(178, 218, 0).save(root / "a_celeba.png")
    _gradient(300, 200, 1).save(root / "b_wide.PNG")
    _gradient(218, 178, 2).convert("L").save(root / "sub" / "c_gray.jpg")
    _gradient(200, 260, 3).convert("RGBA").save(root / "sub" / "d_rgba.webp")
    (root / "notes.txt").write_text("not an image")
    (root / "._a_celeba.png").write_bytes(b"AppleDouble junk")  # hidden: skipped
    return root


def test_folder_lists_sorted_recursive(folder):
    ds = ImageFolder(folder, 16)
    names = [os.path.relpath(f, folder) for f in ds.files]
    assert names == ["a_celeba.png", "b_wide.PNG", os.path.join("sub", "c_gray.jpg"),
                     os.path.join("sub", "d_rgba.webp")]


@pytest.mark.parametrize("preset, size", [(celeba64, 64), (lsun_church64, 64), (celebahq128, 128)])
def test_presets_shapes_and_range(folder, preset, size):
    ds = preset(folder)
    assert len(ds) == 4
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0


def test_solid_colour_maps_to_unit_range(tmp_path):
    Image.new("RGB", (40, 30), (255, 0, 128)).save(tmp_path / "x.png")
    x = ImageFolder(tmp_path, 8)[0]
    assert torch.all(x[0] == 1.0) and torch.all(x[1] == -1.0)
    torch.testing.assert_close(x[2], torch.full((8, 8), 128 / 127.5 - 1.0))


def test_center_crop_resize_is_the_celeba_crop(tmp_path):
    img = _gradient(178, 218)
    img.save(tmp_path / "face.png")
    x = ImageFolder(tmp_path, 140, "center_crop_resize", crop=140)[0]  # resize to the same size: a pure crop
    crop = np.asarray(img)[39:179, 19:159].transpose(2, 0, 1)
    torch.testing.assert_close(x, _expected(crop))


def test_flip_reproducible_and_mirrors(folder):
    plain = ImageFolder(folder, 16)
    a, b = ImageFolder(folder, 16, flip=True, seed=3), ImageFolder(folder, 16, flip=True, seed=3)
    pattern = []
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(a)):
            xa, xb, xp = a[i], b[i], plain[i]
            assert torch.equal(xa, xb)
            flipped = torch.equal(xa, xp.flip(-1))
            assert flipped or torch.equal(xa, xp)
            pattern.append(flipped)
    assert 0 < sum(pattern) < len(pattern)  # 16 fair coins: all equal has probability 2**-15
    assert torch.equal(a[-1], a[len(a) - 1])


def test_corrupt_jpeg_names_file(tmp_path):
    _gradient(50, 50).save(tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    ds = ImageFolder(tmp_path, 16)  # listing does not decode
    with pytest.raises(DataError, match="cannot decode") as err:
        ds[ds.files.index(str(bad))]
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_truncated_png_names_file(tmp_path):
    path = tmp_path / "cut.png"
    _gradient(64, 64).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="cut.png"):
        ImageFolder(tmp_path, 16)[0]


def test_empty_missing_and_bad_folders(tmp_path):
    with pytest.raises(DataError, match="found none"):
        ImageFolder(tmp_path, 16)
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="found none"):
        ImageFolder(tmp_path, 16)
    with pytest.raises(DataError, match="found nothing"):
        ImageFolder(tmp_path / "absent", 16)
    with pytest.raises(DataError, match="mode"):
        ImageFolder(tmp_path, 16, mode="stretch")


def test_image_smaller_than_crop(tmp_path):
    _gradient(100, 120).save(tmp_path / "small.png")
    with pytest.raises(DataError, match=r"small.png: expected an image at least 140x140 .* found 100x120"):
        celeba64(tmp_path)[0]


# ------------------------------------------------------------------------ loaders, checks


def test_make_loader_workers_stream_batches(folder):
    ds = ImageFolder(folder, 16, flip=True)
    batches = list(make_loader(ds, batch_size=2, num_workers=2, shuffle=True, seed=7))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 16, 16)] * 2
    again = list(make_loader(ds, batch_size=2, num_workers=2, shuffle=True, seed=7))
    assert all(torch.equal(u, v) for u, v in zip(batches, again))


def test_make_loader_in_memory_and_bad_arguments():
    ds = TensorDataset(torch.zeros(5, 1, 4, 4))
    batches = list(make_loader(ds, batch_size=2, num_workers=0, shuffle=False, seed=0))
    assert [tuple(b[0].shape) for b in batches] == [(2, 1, 4, 4)] * 2
    kept = list(make_loader(ds, batch_size=2, num_workers=0, shuffle=False, seed=0, drop_last=False))
    assert tuple(kept[-1][0].shape) == (1, 1, 4, 4)
    with pytest.raises(DataError, match="fewer than batch_size 8"):
        make_loader(ds, batch_size=8, num_workers=0, shuffle=True, seed=0)
    with pytest.raises(DataError, match="shuffle=False"):
        make_loader(ds, 2, 0, shuffle=True, seed=0, sampler=range(5))


def test_check_images():
    x = torch.zeros(2, 3, 8, 8)
    assert check_images(x, channels=3) is x
    cases = [(torch.zeros(3, 8, 8), None, r"expected rank 4 .* found shape \(3, 8, 8\)"),
             (torch.zeros(0, 3, 8, 8), None, "non-empty"),
             (x, 1, "expected 1 channels, found 3"),
             (torch.full((1, 1, 2, 2), float("nan")), None, "expected finite values, found 4 NaN/Inf"),
             (np.zeros((1, 1, 2, 2)), None, "expected a torch.Tensor, found ndarray")]
    for bad, channels, message in cases:
        with pytest.raises(DataError, match=message):
            check_images(bad, channels)
