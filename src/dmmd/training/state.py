"""What a training run carries from step to step: the model, its EMA copy, the optimizer and the
random generator (saved in every checkpoint and restored on resume), and the source of batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel

from dmmd.config import Config, to_json
from dmmd.methods.build import build_model
from dmmd.runtime import checkpoint as ckpt
from dmmd.runtime.device import prepare_model


@dataclass
class TrainState:
    model: torch.nn.Module  # the DMMD discriminator, or the DDPM baseline's epsilon network
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    data_shape: tuple[int, ...] = ()
    step: int = 0
    stats: dict | None = None
    best: dict | None = None  # {"step", "val_loss"} of checkpoints/best.pt (train.best_by = 'val_loss')
    gp_cache: list[torch.Tensor] | None = None  # the kept penalty gradient under train.gp_lazy = 'reuse' (kept_penalty_gradient)


def warmup_ema(decay: float):
    """EMA whose decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates.

    A fixed 0.999 from step 0 would average in the first few hundred steps, whose weights
    describe a different function (on 8 Gaussians it erased the modes from the witness).
    """

    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        n = int(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(ema_params, params, weight)

    return update


def new_state(cfg: Config, data_shape: tuple[int, ...], device: str | torch.device = "cpu") -> TrainState:
    torch.manual_seed(cfg.seed)  # parameter initialisation
    model = build_model(cfg, data_shape).to(device)
    prepare_model(model, cfg.train.channels_last)
    ema = AveragedModel(model, multi_avg_fn=warmup_ema(cfg.train.ema_decay), use_buffers=True)
    prepare_model(model, compile=cfg.train.compile)  # after the EMA copy: the average is not compiled
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    return TrainState(model, ema, opt, gen, tuple(data_shape))


def state_payload(state: TrainState, cfg: Config) -> dict:
    return {"config": to_json(cfg), "step": state.step, "data_shape": list(state.data_shape), "model": state.model.state_dict(),
            "ema": state.ema.state_dict(), "optimizer": state.optimizer.state_dict(),
            "rng": {"train": state.generator.get_state()}, "stats": state.stats or {},
            "best": state.best or {}, **({"gp_cache": state.gp_cache} if state.gp_cache is not None else {})}


def restore_state(state: TrainState, payload: dict, path="the checkpoint") -> None:
    ckpt.check_optimizer_state(payload["optimizer"], [tuple(p.shape) for p in state.model.parameters()], path)
    try:
        state.model.load_state_dict(payload["model"])
        state.ema.load_state_dict(payload["ema"])
        state.optimizer.load_state_dict(payload["optimizer"])
        state.generator.set_state(payload["rng"]["train"].cpu() if state.generator.device.type == "cpu"
                                  else payload["rng"]["train"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise ckpt.CheckpointError(f"checkpoint does not match this config's model: {str(err).splitlines()[0]}") from None
    state.step, state.stats = int(payload["step"]), payload.get("stats") or None
    state.best = payload.get("best") or None
    cache = payload.get("gp_cache")
    params = [p for p in state.model.parameters() if p.requires_grad]
    if cache is not None and not valid_gp_cache(cache, params, state.model):
        raise ckpt.CheckpointError("checkpoint's gp_cache (the reused penalty gradient) does not match the model's "
                                   "parameters (written by another model or version; resume without train.gp_lazy = reuse "
                                   "or from a checkpoint of this model)")
    state.gp_cache = None if cache is None else [g.to(params[0].device, params[0].dtype) for g in cache]


def valid_gp_cache(cache, params: list[torch.Tensor], model: torch.nn.Module) -> bool:
    """A kept 'reuse' gradient: one tensor per parameter of its shape, then (unless the objective is
    KALE) two feature cotangents of one shape (L, B, D)."""
    if not isinstance(cache, list) or not all(isinstance(g, torch.Tensor) for g in cache):
        return False
    extra = 0 if getattr(model, "objective", "mmd") == "kale" else 2
    if len(cache) != len(params) + extra or any(g.shape != p.shape for g, p in zip(cache, params)):
        return False
    return extra == 0 or (cache[-1].ndim == 3 and cache[-1].shape == cache[-2].shape)


class StreamSource:
    """Batches read from a disk-backed data set (e.g. dmmd.data.files.ImageFolder) by index, decoded
    by a pool of threads. Indices come from the training generator like in-memory batches, and the
    data set's flips are re-seeded per step, so a resumed run reads exactly the same batches."""

    def __init__(self, dataset, workers: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.dataset, self.pool = dataset, ThreadPoolExecutor(max_workers=workers)
        self.shape = tuple(dataset[0].shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, idx: torch.Tensor, step: int, device) -> torch.Tensor:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(step)
        return torch.stack(list(self.pool.map(self.dataset.__getitem__, idx.tolist()))).to(device)


def _batch(source, idx: torch.Tensor, step: int) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source[idx]
    return source.batch(idx.cpu(), step, idx.device)
