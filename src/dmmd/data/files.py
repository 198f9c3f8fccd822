"""Loaders for data-set files a user already has on disk (nothing is downloaded).

MNIST and Fashion-MNIST (IDX files, with their labels) and CIFAR-10 (python pickle batches) load
into memory as float32 tensors in [-1, 1]. Folders of images (CelebA, LSUN, CelebA-HQ) stream from disk through `ImageFolder`.
Every malformed input raises `DataError`, whose one-line message names the file and what was
expected versus found. CIFAR pickles go through an unpickler that builds numpy arrays only.
"""

from __future__ import annotations

import gzip
import importlib
import math
import pickle
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dmmd.runtime.memory import refuse

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MODES = ("center_crop_resize", "resize_center_crop")
_IDX_MAGIC = 0x00000803  # uint8 data, 3 dimensions
_IDX_LABEL_MAGIC = 0x00000801  # uint8 data, 1 dimension
_MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
_MNIST_LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
NUM_CLASSES = 10  # MNIST and Fashion-MNIST labels are 0..9
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class DataError(ValueError):
    """Missing, malformed or unusable data; the one-line message names the file and the problem."""


class MissingFileError(DataError):
    """A data file is not where it was looked for (callers may add how to get it)."""


def _fail(path: object, what: str) -> DataError:
    """A DataError for `path`, flattened to one line."""
    return DataError(" ".join(f"{path}: {what}".splitlines()))


def _check_split(split: str, table: dict) -> None:
    """DataError unless `split` is a key of `table`."""
    if split not in table:
        raise DataError(f"split must be one of {sorted(table)}, found {split!r}")


def _to_unit_range(pixels: np.ndarray) -> Tensor:
    """uint8 pixels -> a new float32 tensor with 0 -> -1 and 255 -> 1 (k / 127.5 - 1 in float32)."""
    return torch.tensor(pixels).to(torch.float32).div_(127.5).sub_(1.0)  # torch's cast: ~3x numpy's here


def _find(root: str | Path, name: str, subdirs: tuple[str, ...], gz: bool) -> Path:
    """First of root/<sub>/name (then name.gz when `gz`) that exists, else DataError listing the tries."""
    names = (name, name + ".gz") if gz else (name,)
    tried = [Path(root, sub, n) for sub in subdirs for n in names]
    for path in tried:
        if path.is_file():
            return path
    raise MissingFileError(f"file not found: looked for {', '.join(map(str, tried))}")


# ------------------------------------------------------------------------------------ MNIST
def _read_maybe_gzip(path: Path, header: int) -> bytes:
    """The bytes of an IDX file, gunzipped when it starts with the gzip magic, read no further than the
    size its `header` first bytes claim (and one byte more, that shows trailing data); a claim beyond
    memory is refused before the rest is read: a gzip bomb is never inflated."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        fh = gzip.GzipFile(fileobj=raw) if gz else raw
        try:
            head = fh.read(header)
            magic, *dims = struct.unpack(f">{header // 4}I", head) if len(head) == header else (0,)
            size = header + math.prod(dims) if magic in (_IDX_MAGIC, _IDX_LABEL_MAGIC) else len(head)
            refuse(6 * size, f"{path}, whose header claims {size} bytes,", "cpu", "use a smaller file")  # + float32
            return head + fh.read(max(0, size - header) + 1)
        except (OSError, EOFError, zlib.error) as err:
            raise _fail(path, f"corrupt or truncated gzip data ({err})" if gz else f"unreadable ({err})") from None


def _check_size(path: Path, raw: bytes, expected: int, what: str) -> None:
    if len(raw) != expected:  # raw was read to one byte past the claim at most
        kind, more = ("truncated", "") if len(raw) < expected else ("trailing bytes", " or more")
        raise _fail(path, f"{kind}: header says {what} = {expected} bytes, found {len(raw)}{more}")


def _parse_idx_images(path: Path, raw: bytes) -> np.ndarray:
    """uint8 (N, 28, 28) from an IDX image file's bytes, checking header and size."""
    if len(raw) < 16:
        raise _fail(path, f"truncated IDX header: expected at least 16 bytes, found {len(raw)}")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != _IDX_MAGIC:
        raise _fail(path, f"bad IDX magic number: expected 0x{_IDX_MAGIC:08x} (uint8 images, 3 dims), "
                          f"found 0x{magic:08x}")
    if (rows, cols) != (28, 28) or n == 0:
        raise _fail(path, f"bad IDX dims: expected (N>0, 28, 28), found ({n}, {rows}, {cols})")
    _check_size(path, raw, 16 + n * rows * cols, f"{n} images of 28x28")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def _parse_idx_labels(path: Path, raw: bytes) -> np.ndarray:
    """uint8 (N,) class labels 0..9 from an IDX label file's bytes, checking header, size and values."""
    if len(raw) < 8:
        raise _fail(path, f"truncated IDX header: expected at least 8 bytes, found {len(raw)}")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != _IDX_LABEL_MAGIC:
        raise _fail(path, f"bad IDX magic number: expected 0x{_IDX_LABEL_MAGIC:08x} (uint8 labels, 1 dim), "
                          f"found 0x{magic:08x}")
    if n == 0:
        raise _fail(path, "bad IDX dims: expected N>0 labels, found 0")
    _check_size(path, raw, 8 + n, f"{n} labels")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if labels.max() >= NUM_CLASSES:
        raise _fail(path, f"expected labels 0..{NUM_CLASSES - 1}, found {int(labels.max())}")
    return labels


@lru_cache(maxsize=8)
def _read_idx_cached(path: str, kind: str, _mtime_ns: int, _size: int) -> np.ndarray:
    """The parsed uint8 array of an IDX file, cached per process by (path, mtime, size); the array
    is read-only (a view of immutable bytes), so no caller can change the cached copy."""
    parse = _parse_idx_images if kind == "images" else _parse_idx_labels
    return parse(Path(path), _read_maybe_gzip(Path(path), 16 if kind == "images" else 8))


def _read_idx(path: Path, kind: str) -> np.ndarray:
    stat = path.stat()
    return _read_idx_cached(str(path.resolve()), kind, stat.st_mtime_ns, stat.st_size)


def load_mnist(root: str | Path, split: str = "train") -> Tensor:
    """MNIST (or Fashion-MNIST, same format) images as float32 (N, 1, 28, 28) in [-1, 1].

    Reads train-images-idx3-ubyte (split "train") or t10k-images-idx3-ubyte ("test"), plain or
    gzipped (name + ".gz"), from `root` or `root/MNIST/raw`. The parsed bytes are cached per
    process; each call returns a new tensor.
    """
    _check_split(split, _MNIST_FILES)
    path = _find(root, _MNIST_FILES[split], (".", "MNIST/raw"), gz=True)
    return _to_unit_range(_read_idx(path, "images")).unsqueeze(1)


def load_mnist_labels(root: str | Path, split: str = "train") -> Tensor:
    """MNIST (or Fashion-MNIST) class labels as int64 (N,), from train-labels-idx1-ubyte (split
    "train") or t10k-labels-idx1-ubyte ("test"), plain or gzipped, in `root` or `root/MNIST/raw`."""
    _check_split(split, _MNIST_LABEL_FILES)
    path = _find(root, _MNIST_LABEL_FILES[split], (".", "MNIST/raw"), gz=True)
    return torch.from_numpy(_read_idx(path, "labels").astype(np.int64))


def load_mnist_with_labels(root: str | Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """(images (N, 1, 28, 28) in [-1, 1], labels int64 (N,)) of MNIST or Fashion-MNIST; DataError
    when the two files disagree on N."""
    images = load_mnist(root, split)
    return images, check_label_count(root, split, images, load_mnist_labels(root, split))


def check_label_count(root: str | Path, split: str, images: Tensor, labels: Tensor) -> Tensor:
    """`labels`, or DataError unless there is one per image."""
    if len(images) != len(labels):
        raise DataError(f"{root}: {split} split has {len(images)} images but {len(labels)} labels: "
                        "expected one label per image")
    return labels


def load_fashion_mnist(root: str | Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """Fashion-MNIST (same IDX format and file names as MNIST): (images, labels) of `split`."""
    return load_mnist_with_labels(root, split)


# --------------------------------------------------------------------------------- CIFAR-10
def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle may name: numpy array, dtype and scalar reconstruction."""
    try:
        core = importlib.import_module("numpy._core")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        core = importlib.import_module("numpy.core")
    multiarray, numeric = core.multiarray, core.numeric
    table: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for pkg in ("numpy.core", "numpy._core"):  # pickles written by numpy 1.x and 2.x
        table[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return table


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose find_class yields numpy reconstruction helpers and refuses all else."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _fail(self.path, f"refused pickle global {module}.{name}: "
                                   "expected only numpy array reconstruction") from None


def _unpickle(path: Path) -> object:
    """Load one pickle with the numpy-only unpickler; any failure becomes a DataError."""
    try:
        with path.open("rb") as f:
            return _NumpyOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as err:  # truncated / garbage pickles raise many types
        raise _fail(path, f"unreadable pickle ({type(err).__name__}: {err})") from None


def _cifar_pixels(path: Path, batch: object) -> np.ndarray:
    """uint8 (N, 3, 32, 32) from an unpickled CIFAR batch dict, checking its layout."""
    if not isinstance(batch, dict):
        raise _fail(path, f"expected a dict batch, found {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    if not isinstance(data, np.ndarray):
        raise _fail(path, f"expected key b'data' holding a numpy array, found {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) == 0:
        raise _fail(path, f"expected data uint8 (N>0, 3072), found {data.dtype} {tuple(data.shape)}")
    labels = batch.get(b"labels", batch.get("labels"))
    if labels is not None and len(labels) != len(data):
        raise _fail(path, f"expected {len(data)} labels to match the images, found {len(labels)}")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(root: str | Path, split: str = "train") -> Tensor:
    """CIFAR-10 images as float32 (N, 3, 32, 32) in [-1, 1].

    Reads data_batch_1..5 (split "train") or test_batch ("test") from `root` or
    `root/cifar-10-batches-py`; the pickles are loaded without running any code.
    """
    _check_split(split, _CIFAR_FILES)
    parts = []
    for name in _CIFAR_FILES[split]:
        path = _find(root, name, (".", "cifar-10-batches-py"), gz=False)
        parts.append(_cifar_pixels(path, _unpickle(path)))
    return _to_unit_range(np.concatenate(parts))


def load_cifar10_labels(root: str | Path, split: str = "train") -> Tensor:
    """CIFAR-10 class labels 0..9 as int64 (N,), from the same batches as `load_cifar10`."""
    _check_split(split, _CIFAR_FILES)
    parts = []
    for name in _CIFAR_FILES[split]:
        path = _find(root, name, (".", "cifar-10-batches-py"), gz=False)
        batch = _unpickle(path)
        n = len(_cifar_pixels(path, batch))
        labels = batch.get(b"labels", batch.get("labels"))
        try:
            labels = np.asarray(labels, dtype=np.int64).reshape(n)
        except (TypeError, ValueError):
            raise _fail(path, f"expected {n} integer labels, found {type(labels).__name__}") from None
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise _fail(path, f"expected labels 0..{NUM_CLASSES - 1}, found {int(labels.min())}..{int(labels.max())}")
        parts.append(labels)
    return torch.from_numpy(np.concatenate(parts))


# ----------------------------------------------------------------------------- image folders
def _list_images(root: Path) -> list[str]:
    """Image files under root, recursive, sorted by relative path; hidden files and folders skipped."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if path.suffix.lower() in IMAGE_SUFFIXES and not hidden and path.is_file():
            found.append(rel.as_posix())
    return [str(root / rel) for rel in sorted(found)]


def _center_crop(img: Image.Image, crop_w: int, crop_h: int) -> Image.Image:
    """Centre crop (torchvision's rounding) to crop_w x crop_h."""
    left = int(round((img.width - crop_w) / 2.0))
    top = int(round((img.height - crop_h) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def _decode(path: str) -> Image.Image:
    """Open and fully decode an image as RGB, or raise DataError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _fail(path, f"cannot decode image ({type(err).__name__}: {err})") from None


class ImageFolder(Dataset):
    """Images under a folder (jpg, jpeg, png, webp; recursive, sorted), streamed from disk.

    mode "center_crop_resize" (CelebA): centre crop `crop` x `crop`, then resize to `size`.
    mode "resize_center_crop" (LSUN, CelebA-HQ): short side to `size`, then centre crop.
    With `flip`, each item is mirrored with probability 1/2 from a generator seeded with
    seed + epoch * len(self) + index, so results do not depend on workers or order; call
    `set_epoch` between epochs. Items are float32 (3, size, size) in [-1, 1].
    """

    def __init__(self, root: str | Path, size: int, mode: str = "resize_center_crop",
                 crop: int = 140, flip: bool = False, seed: int = 0):
        root = Path(root)
        if mode not in MODES:
            raise DataError(f"{root}: mode must be one of {list(MODES)}, found {mode!r}")
        if size < 1 or crop < 1:
            raise DataError(f"{root}: size and crop must be positive, found size={size}, crop={crop}")
        if not root.is_dir():
            raise DataError(f"{root}: expected a folder of images, found {'a file' if root.exists() else 'nothing'}")
        self.files = _list_images(root)
        if not self.files:
            raise DataError(f"{root}: expected image files ({', '.join(IMAGE_SUFFIXES)}), found none")
        self.root, self.size, self.mode, self.crop = root, size, mode, crop
        self.flip, self.seed, self.epoch = flip, seed, 0

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Select the flips of `epoch` (set before creating the epoch's loader iterator)."""
        self.epoch = int(epoch)

    def _resize(self, img: Image.Image, path: str) -> Image.Image:
        """Apply the crop/resize protocol of `self.mode`."""
        if self.mode == "center_crop_resize":
            if min(img.size) < self.crop:
                raise _fail(path, f"expected an image at least {self.crop}x{self.crop} to crop, "
                                  f"found {img.width}x{img.height}")
            img = _center_crop(img, self.crop, self.crop)
            return img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        short, long = min(img.size), max(img.size)
        long = int(self.size * long / short)
        new = (self.size, long) if img.width <= img.height else (long, self.size)
        img = img.resize(new, Image.Resampling.BILINEAR)
        return _center_crop(img, self.size, self.size)

    def _flips(self, index: int) -> bool:
        """Whether item `index` is mirrored this epoch (deterministic)."""
        if not self.flip:
            return False
        gen = torch.Generator().manual_seed(self.seed + self.epoch * len(self) + index)
        return bool(torch.rand(1, generator=gen).item() < 0.5)

    def __getitem__(self, index: int) -> Tensor:
        index = range(len(self))[int(index)]  # negative indices get the same flip as positive ones
        path = self.files[index]
        img = self._resize(_decode(path), path)
        if self._flips(index):
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        return _to_unit_range(np.ascontiguousarray(pixels))


def celeba64(root: str | Path, flip: bool = True, seed: int = 0) -> ImageFolder:
    """CelebA at 64x64: centre crop 140 of the aligned 178x218 faces, resize to 64."""
    return ImageFolder(root, 64, "center_crop_resize", crop=140, flip=flip, seed=seed)


def lsun_church64(root: str | Path, flip: bool = True, seed: int = 0) -> ImageFolder:
    """LSUN church_outdoor at 64x64: short side to 64, centre crop 64x64."""
    return ImageFolder(root, 64, "resize_center_crop", flip=flip, seed=seed)


def celebahq128(root: str | Path, flip: bool = True, seed: int = 0) -> ImageFolder:
    """CelebA-HQ at 128x128: short side to 128, centre crop 128x128."""
    return ImageFolder(root, 128, "resize_center_crop", flip=flip, seed=seed)


# --------------------------------------------------------------------------- loaders, checks
def _worker_init(_worker_id: int) -> None:
    """One intra-op thread per worker, so workers do not oversubscribe the CPU."""
    torch.set_num_threads(1)


def make_loader(dataset, batch_size: int, num_workers: int, shuffle: bool, seed: int,
                drop_last: bool = True, sampler=None) -> DataLoader:
    """A DataLoader whose shuffling (and worker seeds) come from a generator seeded with `seed`.

    Workers read items from disk themselves, so a folder data set never sits in memory.
    """
    if batch_size < 1 or num_workers < 0:
        raise DataError(f"expected batch_size >= 1 and num_workers >= 0, found {batch_size}, {num_workers}")
    if sampler is not None and shuffle:
        raise DataError("expected shuffle=False with a sampler (the sampler sets the order), found shuffle=True")
    count = len(sampler) if sampler is not None else len(dataset)
    if drop_last and count < batch_size:
        raise DataError(f"data set has {count} items, fewer than batch_size {batch_size} with drop_last: "
                        "expected at least one full batch")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=num_workers, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=_worker_init if num_workers > 0 else None)


def check_images(x, channels: int | None = None, *, name: str = "images") -> Tensor:
    """Check an in-memory image batch: a tensor (N>0, C, H, W), C == channels if given, finite."""
    if not isinstance(x, Tensor):
        raise DataError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if x.dim() != 4:
        raise DataError(f"{name}: expected rank 4 (N, C, H, W), found shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise DataError(f"{name}: expected a non-empty batch, found shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise DataError(f"{name}: expected {channels} channels, found {x.shape[1]} (shape {tuple(x.shape)})")
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"{name}: expected finite values, found {bad} NaN/Inf")
    return x
