"""FID and IS with the standard Inception network (torchmetrics) from a local weights file.

torchmetrics' Inception network is torch-fidelity's port of the 2015-12-05 TensorFlow graph used by
the original FID and IS code; its weights are never downloaded here (offline machines): pass the
file (`dmmd evaluate --inception-weights PATH`) or put it in the torch hub cache. docs/metrics.md.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmmd.data.files import DataError

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
_INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
_INSTALL_TORCH_FIDELITY = (
    "install the torchvision release built for your torch (for a CPU torch from "
    "https://download.pytorch.org/whl/cpu), then pip install torch-fidelity; without torchvision "
    "(pip install --no-deps torch-fidelity) torch_fidelity fails to import, and so does torchmetrics"
)


class InceptionUnavailable(DataError):
    """The standard Inception network cannot be built: no weights file, a file that is not those
    weights, or torch-fidelity not importable. The message is one line that says how to fix it."""


def inception_weights_path(weights_path: str | Path | None = None) -> Path:
    """The Inception weights file: ``weights_path`` when given, else torch-fidelity's file name in
    the torch hub checkpoints folder (``torch.hub.get_dir()/checkpoints``, where torch.hub would
    have saved a download; $TORCH_HOME moves it)."""
    how = (f"download {_INCEPTION_URL} on a machine with internet access, then pass the file "
           f"(dmmd evaluate --inception-weights PATH) or copy it to {default_inception_weights_path()}")
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise InceptionUnavailable(f"Inception weights not found at {path}: {how}")
        return path
    path = default_inception_weights_path()
    if not path.is_file():
        raise InceptionUnavailable(f"no Inception weights given and none at {path}: {how}")
    return path


def default_inception_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def require_torch_fidelity() -> None:
    """Raise InceptionUnavailable, with how to install it, when torch-fidelity cannot be imported."""
    try:
        import torch_fidelity  # noqa: F401  (its package __init__ imports torchvision)
    except ModuleNotFoundError as err:
        if err.name not in ("torch_fidelity", "torchvision"):
            raise
        raise InceptionUnavailable(f"the standard Inception metrics need torch-fidelity ({err.name} is not "
                                   f"installed): {_INSTALL_TORCH_FIDELITY}") from None


def _inception_network(path: Path, feature: str) -> torch.nn.Module:
    """torchmetrics' Inception (eval mode, frozen) from a local weights file, returning ``feature``.

    The file is first read with ``weights_only=True`` (tensors only, no code run), since
    torch-fidelity itself loads it with ``weights_only=False``. ``antialias=False`` resizes to
    299x299 with torch-fidelity's TensorFlow-1 bilinear resize, as the reference FID/IS code does.
    """
    require_torch_fidelity()
    from torchmetrics.image.fid import NoTrainInceptionV3

    wrong = f"{path}: not torch-fidelity's Inception weights ({INCEPTION_WEIGHTS_FILE} from {_INCEPTION_URL})"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise InceptionUnavailable(f"{wrong}: torch.load(weights_only=True) failed ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise InceptionUnavailable(f"{wrong}: expected a state dict, found {type(state).__name__}")
    try:
        with torch.random.fork_rng(devices=[]):  # the layers' random init would advance the caller's generator
            return NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature],
                                      feature_extractor_weights_path=str(path), antialias=False)
    except RuntimeError as err:  # load_state_dict: missing, unexpected or mis-shaped keys
        raise InceptionUnavailable(f"{wrong}: {' '.join(str(err).split())[:120]}") from None


def _inception_batches(images: Any, name: str, batch_size: int) -> Iterator[torch.Tensor]:
    """(N, 1 or 3, H, W) images in data space [-1, 1] -> (B, 3, H, W) uint8 batches in 0..255, the
    network's input (grey repeated over 3 channels); values outside [-1, 1] are clipped."""
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 2:
        raise ValueError(f"{name}: expected at least 2 images of shape (1 or 3, H, W), found shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, found {batch_size}")
    for i in range(0, x.shape[0], batch_size):
        batch = x[i : i + batch_size].detach().to("cpu", torch.float32)
        if not torch.isfinite(batch).all():
            raise ValueError(f"{name}: expected finite pixel values, found NaN or Inf")
        pixels = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, C, H, W)
        yield pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


def inception_fid(real: Any, fake: Any, weights_path: str | Path | None = None, batch_size: int = 50,
                  device: str | torch.device = "cpu") -> float:
    """FID with the standard Inception network (2048 pool features; torchmetrics) from local weights.

    ``real`` and ``fake``: (N, 1 or 3, H, W) images in data space [-1, 1], any size (resized to
    299x299). Only running sums of the features are kept; ``batch_size`` images go through the
    network at a time. ``weights_path``: see :func:`inception_weights_path`.
    """
    network = _inception_network(inception_weights_path(weights_path), "2048")
    network.num_features = 2048  # read by torchmetrics, which otherwise probes with a dummy image
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=network).to(device)
    with torch.no_grad():
        for images, name, is_real in ((real, "real", True), (fake, "fake", False)):
            for batch in _inception_batches(images, name, batch_size):
                metric.update(batch.to(device), real=is_real)
        return float(metric.compute())


def inception_score_standard(fake: Any, weights_path: str | Path | None = None, splits: int = 10,
                             batch_size: int = 50, device: str | torch.device = "cpu",
                             seed: int = 0) -> tuple[float, float]:
    """IS (mean, std over ``splits``) with the standard Inception network's 1008 unbiased logits.

    ``fake``: (N, 1 or 3, H, W) images in data space [-1, 1]. torchmetrics keeps the logits
    (N x 1008 floats) and shuffles them into splits with the global torch generator; that shuffle
    runs under ``seed`` in a forked generator, so the result is repeatable and the caller's
    random state is untouched. The std is torchmetrics' (ddof=1: NaN for one split), where
    :func:`inception_score` and the original code use ddof=0.
    """
    if not 1 <= splits <= len(fake):
        raise ValueError(f"splits: expected 1 <= splits <= {len(fake)} (images), found {splits}")
    network = _inception_network(inception_weights_path(weights_path), "logits_unbiased")
    from torchmetrics.image.inception import InceptionScore

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metric `InceptionScore` will save all extracted features")
        metric = InceptionScore(feature=network, splits=splits).to(device)
    with torch.no_grad():
        for batch in _inception_batches(fake, "fake", batch_size):
            metric.update(batch.to(device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return float(mean), float(std)
