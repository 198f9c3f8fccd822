"""The autoencoder a latent model works in: load it, encode data into its latents, decode samples.

- `load_autoencoder` / `for_config`: a finished autoencoder and its identity, the sha256 of its
  weights and scale (`weights_sha256`); a model trained on its latents stores that hash in
  model.latent_id, and sampling refuses any other autoencoder.
- `encode_dataset`: a data set as standardised latents (kind "points"), computed once and cached
  in AE/latents/; `decode`: samples back to images in [-1, 1].

Training one is dmmd.training.autoencoder; its reconstruction floor is in dmmd.evaluation.report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dmmd.config import Config, ConfigError, DataConfig, from_dict
from dmmd.data.datasets import Dataset
from dmmd.nets.autoencoder import ConvAutoencoder, weights_sha256
from dmmd.runtime import checkpoint as ckpt
from dmmd.runtime.terminal import bars_drawable

KIND = "autoencoder"  # payload["kind"] of an autoencoder checkpoint
BATCH = 1000  # images per encoder/decoder pass outside training


@dataclass
class Autoencoder:
    model: ConvAutoencoder  # eval mode, no gradients
    sha256: str
    folder: Path  # where the latents cache goes
    config: Config

    @property
    def shape(self) -> tuple[int, ...]:
        return self.model.shape


def build_autoencoder(cfg: Config, shape: tuple[int, ...]) -> ConvAutoencoder:
    return ConvAutoencoder(tuple(shape), cfg.autoencoder.latent_dim, tuple(cfg.autoencoder.channels))


def _run_folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent.parent  # AE/checkpoints/x.pt -> AE


def read_payload(path: str | Path, kind: str, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint-format file of this module (an autoencoder or a latents cache), read with the
    safe loader; `checkpoint.load` checks model checkpoints' fields, which these do not have."""
    path = ckpt.resolve(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError) as err:
        raise ckpt.CheckpointError(f"{path} is not a readable checkpoint (truncated, corrupt or unsafe?): "
                                   f"{type(err).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != ckpt.FORMAT or payload.get("version") != ckpt.VERSION:
        raise ckpt.CheckpointError(f"{path} is not a dmmd checkpoint of version {ckpt.VERSION}")
    if payload.get("kind") != kind:
        raise ckpt.CheckpointError(f"{path} is not an autoencoder (write one with `dmmd train-autoencoder`)"
                                   if kind == KIND else f"{path} is not a {kind} file")
    return payload


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
    """A finished autoencoder from its folder or checkpoint (CheckpointError otherwise)."""

    payload = read_payload(path, KIND, device)
    if not payload.get("finished"):
        raise ckpt.CheckpointError(f"{path} is not finished (no latent scale yet): `dmmd train-autoencoder --resume {path}`")
    try:
        cfg = from_dict(json.loads(payload["config"]))
        model = build_autoencoder(cfg, tuple(payload["data_shape"]))
        model.load_state_dict(payload["model"])
    except (ConfigError, KeyError, RuntimeError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise ckpt.CheckpointError(f"{path}: autoencoder weights do not match its config: {str(err).splitlines()[0]}") from None
    model.to(device).eval().requires_grad_(False)
    return Autoencoder(model, weights_sha256(model.state_dict()), _run_folder(Path(path)), cfg)


def for_config(cfg: Config, device: str | torch.device = "cpu") -> Autoencoder | None:
    """The autoencoder named by cfg.model.latent (None without one), checked against model.latent_id."""
    if not cfg.model.latent:
        return None
    try:
        ae = load_autoencoder(cfg.model.latent, device)
    except ckpt.CheckpointError as err:
        raise ckpt.CheckpointError(f"model.latent = {cfg.model.latent!r}: {err}") from None
    if cfg.model.latent_id and ae.sha256 != cfg.model.latent_id:
        raise ckpt.CheckpointError(f"the autoencoder at {cfg.model.latent} (sha256 {ae.sha256[:12]}) is not the one this "
                                   f"model was trained on (sha256 {cfg.model.latent_id[:12]}); put that one back there")
    return ae


def latent_data(cfg: Config, data: Dataset, progress: bool = True) -> Dataset:
    """For `dmmd train` with model.latent: the data as standardised latents; records the
    autoencoder's absolute path and identity in cfg.model (a resumed run must find the same one)."""

    ae = for_config(cfg)
    if data.shape != ae.shape:
        raise ConfigError(f"the autoencoder at {cfg.model.latent} encodes images of shape {ae.shape}; "
                          f"data.name = {cfg.data.name!r} has shape {data.shape}")
    cfg.model.latent, cfg.model.latent_id = str(Path(cfg.model.latent).resolve()), ae.sha256
    return encode_dataset(data, ae, cfg.data, progress)


# ---------------------------------------------------------------------------------- encode / decode
@torch.no_grad()
def encode(x: Tensor, ae: Autoencoder, bar=None) -> Tensor:
    """Standardised latents (N, L) of images (N, C, H, W) in [-1, 1], on the CPU."""
    device = ae.model.latent_mean.device
    out = []
    for chunk in x.split(BATCH):
        out.append(ae.model.standardise(ae.model.encode(chunk.to(device))).cpu())
        if bar is not None:
            bar.update(len(chunk))
    return torch.cat(out)


@torch.no_grad()
def decode(z: Tensor, ae: Autoencoder) -> Tensor:
    """Images (N, C, H, W) in [-1, 1], on the CPU, from standardised latents (N, L)."""
    device = ae.model.latent_mean.device
    return torch.cat([ae.model.decode(ae.model.unstandardise(c.to(device).float())).cpu() for c in z.split(BATCH)])


def _stream_images(stream):
    for start in range(0, len(stream), BATCH):
        yield torch.stack([stream[i] for i in range(start, min(start + BATCH, len(stream)))])


def _cache_path(ae: Autoencoder, data_cfg: DataConfig) -> Path:
    fields = {k: v for k, v in dataclasses.asdict(data_cfg).items() if k != "workers"}
    key = hashlib.sha256(json.dumps({"autoencoder": ae.sha256, "data": fields}, sort_keys=True).encode()).hexdigest()
    return ae.folder / "latents" / f"{data_cfg.name}-{key[:16]}.pt"


def encode_dataset(data: Dataset, ae: Autoencoder, data_cfg: DataConfig | None = None, progress: bool = True) -> Dataset:
    """The data set as standardised latents (kind "points", name "latent:<name>", labels kept).
    A streamed folder is encoded image by image in full. With data_cfg the result is cached in
    AE/latents/ under a hash of the autoencoder and the data settings, and read back next time."""
    from tqdm.auto import tqdm

    path = _cache_path(ae, data_cfg) if data_cfg is not None else None
    if path is not None and path.is_file():
        try:
            cached = read_payload(path, "latents")
            return _latent_dataset(data, cached["train"], cached["test"])
        except (ckpt.CheckpointError, KeyError):
            pass  # unreadable: encode again
    total = (len(data.stream) if data.stream is not None else len(data.train)) + len(data.test)
    print(f"note: encoding {total} images with the autoencoder" + (f" (cached in {path})" if path else ""),
          file=sys.stderr)
    with tqdm(total=total, desc="encode", disable=not (progress and bars_drawable()), dynamic_ncols=True) as bar:
        if data.stream is not None:
            train = torch.cat([encode(x, ae, bar) for x in _stream_images(data.stream)])
        else:
            train = encode(data.train, ae, bar)
        test = encode(data.test, ae, bar)
    if path is not None:
        try:
            path.parent.mkdir(exist_ok=True)
            ckpt.save(path, {"kind": "latents", "autoencoder": ae.sha256, "train": train, "test": test})
        except OSError as err:
            print(f"note: latents not cached ({path}: {err.strerror})", file=sys.stderr)
    return _latent_dataset(data, train, test)


def _latent_dataset(data: Dataset, train: Tensor, test: Tensor) -> Dataset:
    return Dataset(train, test, "points", f"latent:{data.name}", data.labels_train, data.labels_test)
