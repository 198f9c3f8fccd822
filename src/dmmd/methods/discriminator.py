"""The discriminator: a feature backbone phi(x, t) joined with a base kernel K (docs/method.md).

k_t(x, y) = K(phi(x, t), phi(y, t)). For the RBF kernel the width sigma(t) is learned as a
function of t (a small MLP of sinusoidal features, started at `init_width`). For the KALE
objective a linear head on phi gives the critic h(x, t).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from dmmd.config import ModelConfig
from dmmd.math import divergences as dv
from dmmd.nets.mlp import FeatureMLP, broadcast_time, sinusoidal_embedding
from dmmd.nets.unet import UNet


class LevelWidth(nn.Module):
    """sigma(t) > 0 for the RBF kernel: exp(log(init) + MLP(sinusoidal(t))).

    The sinusoidal features are slow (fastest period 2 pi / time_scale = 0.63 in t): the width is a
    smooth function of the level. With the backbone's DDPM-style features (periods down to 0.006)
    the learned sigma(t) wiggled where no level's loss pinned it (Spearman with t 0.89 on 8 Gaussians,
    0.85 on digits; 0.96 and 0.94 with time_scale 10, docs/studies.md)."""

    def __init__(self, init_width: float, dim: int = 32, time_scale: float = 10.0):
        super().__init__()
        self.dim, self.time_scale = dim, time_scale
        self.log_init = math.log(init_width)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, t: Tensor) -> Tensor:
        features = sinusoidal_embedding(t.reshape(-1), self.dim, scale=self.time_scale)
        return torch.exp(self.log_init + self.mlp(features.to(self.mlp[0].weight.dtype)).squeeze(-1))


class Discriminator(nn.Module):
    def __init__(self, backbone: nn.Module, kernel: str = "linear", init_width: float = 1.0,
                 rq_dot_weight: float = 0.0, objective: str = "mmd"):
        super().__init__()
        if kernel not in ("linear", "rbf", "rq"):
            raise ValueError(f"kernel must be linear, rbf or rq, got {kernel!r}")
        self.backbone, self.kernel_name, self.objective = backbone, kernel, objective
        self.rq_dot_weight = rq_dot_weight
        self.width = LevelWidth(init_width) if kernel == "rbf" else None
        self.critic = nn.Linear(backbone.feature_dim, 1) if objective == "kale" else None

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    @property
    def num_classes(self) -> int:
        """Classes of a conditional backbone (0: unconditional)."""
        label = getattr(self.backbone, "label", None)
        return label.num_classes if label is not None else 0

    def features(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """phi(x, t) or, conditional, phi(x, t, y): (N, ...) -> (N, D); t a scalar or (N,), y (N,) labels."""
        return self.backbone(x, t) if y is None else self.backbone(x, t, y)

    def kernel(self, t: float | Tensor):
        """The base kernel K of level t (a scalar), as a function of two feature matrices."""
        if self.kernel_name == "linear":
            return dv.linear_kernel
        if self.kernel_name == "rq":
            return partial(dv.rq_kernel, dot_weight=self.rq_dot_weight)
        device = next(self.parameters()).device
        return partial(dv.rbf_kernel, width=self.width(broadcast_time(t, 1, device)).squeeze(0))

    def critic_value(self, features: Tensor) -> Tensor:
        """KALE critic h = w . phi + b: (N, D) -> (N,)."""
        if self.critic is None:
            raise ValueError("this discriminator was built for MMD; the KALE critic needs model.objective = 'kale'")
        return self.critic(features).squeeze(-1)


def build_backbone(cfg: ModelConfig, data_shape: tuple[int, ...]) -> nn.Module:
    if cfg.backbone == "mlp":
        return FeatureMLP(math.prod(data_shape), cfg.feature_dim, cfg.width, cfg.depth, cfg.time_dim,
                          num_classes_of(cfg), cfg.pixel_features)
    if cfg.pixel_features:
        raise ValueError(f"model.pixel_features needs model.backbone = 'mlp', got {cfg.backbone!r}")
    if len(data_shape) != 3:
        raise ValueError(f"the unet backbone needs image data (C, H, W), got shape {data_shape}")
    return UNet(data_shape, cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks,
                cfg.attn_resolutions, cfg.head, feature_dim=cfg.feature_dim, num_classes=num_classes_of(cfg))


def num_classes_of(cfg: ModelConfig) -> int:
    """Label classes of the backbone: model.num_classes when model.conditional, else 0 (no label input)."""
    if not cfg.conditional:
        return 0
    if cfg.num_classes < 1:
        raise ValueError("model.conditional needs model.num_classes >= 1 (dmmd train sets it from the labels)")
    return cfg.num_classes


def build_discriminator(cfg: ModelConfig, data_shape: tuple[int, ...]) -> Discriminator:
    return Discriminator(build_backbone(cfg, data_shape), cfg.kernel, cfg.init_width, cfg.rq_dot_weight,
                         cfg.objective)
