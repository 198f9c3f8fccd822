"""U-Net feature backbone in the DDPM/NCSN++ family for images.

Sinusoidal time embedding, residual blocks with GroupNorm and a time-embedding shift/scale,
self-attention at chosen resolutions, configurable width and channel multipliers. The head is
'flatten' (the full output map as a vector, the paper's choice), 'pool' (global average of the
last feature map projected to feature_dim), or 'epsilon' (an image-shaped output, for the DDPM
baseline on the same backbone).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from dmmd.nets.mlp import LabelEmbedding, TimeEmbedding, broadcast_time


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, time_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(time_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.temb(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(nn.functional.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over pixels, written out (not fused SDPA) because the gradient
    penalty differentiates through it twice and fused CPU kernels have no double backward."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)  # each (N, C, HW)
        weights = torch.softmax(q.transpose(1, 2) @ k / c**0.5, dim=-1)  # (N, HW, HW)
        out = (v @ weights.transpose(1, 2)).reshape(n, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """phi(x, t): images (N, C, H, W) -> features (N, D) ('flatten'/'pool') or (N, C, H, W) ('epsilon')."""

    def __init__(self, image_shape: Sequence[int], base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
                 attn_resolutions: Sequence[int] = (16,), head: str = "flatten",
                 out_channels: int | None = None, feature_dim: int = 256, dropout: float = 0.0,
                 num_classes: int = 0):
        super().__init__()
        c_img, height, width = image_shape
        if head not in ("flatten", "pool", "epsilon"):
            raise ValueError(f"head must be 'flatten', 'pool' or 'epsilon', got {head!r}")
        if height % (2 ** (len(channel_mults) - 1)) or width % (2 ** (len(channel_mults) - 1)):
            raise ValueError(f"image size {height}x{width} must be divisible by 2^{len(channel_mults) - 1}")
        self.head = head
        out_channels = out_channels or c_img
        time_dim = 4 * base_channels
        self.time = TimeEmbedding(time_dim)
        self.inp = nn.Conv2d(c_img, base_channels, 3, padding=1)
        chans, res = [base_channels], height
        self.down = nn.ModuleList()
        c = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([ResBlock(c, base_channels * mult, time_dim, dropout)])
                c = base_channels * mult
                if res in attn_resolutions:
                    block.append(Attention(c))
                self.down.append(block)
                chans.append(c)
            if level < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                chans.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, time_dim, dropout), Attention(c), ResBlock(c, c, time_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(c + chans.pop(), base_channels * mult, time_dim, dropout)])
                c = base_channels * mult
                if res in attn_resolutions:
                    block.append(Attention(c))
                self.up.append(block)
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(c, c, 3, padding=1)]))
                res *= 2
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1))
        self.pool_proj = nn.Linear(c, feature_dim) if head == "pool" else None
        self.feature_dim = feature_dim if head == "pool" else out_channels * height * width
        # created last: the other weights draw the same initial values as an unconditional net's
        self.label = LabelEmbedding(num_classes, time_dim) if num_classes else None

    @staticmethod
    def _run_block(block: nn.ModuleList, h: Tensor, temb: Tensor) -> Tensor:
        for layer in block:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """y: (N,) labels of a conditional net (num_classes = the null label; None: all null)."""
        temb = self.time(broadcast_time(t, x.shape[0], x.device))
        if self.label is not None:  # the label beside t, added to the embedding that drives FiLM
            temb = temb + self.label(y, x.shape[0], x.device)
        h = self.inp(x)
        skips = [h]
        for block in self.down:
            h = self._run_block(block, h, temb)
            skips.append(h)
        h = self._run_block(self.mid, h, temb)
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = self._run_block(block, torch.cat([h, skips.pop()], dim=1), temb)
            else:
                h = self._run_block(block, h, temb)
        if self.head == "pool":
            return self.pool_proj(nn.functional.silu(h).mean(dim=(2, 3)))
        h = self.out(h)
        return h if self.head == "epsilon" else h.flatten(1)
