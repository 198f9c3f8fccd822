"""Fashion-MNIST: the real files of Debian's dataset-fashion-mnist (.ci/run installs it), IDX label
parsing on files written into tmp_path, and MNIST labels when their files are present."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from dmmd.config import DataConfig
from dmmd.data.datasets import FASHION_MNIST_ROOT, load_dataset
from dmmd.data.files import DataError, load_fashion_mnist, load_mnist, load_mnist_labels
from dmmd.data.scaling import to_data_space


def _idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 0x803, n, rows, cols) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray, magic: int = 0x801) -> bytes:
    return struct.pack(">II", magic, len(labels)) + labels.astype(np.uint8).tobytes()


def _write_mnist(folder, n_train: int = 6, n_test: int = 4, labels: bool = True, gz: bool = False):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
        blobs = {f"{split}-images-idx3-ubyte": _idx_images(images)}
        if labels:
            blobs[f"{split}-labels-idx1-ubyte"] = _idx_labels(y)
        for name, blob in blobs.items():
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
        made[split] = (images, y)
    return made


# ------------------------------------------------------------------------------- real files
@pytest.fixture(scope="module")
def fashion():
    return load_dataset(DataConfig(name="fashion_mnist"))


def test_real_files_shapes_ranges_and_labels(fashion):
    data = fashion
    assert data.name == "fashion_mnist" and data.kind == "image"
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert data.train.dtype == torch.float32 and data.test.dtype == torch.float32
    for x in (data.train, data.test):
        assert float(x.min()) == -1.0 and float(x.max()) == 1.0
        # pixels are k / 127.5 - 1 for integers k: back in data space they are whole numbers 0..255
        pixels = to_data_space("fashion_mnist", x[:500].double())
        assert torch.allclose(pixels, pixels.round(), atol=1e-4)
    assert data.labels_train.dtype == torch.int64 and data.labels_train.shape == (60000,)
    assert torch.bincount(data.labels_train).tolist() == [6000] * 10
    assert torch.bincount(data.labels_test).tolist() == [1000] * 10


def test_default_root_and_explicit_root_agree(fashion):
    data = fashion
    images, labels = load_fashion_mnist(FASHION_MNIST_ROOT, "test")
    assert torch.equal(images, data.test) and torch.equal(labels, data.labels_test)


def test_cached_arrays_cannot_be_corrupted_by_a_caller():
    first = load_mnist(FASHION_MNIST_ROOT, "test")
    expected = first.clone()
    first.fill_(0.5)
    load_mnist_labels(FASHION_MNIST_ROOT, "test").fill_(3)
    assert torch.equal(load_mnist(FASHION_MNIST_ROOT, "test"), expected)
    assert torch.bincount(load_mnist_labels(FASHION_MNIST_ROOT, "test")).tolist() == [1000] * 10


def test_missing_root_is_one_line_naming_apt_get(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path / "nowhere")))
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message
    assert str(tmp_path / "nowhere") in message


def test_missing_label_file_names_apt_get(tmp_path):
    _write_mnist(tmp_path, labels=False)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*train-labels-idx1-ubyte"):
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))


def test_data_root_overrides_the_default(tmp_path):
    made = _write_mnist(tmp_path, gz=True)
    data = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert data.train.shape == (6, 1, 28, 28) and data.test.shape == (4, 1, 28, 28)
    assert torch.equal(data.test[:, 0], torch.from_numpy(made["t10k"][0].astype(np.float32)) / 127.5 - 1)
    assert data.labels_train.tolist() == made["train"][1].tolist()
    assert data.labels_test.tolist() == made["t10k"][1].tolist()


# ---------------------------------------------------------------------------- IDX labels
def test_labels_plain_and_gzipped_round_trip(tmp_path):
    labels = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_labels(labels))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_labels(labels[::-1].copy())))
    y = load_mnist_labels(tmp_path)
    assert y.dtype == torch.int64 and y.tolist() == [0, 9, 3, 3, 7]
    assert load_mnist_labels(tmp_path, "test").tolist() == [7, 3, 3, 9, 0]


@pytest.mark.parametrize("blob, pattern", [
    (_idx_labels(np.arange(10)), None),  # control: this one loads
    (_idx_labels(np.arange(10))[:-3], r"truncated: header says 10 labels = 18 bytes, found 15"),
    (_idx_labels(np.arange(10)) + b"\x00", r"trailing bytes: header says 10 labels = 18 bytes, found 19"),
    (_idx_labels(np.arange(10))[:6], r"truncated IDX header: expected at least 8 bytes, found 6"),
    (_idx_labels(np.arange(10), magic=0x803), r"magic.*expected 0x00000801.*found 0x00000803"),
    (_idx_labels(np.arange(0)), r"expected N>0 labels"),
    (_idx_labels(np.array([1, 10, 2])), r"expected labels 0\.\.9, found 10"),
])
def test_bad_label_files_are_one_line_errors_naming_the_file(tmp_path, blob, pattern):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(blob)
    if pattern is None:
        assert load_mnist_labels(tmp_path).tolist() == list(range(10))
        return
    with pytest.raises(DataError, match=pattern) as err:
        load_mnist_labels(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_gzipped_label_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_labels(np.arange(10)))[:-10])
    with pytest.raises(DataError, match="gzip") as err:
        load_mnist_labels(tmp_path)
    assert str(path) in str(err.value)


def test_label_count_must_match_image_count(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_labels(np.arange(5)))  # 6 images
    with pytest.raises(DataError, match=r"train split has 6 images but 5 labels"):
        load_fashion_mnist(tmp_path, "train")
    mnist = tmp_path / "mnist"
    _write_mnist(mnist)
    (mnist / "t10k-labels-idx1-ubyte").write_bytes(_idx_labels(np.arange(5)))  # 4 images
    with pytest.raises(DataError, match=r"test split has 4 images but 5 labels"):
        load_dataset(DataConfig(name="mnist", root=str(mnist)))


def test_mnist_labels_loaded_when_present(tmp_path):
    made = _write_mnist(tmp_path / "with")
    data = load_dataset(DataConfig(name="mnist", root=str(tmp_path / "with")))
    assert data.labels_train.tolist() == made["train"][1].tolist()
    assert data.labels_test.tolist() == made["t10k"][1].tolist()
    _write_mnist(tmp_path / "without", labels=False)
    data = load_dataset(DataConfig(name="mnist", root=str(tmp_path / "without")))
    assert data.train.shape == (6, 1, 28, 28) and data.labels_train is None and data.labels_test is None


def test_mnist_still_needs_a_root():
    with pytest.raises(DataError, match="set data.root"):
        load_dataset(DataConfig(name="mnist"))
