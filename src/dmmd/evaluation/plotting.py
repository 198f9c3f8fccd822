"""Pictures of samples and runs: image grids (Pillow) with a title, one PNG per sample (for FID
tools), scatter plots (matplotlib, Agg; pairwise panels for more than 2 coordinates), loss curves."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from dmmd.runtime.checkpoint import atomic_write_bytes


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


MAX_GRID = 100  # images in one grid: more are unreadable (a 2000-sample grid is a grey carpet)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] to bytes (N, H, W, C), rounded and clipped."""
    return np.clip((images + 1.0) * 127.5, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png_folder(folder: str | Path, images: np.ndarray) -> list[Path]:
    """One PNG per image (N, C, H, W) in [-1, 1]: folder/000000.png, ... (8-bit grey for C = 1,
    RGB for C = 3), the layout clean-fid, pytorch-fid and torch-fidelity read. PNGs of this naming
    beyond the new count (an earlier, larger set) are removed; other files are left alone."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {images.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(to_uint8(images)):
        path = folder / f"{i:06d}.png"
        data = _png_bytes(pixels)
        atomic_write_bytes(path, lambda fh: fh.write(data))
        paths.append(path)
    # an earlier, larger set written here: its extra PNGs would be counted with these by FID tools
    for old in folder.glob("[0-9]" * 6 + ".png"):
        if int(old.stem) >= len(paths) and old.is_file() and not old.is_symlink():
            old.unlink()
    return paths


def titled(grid: np.ndarray, title: str) -> np.ndarray:
    """The grid (rows, cols, C) with a white strip above it holding `title` in black."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    strip = Image.new("RGB" if grid.shape[-1] == 3 else "L", (max(grid.shape[1], int(font.getlength(title)) + 8), 18), 255)
    ImageDraw.Draw(strip).text((4, 2), title, fill=0, font=font)
    width = strip.size[0]
    body = np.full((grid.shape[0], width, grid.shape[-1]), 255, dtype=np.uint8)
    body[:, : grid.shape[1]] = grid
    head = np.asarray(strip).reshape(18, width, grid.shape[-1])
    return np.concatenate([head, body], axis=0)


def save_image_grid(path: str | Path, images: np.ndarray, nrow: int | None = None, title: str = "") -> None:
    """At most MAX_GRID images (the first ones) in a grid, scaled to about 32 pixels a tile, titled."""
    h = images.shape[-1]
    grid = image_grid(images[:MAX_GRID], nrow, scale=max(1, 32 // h))
    if title:
        grid = titled(grid, title)
    data = _png_bytes(grid)
    atomic_write_bytes(path, lambda fh: fh.write(data))


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


PAIRWISE_DIMS = 4  # coordinates shown in the pairwise panels of data with more than 2


def pairwise_figure(points: np.ndarray, reference: np.ndarray | None = None, title: str = ""):
    """Scatter panels of every pair among the first PAIRWISE_DIMS coordinates (lower triangle),
    with each coordinate's histogram on the diagonal; a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = min(points.shape[1], PAIRWISE_DIMS)
    fig, axes = plt.subplots(d, d, figsize=(2.2 * d, 2.2 * d), dpi=100, squeeze=False)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                if reference is not None:
                    ax.hist(reference[:, i], bins=40, color="lightgrey", density=True)
                ax.hist(points[:, i], bins=40, color="tab:blue", histtype="step", density=True)
            else:
                if reference is not None:
                    ax.scatter(reference[:, j], reference[:, i], s=1, c="lightgrey")
                ax.scatter(points[:, j], points[:, i], s=1, c="tab:blue")
            ax.tick_params(labelsize=6)
            if i == d - 1:
                ax.set_xlabel(f"x{j}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"x{i}", fontsize=8)
    shown = f"coordinates 0-{d - 1} of {points.shape[1]}" if points.shape[1] > d else f"{d} coordinates"
    shown += "; grey: data" if reference is not None else ""
    fig.suptitle(f"{title} ({shown})" if title else shown, fontsize=9)
    return fig


def save_pairwise(path: str | Path, points: np.ndarray, reference: np.ndarray | None = None, title: str = "") -> None:
    import matplotlib.pyplot as plt

    fig = pairwise_figure(points, reference, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda fh: fh.write(buffer.getvalue()))


def save_samples_picture(path: str | Path, samples: np.ndarray, kind: str, reference: np.ndarray | None = None,
                         title: str = "") -> None:
    """Image grid of the first MAX_GRID images for image data (model scale [-1, 1]), titled; a
    scatter plot over the data for 2-D points (a coordinate against zero for 1-D), pairwise panels
    for more coordinates."""
    if kind == "image":
        save_image_grid(path, samples, title=title)
        return
    flat = samples.reshape(len(samples), -1)
    ref = None if reference is None else reference.reshape(len(reference), -1)
    if flat.shape[1] > 2:
        save_pairwise(path, flat, ref, title)
        return
    if flat.shape[1] == 1:
        flat = np.concatenate([flat, np.zeros_like(flat)], axis=1)
        ref = None if ref is None else np.concatenate([ref, np.zeros_like(ref)], axis=1)
    save_scatter(path, flat, ref, title)


def _robust_limits(ax, values: np.ndarray) -> None:
    """y limits from the 2nd to the 98th percentile (with a margin), so one outlier cannot squash the curve."""
    finite = values[np.isfinite(values)]
    if len(finite) < 10:
        return
    lo, hi = np.percentile(finite, [2, 98])
    if hi > lo:
        ax.set_ylim(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo))


def save_loss_curves(path: str | Path, records: list[dict], title: str = "") -> None:
    """Training losses (every term of the 'train' records of metrics.jsonl, one panel each) and the
    held-out loss ('val' records) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind", "train") == "train" and "loss" in r]
    val = [r for r in records if r.get("kind") == "val" or ("val_loss" in r and "loss" not in r)]
    skip = {"step", "elapsed_s", "kind", "steps_per_s", "grad_norm", "skipped"}
    terms = [k for k in (train[0] if train else {}) if k not in skip and not k.endswith("_mean")
             and isinstance(train[0][k], (int, float))]
    panels = terms + (["val_loss"] if val else [])
    if not panels:
        raise ValueError("no loss records to plot")
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 1.9 * len(panels)), dpi=100, sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], panels):
        rows = val if key == "val_loss" else train
        # the mean over each logging interval where the records have it (older runs: the logged step's value)
        shown = f"{key}_mean" if key != "val_loss" and all(f"{key}_mean" in r for r in rows) else key
        values = np.array([r.get(shown, np.nan) for r in rows], dtype=float)
        ax.plot([r["step"] for r in rows], values, "o-" if key == "val_loss" else "-",
                ms=3, lw=1, color="tab:orange" if key == "val_loss" else "tab:blue")
        ax.set_ylabel("held-out loss" if key == "val_loss" else key + (" (mean)" if shown != key else ""), fontsize=8)
        _robust_limits(ax, values)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda fh: fh.write(buffer.getvalue()))
