"""Training the autoencoder a latent model works in (`dmmd train-autoencoder`).

Adam on MSE + autoencoder.latent_l2 ||e(x)||^2, checkpointed and resumable (AE/checkpoints,
AE/latest, AE/log.txt, AE/metrics.jsonl); at the end the per-coordinate mean and std of the
training latents are stored with the weights, a grid of held-out originals over their
reconstructions is drawn (AE/reconstructions.png) and AE/autoencoder.json summarises it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dmmd.config import Config, ConfigError, to_json
from dmmd.data.datasets import Dataset
from dmmd.evaluation.plotting import save_image_grid
from dmmd.methods.latent import BATCH, KIND, Autoencoder, build_autoencoder, decode, encode, read_payload
from dmmd.nets.autoencoder import ConvAutoencoder, moments, reconstruction_loss, weights_sha256
from dmmd.runtime import checkpoint as ckpt
from dmmd.runtime.device import resolve_device, thread_guard
from dmmd.runtime.terminal import bars_drawable
from dmmd.training.log import RunLog
from dmmd.training.state import StreamSource

GRID_PAIRS = 32  # held-out images in the reconstruction grid (rows of 8 originals over 8 reconstructions)


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
    with thread_guard(cfg.train.threads):
        return _train(cfg, data, Path(run_dir), resume, progress, echo, resolve_device(cfg.train.device))


def _train(cfg: Config, data: Dataset, run_dir: Path, resume: bool, progress: bool, echo, device) -> Autoencoder:
    if data.kind != "image" or len(data.shape) != 3:
        raise ConfigError(f"the autoencoder needs images (C, H, W); data.name = {cfg.data.name!r} gives {data.kind} of shape {data.shape}")
    a = cfg.autoencoder
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_autoencoder(cfg, data.shape).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    bar_on = progress and bars_drawable()
    if bar_on and echo is not None:  # lines printed above the bar (the held-out MSE at checkpoints)
        echo = tqdm.write
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
