"""Latent modelling (SPEC 10): train an autoencoder once, then any method in its latents.

- `train_autoencoder`: Adam on MSE + autoencoder.latent_l2 ||e(x)||^2, checkpointed and resumable
  (AE/checkpoints, AE/latest, AE/log.txt, AE/metrics.jsonl); at the end the per-coordinate mean
  and std of the training latents are stored with the weights, a grid of held-out originals over
  their reconstructions is drawn (AE/reconstructions.png) and AE/autoencoder.json summarises it.
- `load_autoencoder` / `for_config`: a finished autoencoder and its identity, the sha256 of its
  weights and scale (`weights_sha256`); a model trained on its latents stores that hash in
  model.latent_id, and sampling refuses any other autoencoder.
- `encode_dataset`: a data set as standardised latents (kind "points"), computed once and cached
  in AE/latents/; `decode`: samples back to images in [-1, 1].
- `reconstruction_floor`: the FD of reconstructed held-out images, the floor of every latent model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import checkpoint as ckpt
from .config import Config, DataConfig, to_json
from .data.datasets import Dataset
from .nets.autoencoder import ConvAutoencoder, moments, reconstruction_loss, weights_sha256

KIND = "autoencoder"  # payload["kind"] of an autoencoder checkpoint
BATCH = 1000  # images per encoder/decoder pass outside training
GRID_PAIRS = 32  # held-out images in the reconstruction grid (rows of 8 originals over 8 reconstructions)


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
    from .config import ConfigError, from_dict

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
    from .config import ConfigError

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
    with tqdm(total=total, desc="encode", disable=not (progress and sys.stderr.isatty()), dynamic_ncols=True) as bar:
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


def reconstruction_floor(ae: Autoencoder, data: Dataset, num: int) -> dict:
    """FD of the reconstructions of the first `num` held-out images (at most all of them) against
    every held-out image, as samples are scored: raw pixels, and FD-fashion / FD-digits for those
    data sets. A latent model's samples can at best match their decoder's output distribution."""
    from .evaluation.metrics import frechet_distance

    x = data.test[:max(2, min(num, len(data.test)))]
    recon = decode(encode(x, ae), ae)
    out = {"num_images": len(x), "mse": float((recon - x).square().mean()), "autoencoder_sha256": ae.sha256,
           "fd": frechet_distance(recon.flatten(1).double(), data.test.flatten(1).double())}
    if data.name == "fashion_mnist":
        from .evaluation.fashion_net import fashion_scores

        out["fd_fashion"] = fashion_scores(recon, data.test)["fd_fashion"]
    if data.name == "digits":
        from .evaluation.digits_net import digits_scores

        out["fd_digits"] = digits_scores(recon, data.test)["fd_digits"]
    return out


# ---------------------------------------------------------------------------------------- training
def _payload(cfg: Config, model, optimizer, generator, step: int, finished: bool) -> dict:
    return {"kind": KIND, "config": to_json(cfg), "step": step, "data_shape": list(model.shape),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": {"train": generator.get_state()}, "finished": finished}


def _save(run_dir: Path, payload: dict, name: str, keep: int = 2) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.save(folder / name, payload)
    ckpt.atomic_write_text(run_dir / ckpt.LATEST, f"checkpoints/{name}\n")
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return folder / name


@torch.no_grad()
def heldout_mse(model: ConvAutoencoder, test: Tensor, limit: int = 2000) -> float:
    device = model.latent_mean.device
    x = test[:limit]
    return float(sum(float((model(c.to(device))[0] - c.to(device)).square().sum()) for c in x.split(BATCH)) / x.numel())


def train_autoencoder(cfg: Config, data: Dataset, run_dir: str | Path, resume: bool = False, progress: bool = True,
                      echo=None) -> Autoencoder:
    """Train (or continue) the autoencoder of cfg.autoencoder on data.train (or its stream) into run_dir."""
    from .device import resolve_device, thread_guard

    with thread_guard(cfg.train.threads):
        return _train(cfg, data, Path(run_dir), resume, progress, echo, resolve_device(cfg.train.device))


def _train(cfg: Config, data: Dataset, run_dir: Path, resume: bool, progress: bool, echo, device) -> Autoencoder:
    from tqdm.auto import tqdm

    from .config import ConfigError
    from .plotting import save_image_grid
    from .runlog import RunLog
    from .training import StreamSource

    if data.kind != "image" or len(data.shape) != 3:
        raise ConfigError(f"the autoencoder needs images (C, H, W); data.name = {cfg.data.name!r} gives {data.kind} of shape {data.shape}")
    a = cfg.autoencoder
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_autoencoder(cfg, data.shape).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    bar_on = progress and sys.stderr.isatty()
    log = RunLog(run_dir, echo, total_steps=a.steps, echo_intervals=not bar_on, tensorboard=False)
    if resume and (run_dir / ckpt.LATEST).is_file():
        payload = read_payload(run_dir, KIND, device)
        try:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            gen.set_state(payload["rng"]["train"].cpu())
        except (KeyError, RuntimeError, ValueError) as err:
            raise ckpt.CheckpointError(f"{run_dir}: checkpoint does not match this config: {str(err).splitlines()[0]}") from None
        step = int(payload["step"])
        log.line(f"resumed at step {step}")
    else:
        ckpt.atomic_write_text(run_dir / "config.json", to_json(cfg) + "\n")
        log.line(f"training the autoencoder on {cfg.data.name} {data.shape}: latent {a.latent_dim}, {a.steps} steps, "
                 f"{sum(p.numel() for p in model.parameters())} parameters, on {device}")
    log.start(step)
    source = data.train if data.stream is None else StreamSource(data.stream, cfg.data.workers)
    cpu, wall = time.process_time(), time.time()
    bar = tqdm(total=a.steps, initial=step, desc="autoencoder", disable=not bar_on, dynamic_ncols=True)
    model.train()
    while step < a.steps:
        idx = torch.randint(0, len(source), (a.batch_size,), generator=gen)
        x = source[idx].to(device) if isinstance(source, Tensor) else source.batch(idx, step, device)
        loss, terms = reconstruction_loss(model, x, a.latent_l2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        if step % a.log_every == 0 or step == a.steps:
            record = {"loss": float(loss.detach()), **{k: float(v) for k, v in terms.items()}}
            log.train(step, record)
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()})
        if step % a.checkpoint_every == 0 and step < a.steps:
            log.val(step, heldout_mse(model.eval(), data.test))
            model.train()
            _save(run_dir, _payload(cfg, model, optimizer, gen, step, False), f"step_{step:08d}.pt")
    bar.close()
    model.eval()
    with torch.no_grad():  # the in-memory training split: all of it, or a streamed folder's subset
        mean, std = moments(model.encode(x.to(device)) for x in data.train.split(BATCH))
        model.set_scale(mean.to(device), std.to(device))
    mse = heldout_mse(model, data.test)
    log.val(step, mse)
    _save(run_dir, _payload(cfg, model, optimizer, gen, step, True), "final.pt")
    ae = Autoencoder(model.requires_grad_(False), weights_sha256(model.state_dict()), run_dir, cfg)
    shown = data.test[:GRID_PAIRS]
    recon = decode(encode(shown, ae), ae)
    pairs = torch.stack([shown.view(-1, 8, *ae.shape), recon.view(-1, 8, *ae.shape)], 1).reshape(-1, *ae.shape) \
        if len(shown) % 8 == 0 else torch.cat([shown, recon])
    save_image_grid(run_dir / "reconstructions.png", pairs.numpy(), nrow=8,
                    title=f"held-out originals over reconstructions (MSE {mse:.4f})")
    summary = {"sha256": ae.sha256, "latent_dim": a.latent_dim, "steps": step, "heldout_mse": mse,
               "session_cpu_s": round(time.process_time() - cpu, 1), "session_wall_s": round(time.time() - wall, 1)}
    ckpt.atomic_write_text(run_dir / "autoencoder.json", json.dumps(summary, indent=2) + "\n")
    log.line(f"done at step {step}: held-out MSE {mse:.4g}, sha256 {ae.sha256[:12]}, "
             f"{summary['session_cpu_s']} CPU-s, {summary['session_wall_s']} s")
    log.close()
    return ae
