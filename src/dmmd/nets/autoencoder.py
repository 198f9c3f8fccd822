"""A plain convolutional autoencoder for latent modelling (docs/latent.md).

Encoder: stride-2 3x3 convolutions (channels e.g. 1 -> 32 -> 64 -> 128), each halving the size
(rounding up: 28 -> 14 -> 7 -> 4, 8 -> 4 -> 2 -> 1, 64 -> 32 -> 16 -> 8), then a linear map to
`latent_dim` values. Decoder: the mirror image, a linear map back to the smallest feature map
and stride-2 transposed convolutions whose output padding restores each encoder size exactly
(out = 2 in - 1 + p, p in {0, 1}), ending in a tanh (data in [-1, 1]).

The latents the generative models see are standardised per coordinate,
z = (e(x) - mean) / std, with mean and std over the training set stored as buffers, so they
travel with the weights (and with their hash, the autoencoder's identity).
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor, nn


def halved(size: int, times: int) -> list[int]:
    """[size, ceil(size / 2), ...]: the spatial sizes after each stride-2 convolution (k 3, pad 1)."""
    sizes = [size]
    for _ in range(times):
        sizes.append((sizes[-1] - 1) // 2 + 1)
    return sizes


class ConvAutoencoder(nn.Module):
    """encode: (N, C, H, W) in [-1, 1] -> raw latents (N, L); decode: the way back."""

    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 32, channels: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"the autoencoder needs images of shape (C, H, W), got {tuple(shape)}")
        self.shape, self.latent_dim, self.channels = tuple(shape), latent_dim, tuple(channels)
        c, h, w = self.shape
        hs, ws = halved(h, len(channels)), halved(w, len(channels))
        widths = (c, *channels)
        enc: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(channels[-1] * hs[-1] * ws[-1], latent_dim))
        self.inner = (channels[-1], hs[-1], ws[-1])
        self.expand = nn.Linear(latent_dim, math.prod(self.inner))
        dec: list[nn.Module] = []
        for i in range(len(channels), 0, -1):  # from the smallest map back to the input size
            pad = (hs[i - 1] - (2 * hs[i] - 1), ws[i - 1] - (2 * ws[i] - 1))
            dec.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 3, stride=2, padding=1, output_padding=pad))
            dec.append(nn.SiLU() if i > 1 else nn.Tanh())
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))

    def encode(self, x: Tensor) -> Tensor:
        """Raw latents (N, L) of images (N, C, H, W)."""
        return self.encoder(x)

    def decode(self, e: Tensor) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] from raw latents (N, L)."""
        return self.decoder(self.expand(e).view(-1, *self.inner))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction, raw latents)."""
        e = self.encode(x)
        return self.decode(e), e

    def standardise(self, e: Tensor) -> Tensor:
        return (e - self.latent_mean) / self.latent_std

    def unstandardise(self, z: Tensor) -> Tensor:
        return z * self.latent_std + self.latent_mean

    def set_scale(self, mean: Tensor, std: Tensor) -> None:
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)


def reconstruction_loss(model: ConvAutoencoder, x: Tensor, latent_l2: float) -> tuple[Tensor, dict]:
    """mean_i ||d(e(x_i)) - x_i||^2 / (C H W) + latent_l2 mean_i ||e(x_i)||^2 (raw latents)."""
    recon, e = model(x)
    mse = (recon - x).square().mean()
    l2 = e.square().sum(1).mean()
    return mse + latent_l2 * l2, {"mse": mse.detach(), "latent_sq": l2.detach()}


def moments(encodings) -> tuple[Tensor, Tensor]:
    """Per-coordinate mean and standard deviation (population, 1/N) of latent batches (n_i, L),
    accumulated in float64: standardised training latents have mean 0 and std 1 exactly."""
    count, total, squares = 0, None, None
    for e in encodings:
        e = e.double()
        count += len(e)
        total = e.sum(0) if total is None else total + e.sum(0)
        squares = e.square().sum(0) if squares is None else squares + e.square().sum(0)
    if not count:
        raise ValueError("no latents to take moments of")
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0.0)
    return mean.float(), var.sqrt().clamp_min(1e-8).float()


def weights_sha256(state: dict[str, Tensor]) -> str:
    """The identity of a state dict: sha256 over its names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
