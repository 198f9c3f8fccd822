"""Feature MLP for vectors: residual blocks modulated by a time embedding (FiLM).

Why FiLM: conditioning on t only at the input got the radius of 8 Gaussians but not its
modes; FiLM in every block reached them. The net returns features (N, feature_dim).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0, scale: float = 1000.0) -> Tensor:
    """Transformer-style features of t in [0, 1] (t scaled by 1000 as in DDPM): (N,) -> (N, dim).
    The fastest feature turns `scale` radians per unit of t, the slowest scale / max_period."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float().view(-1, 1) * freqs.view(1, -1)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Class labels -> vectors added to the time embedding: num_classes + 1 rows, the last one the
    null label (classifier-free guidance: one network conditional and unconditional)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a conditional network needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, n: int, device: torch.device) -> Tensor:
        """(n, dim) embeddings of labels y (n,) in 0..num_classes (num_classes = null); None: all null."""
        if y is None:
            y = torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y.to(device=device, dtype=torch.long).reshape(n))


def broadcast_time(t: Tensor | float, n: int, device: torch.device) -> Tensor:
    """A scalar or (n,) time as an (n,) float32 tensor."""
    t = torch.as_tensor(t, device=device, dtype=torch.float32)
    return t.expand(n) if t.ndim == 0 else t.reshape(n)


def distinct_times(t: Tensor | float, n: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The distinct times of a scalar or (n,) time as float32, and each input's row among them; the
    index is None when all n inputs share one time (the sampler's case): that row broadcasts."""
    t = torch.as_tensor(t, device=device, dtype=torch.float32)
    if t.numel() == 1:
        return t.reshape(1), None
    times, index = torch.unique(t.reshape(n), return_inverse=True)
    return (times, None) if times.numel() == 1 else (times, index)


def per_input(rows: Tensor, index: Tensor | None) -> Tensor:
    """Rows of a per-distinct-time tensor for each input (index from distinct_times; None: as is,
    one row each or one row broadcast to all)."""
    return rows if index is None else rows[index]


class FiLMBlock(nn.Module):
    def __init__(self, width: int, time_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(time_dim, 2 * width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, temb: Tensor, index: Tensor | None = None) -> Tensor:
        """temb holds one row per distinct time; index (N,) picks each input's row (None: one row each,
        or one row for all, broadcast)."""
        film = self.film(temb)
        scale, shift = per_input(film, index).chunk(2, dim=1)
        u = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(torch.nn.functional.silu(self.fc1(torch.nn.functional.silu(u))))


def pixel_quadratic(x: Tensor, quad: Tensor, lin: Tensor, bias: Tensor | None = None) -> Tensor:
    """Per-coordinate quadratic features (x * x) Q^T + x L^T (+ b): x (N, d), Q and L (k, d) -> (N, k).

    For weights w (k,) the input gradient of <w, features> is 2 (Q^T w) * x + L^T w: a diagonal
    term in x, so it can point along every coordinate. The gradient of anything behind a first
    layer of width < d lies in that layer's row space, whatever the rest of the net does."""
    out = (x * x) @ quad.T + x @ lin.T  # (N, k)
    return out if bias is None else out + bias


class PixelFeatures(nn.Module):
    """k features s(t) * pixel_quadratic(x): s(t) = 1 + a linear map of the time embedding (zero at
    init), so training can weigh them per noise level against the MLP's features."""

    def __init__(self, in_dim: int, num: int, time_dim: int):
        super().__init__()
        self.quad = nn.Linear(in_dim, num)
        self.lin = nn.Linear(in_dim, num, bias=False)
        self.scale = nn.Linear(time_dim, num)
        nn.init.zeros_(self.scale.weight)
        nn.init.zeros_(self.scale.bias)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """x (N, in_dim), temb (N, time_dim) one row per input, or (1, time_dim) for all -> (N, num)."""
        return (1 + self.scale(temb)) * pixel_quadratic(x, self.quad.weight, self.lin.weight, self.quad.bias)


class FeatureMLP(nn.Module):
    """phi(x, t) for inputs of any shape (N, ...) flattened to (N, in_dim) -> (N, feature_dim).

    pixel_features = k > 0: the last k of the feature_dim features are PixelFeatures of the input
    (the MLP gives the first feature_dim - k). Every input gradient of the MLP lies in the row space
    of `inp.weight` (rank <= width): with width < in_dim a witness gradient flow never moves the
    other directions (docs/pixel_features.md); the quadratic features reach every coordinate."""

    def __init__(self, in_dim: int, feature_dim: int = 128, width: int = 256, depth: int = 3,
                 time_dim: int = 128, num_classes: int = 0, pixel_features: int = 0):
        super().__init__()
        if not 0 <= pixel_features < feature_dim:
            raise ValueError(f"pixel_features must be in [0, feature_dim = {feature_dim}), got {pixel_features}")
        self.in_dim, self.feature_dim = in_dim, feature_dim
        self.time = TimeEmbedding(time_dim)
        self.inp = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(FiLMBlock(width, time_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, feature_dim - pixel_features))
        # created last: the other weights draw the same initial values as an unconditional net's
        self.label = LabelEmbedding(num_classes, time_dim) if num_classes else None
        self.pixel = PixelFeatures(in_dim, pixel_features, time_dim) if pixel_features else None

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """y: (N,) labels of a conditional net (num_classes = the null label; None: all null)."""
        flat = x.reshape(x.shape[0], -1)
        h = self.inp(flat)
        # a batch holds few distinct times (one per level): embed and modulate once per time
        times, index = distinct_times(t, x.shape[0], x.device)
        temb = self.time(times)
        if self.label is not None:  # the label beside t: one embedding row per input
            temb, index = per_input(temb, index) + self.label(y, x.shape[0], x.device), None
        for block in self.blocks:
            h = block(h, temb, index)
        if self.pixel is None:
            return self.out(h)
        return torch.cat([self.out(h), self.pixel(flat, per_input(temb, index))], dim=1)
