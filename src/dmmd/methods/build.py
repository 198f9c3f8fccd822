"""A method's parts from a config: the forward process, the trained network, the flow settings,
and a trained model loaded back from a checkpoint (with the statistics stored beside it)."""

from __future__ import annotations

import torch

from dmmd.config import Config, ConfigError, ProcessConfig, SampleConfig, from_dict, stored_run
from dmmd.math.noising import BlurProcess, Process, VPProcess
from dmmd.methods.ddpm import add_missing_skip, build_eps_net
from dmmd.methods.discriminator import build_discriminator
from dmmd.methods.mmd_flow import FlowSettings
from dmmd.runtime import checkpoint as ckpt
from dmmd.runtime.checkpoint import check_model_fits
from dmmd.runtime.statsfile import merged


def build_process(cfg: ProcessConfig) -> Process:
    if cfg.kind == "blur":
        return BlurProcess(cfg.blur_max_width, cfg.blur_noise_std, t_min=cfg.t_min, t_max=cfg.t_max)
    return VPProcess(cfg.schedule, cfg.beta_min, cfg.beta_max, t_min=cfg.t_min, t_max=cfg.t_max)


def build_model(cfg: Config, data_shape: tuple[int, ...]) -> torch.nn.Module:
    """The trained network of a method: DMMD's discriminator or the DDPM baseline's epsilon net
    (the same backbone family, so comparisons share the architecture)."""
    if cfg.method in ("ddpm", "fm"):  # both regress a tensor of the data's shape
        return build_eps_net(cfg.model, data_shape)
    return build_discriminator(cfg.model, data_shape)


def flow_settings(cfg: SampleConfig) -> FlowSettings:
    return FlowSettings(cfg.num_levels, cfg.steps_per_level, cfg.step_size, cfg.grid, cfg.inject,
                        cfg.renoise, cfg.leave_one_out, cfg.chunk_size, step_norm=cfg.step_norm)


def load_model(path, device: str | torch.device = "cpu"):
    """(config, EMA discriminator in eval mode, stats, raw payload) from a checkpoint or run folder."""
    path = ckpt.resolve(path)  # once: `latest` may move on while training runs
    payload = ckpt.load(path, map_location=device)
    try:
        cfg = stored_run(from_dict(payload["config"]), payload["config"])
    except (ConfigError, TypeError, KeyError) as err:
        raise ckpt.CheckpointError(f"checkpoint config is not valid for this dmmd: {err}") from None
    shape = tuple(payload.get("data_shape") or ())
    if cfg.method != "dmmd":  # DDPM / flow-matching MLPs saved before the skip path sample as trained
        payload["ema"] = add_missing_skip(payload["ema"])
    check_model_fits(build_model, cfg, shape, payload["ema"], path)  # before allocating anything
    disc = build_model(cfg, shape).to(device)
    prefix = "module."
    try:
        disc.load_state_dict({k[len(prefix):]: v for k, v in payload["ema"].items() if k.startswith(prefix)})
    except (KeyError, RuntimeError) as err:
        raise ckpt.CheckpointError(f"checkpoint weights do not match its config: {str(err).splitlines()[0]}") from None
    disc.eval().requires_grad_(False)
    # statistics `dmmd calibrate` stored beside the checkpoint override the checkpoint's own
    stats = merged(path, payload.get("stats") or {}, cfg.method, getattr(disc, "feature_dim", None), device)
    return cfg, disc, stats, payload
