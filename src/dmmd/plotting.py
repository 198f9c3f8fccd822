"""Pictures of samples: an image grid (Pillow) or a 2-D scatter plot (matplotlib, Agg)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_bytes


def image_grid(images: np.ndarray, nrow: int | None = None, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) in [-1, 1] into one uint8 (rows, cols, C) array with padding."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    pixels = np.clip((images + 1.0) * 127.5, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = pixels[i]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def save_image_grid(path: str | Path, images: np.ndarray, nrow: int | None = None) -> None:
    from PIL import Image

    h = images.shape[-1]
    grid = image_grid(images, nrow, scale=max(1, 32 // h))
    mode_grid = grid[..., 0] if grid.shape[-1] == 1 else grid
    buffer = io.BytesIO()
    Image.fromarray(mode_grid).save(buffer, format="PNG")
    atomic_write_bytes(path, lambda fh: fh.write(buffer.getvalue()))


def save_scatter(path: str | Path, points: np.ndarray, reference: np.ndarray | None = None, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="lightgrey", label="data")
    ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=4)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda fh: fh.write(buffer.getvalue()))


def save_samples_picture(path: str | Path, samples: np.ndarray, kind: str, reference: np.ndarray | None = None,
                         title: str = "") -> None:
    """Image grid for image data (model scale [-1, 1]); scatter for points (the first two
    coordinates of longer vectors; a coordinate against zero for 1-D data)."""
    if kind == "image":
        save_image_grid(path, samples)
        return
    flat = samples.reshape(len(samples), -1)
    if flat.shape[1] == 1:
        flat = np.concatenate([flat, np.zeros_like(flat)], axis=1)
        reference = None if reference is None else np.concatenate([reference, np.zeros_like(reference)], axis=1)
    elif flat.shape[1] > 2:
        title = f"{title} (first two of {flat.shape[1]} coordinates)"
    save_scatter(path, flat[:, :2], None if reference is None else reference.reshape(len(reference), -1)[:, :2], title)
