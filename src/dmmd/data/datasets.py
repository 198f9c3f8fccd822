"""Data sets as tensors scaled for the model, with a fixed train/test split.

Users' own vectors or images come from a .npy/.npz file (data.name = "file", data.root = path;
array "x" in an .npz), mapped to model scale by data.scale (dmmd.data.scaling). The embedded default is scikit-learn's handwritten digits (1797 images of 8x8, pixel values
0..16, shipped inside the scikit-learn wheel: no download). Pixels are scaled to [-1, 1] here,
in the data layer; the split is a fixed permutation (seed 0): 1500 train, 297 test.
MNIST and Fashion-MNIST use their own 60000/10000 train/test files (pixels 0..255 -> [-1, 1], with
their labels); Fashion-MNIST is read from data.root or, by default, from FASHION_MNIST_ROOT, where
Debian's package dataset-fashion-mnist installs it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dmmd.config import DataConfig
from dmmd.data.arrays import check_array_file, check_float32_range
from dmmd.data.files import (
    DataError,
    ImageFolder,
    MissingFileError,
    check_label_count,
    load_cifar10,
    load_cifar10_labels,
    load_mnist,
    load_mnist_labels,
    load_mnist_with_labels,
)
from dmmd.data.scaling import choose_scale, parse_range
from dmmd.data.toys import TOYS

__all__ = ["DataError", "Dataset", "load_dataset", "load_digits", "load_toy", "read_array"]

DIGITS_TRAIN = 1500
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian: apt-get install dataset-fashion-mnist


@dataclass
class Dataset:
    train: Tensor  # (N, *shape), float32, model scale
    test: Tensor
    kind: str  # "points" (2-D or vectors) or "image"
    name: str
    labels_train: Tensor | None = None
    labels_test: Tensor | None = None
    stream: object | None = None  # folder data: the full training set, read from disk per batch
    note: str = ""  # array files: what data.scale detected and did, one line for the user
    scale: str = "none"  # array files: the data.scale the data was mapped with ("none" or "LO,HI")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def read_array(path: str | Path, key: str | None = None, what: str = "array file") -> Tensor:
    """A float32 tensor from .npy or .npz (array `key`, or the only array), without pickles."""
    array = read_numeric(path, key, what)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return check_finite(x, f"{path}")


def read_numeric(path: str | Path, key: str | None = None, what: str = "array file") -> np.ndarray:
    """The numeric array (N, D) or (N, C, H, W) of a .npy or .npz file, in its own dtype, without pickles."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} does not exist")
    check_array_file(path, key)  # headers claiming more than the file or memory holds; complex dtypes
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npy/.npz file ({' '.join(str(err).split())[:120]})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if key is None and len(names) == 1:
                key = names[0]
            if key not in names:
                raise DataError(f"{path}: expected an array named {key or 'x'!r}, found {names or 'no arrays'}")
            try:
                array = loaded[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                raise DataError(f"{path}: array {key!r} is unreadable (truncated?): {err}") from None
    else:
        array = loaded
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: expected a numeric array, found dtype {array.dtype}")
    if array.ndim not in (2, 4):
        raise DataError(f"{path}: expected shape (N, D) or (N, C, H, W), found {array.shape}")
    check_float32_range(array, str(path))
    return array


def load_array_dataset(path: str | Path, scale: str = "none") -> Dataset:
    """A user's own vectors or images from .npy/.npz, mapped to model scale by `scale` ("auto":
    chosen from the values, see dmmd.data.scaling; the Dataset's note says what was done and its
    `scale` what to record), split 90/10 with seed 0."""
    array = read_numeric(path, "x" if str(path).endswith(".npz") else None, "data file")
    x = check_finite(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), f"{path}")
    note = ""
    if scale == "auto":
        scale, note = choose_scale(array)
    rng = parse_range(scale)
    if rng is not None:  # in place (x is a new float32 array, or the file's own float32 one, no longer needed)
        x = x.sub_(rng[0]).mul_(2.0 / (rng[1] - rng[0])).sub_(1.0)
    if len(x) < 4:
        raise DataError(f"{path}: expected at least 4 rows, found {len(x)}")
    perm = torch.from_numpy(np.random.RandomState(0).permutation(len(x)))
    n_test = max(2, len(x) // 10)
    x = x[perm]
    y = read_labels(path, len(x))  # an integer array "y" beside "x" (class-conditional models)
    y = y[perm] if y is not None else None
    return Dataset(x[n_test:], x[:n_test], "points" if x.ndim == 2 else "image", "file",
                   None if y is None else y[n_test:], None if y is None else y[:n_test], note=note, scale=scale)


def read_labels(path: str | Path, num_rows: int) -> Tensor | None:
    """The integer class labels (N,) stored as array "y" of an .npz data file, or None (no "y")."""
    if not str(path).endswith(".npz"):
        return None
    with np.load(path, allow_pickle=False) as loaded:
        if "y" not in loaded.files:
            return None
        try:
            y = loaded["y"]
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{path}: array 'y' is unreadable: {err}") from None
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)) or y.ndim != 1:
        raise DataError(f"{path}: labels 'y' must be a 1-D integer array, found {y.dtype} of shape {y.shape}")
    if len(y) != num_rows:
        raise DataError(f"{path}: {num_rows} rows in 'x' but {len(y)} labels in 'y'")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: labels 'y' must be >= 0, found {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


def check_finite(x: Tensor, what: str) -> Tensor:
    if x.numel() == 0:
        raise DataError(f"{what} is empty")
    if not torch.isfinite(x).all():
        raise DataError(f"{what} contains NaN or Inf values")
    return x


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32)) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.from_numpy(np.random.RandomState(0).permutation(len(images)))
    images, labels = images[perm].unsqueeze(1), labels[perm]  # (N, 1, 8, 8)
    return Dataset(images[:DIGITS_TRAIN], images[DIGITS_TRAIN:], "image", "digits",
                   labels[:DIGITS_TRAIN], labels[DIGITS_TRAIN:])


def load_toy(name: str, num_points: int, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    train = TOYS[name](num_points, gen)
    test = TOYS[name](max(2000, num_points // 10), gen)
    return Dataset(train, test, "points", name)


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    """The data set a config names, scaled and split, on the CPU. For an array file, data.scale =
    "auto" is resolved here, in cfg, to the map it chose (the run's config records it, and samples
    are mapped back with it)."""
    if cfg.name == "digits":
        data = load_digits()
    elif cfg.name in TOYS:
        data = load_toy(cfg.name, cfg.num_points, seed)
    else:
        data = _load_files(cfg)
    check_finite(data.train, f"training data {cfg.name!r}")
    return data


def load_folder_dataset(cfg: DataConfig) -> Dataset:
    """A folder of images streamed from disk for training; a fixed subset of up to data.in_memory
    images (every k-th file) is held in memory for calibration and diagnostics, and the last 10% of
    that subset (by position) serves as the held-out split."""

    folder = ImageFolder(cfg.root, cfg.image_size, cfg.crop, crop=cfg.crop_size, flip=cfg.flip)
    stride = max(1, len(folder) // cfg.in_memory)
    subset = torch.stack([folder[i] for i in range(0, len(folder), stride)][: cfg.in_memory])
    n_test = max(2, len(subset) // 10)
    return Dataset(subset[:-n_test], subset[-n_test:], "image", "folder", stream=folder)


def load_mnist_dataset(root: str, name: str = "mnist") -> Dataset:
    """MNIST-format images with labels; the labels are None when the label files are absent."""
    train, test = load_mnist(root, "train"), load_mnist(root, "test")
    try:
        labels = load_mnist_labels(root, "train"), load_mnist_labels(root, "test")
    except MissingFileError:
        return Dataset(train, test, "image", name)
    return Dataset(train, test, "image", name, check_label_count(root, "train", train, labels[0]),
                   check_label_count(root, "test", test, labels[1]))


def load_fashion_mnist_dataset(root: str = "") -> Dataset:
    """Fashion-MNIST, images and labels, from `root` (default FASHION_MNIST_ROOT)."""
    root = root or FASHION_MNIST_ROOT
    try:
        (train, labels_train), (test, labels_test) = (load_mnist_with_labels(root, s) for s in ("train", "test"))
    except MissingFileError as err:
        raise DataError(f"Fashion-MNIST not found in {root}: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) "
                        f"or set data.root to a folder with its IDX files ({err})") from None
    return Dataset(train, test, "image", "fashion_mnist", labels_train, labels_test)


def _load_files(cfg: DataConfig) -> Dataset:
    if cfg.name == "fashion_mnist":
        return load_fashion_mnist_dataset(cfg.root)
    if not cfg.root:
        raise DataError(f"data set {cfg.name!r} is read from local files: set data.root to their folder "
                        "(for data.name = 'file': the .npy/.npz file)")
    if cfg.name == "file":
        data = load_array_dataset(cfg.root, cfg.scale)
        cfg.scale = data.scale
        return data
    if cfg.name == "folder":
        return load_folder_dataset(cfg)
    if cfg.name == "mnist":
        return load_mnist_dataset(cfg.root)
    if cfg.name == "cifar10":
        return Dataset(load_cifar10(cfg.root, "train"), load_cifar10(cfg.root, "test"), "image", "cifar10",
                       load_cifar10_labels(cfg.root, "train"), load_cifar10_labels(cfg.root, "test"))
    raise DataError(f"data set {cfg.name!r} streams from a folder; in-memory loading supports digits, toys, mnist, "
                    "fashion_mnist, cifar10")
