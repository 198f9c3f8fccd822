"""`dmmd inpaint`: complete images under a mask with a trained model (any method) and score them.

Reads FILE.npz (array `x` in data space like user data files, optional integer labels `y`),
checks it against the checkpoint's data shape and range, completes the unknown pixels with the
replacement flow of `dmmd.math.inpaint`, and merges in data space, np.where(mask, generated, input),
so every known value is the input's, bit for bit. Writes into OUT, as one unit (runfolder's
claim_output / publish): completions.npz, inpaint.png (rows of originals / masked / completed)
and metrics.json.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dmmd.apps import guards
from dmmd.config import Config, ConfigError, DataConfig, check_flag
from dmmd.data.arrays import check_array_file
from dmmd.data.datasets import load_dataset
from dmmd.data.files import DataError
from dmmd.data.scaling import from_data_space, parse_range, to_data_space
from dmmd.evaluation.digits_net import load_classifier as digits_classifier
from dmmd.evaluation.fashion_net import load_classifier as fashion_classifier
from dmmd.evaluation.plotting import save_image_grid
from dmmd.math.inpaint import MASKS, RESAMPLE, MaskError, load_mask, replacement_for
from dmmd.methods import ddpm, flow_matching
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.resources import check_sampling
from dmmd.methods.sample import calibrate, check_sampler, needs_calibration, nfe, sample
from dmmd.runtime.checkpoint import atomic_write_bytes, atomic_write_text
from dmmd.runtime.device import resolve_device
from dmmd.runtime.runfolder import claim_output, publish

OUTPUT_FILES = ("completions.npz", "inpaint.png", "metrics.json")
IMAGE_SETS = ("mnist", "fashion_mnist", "cifar10", "folder")
GRID_COLUMNS = 16  # images shown in inpaint.png
# DMMD inpaints with the exact sampler unless --sampler says otherwise: measured on digits
# (docs/inpainting.md), the replay (approx) sampler's stored particle means belong to the
# unconditional flow, and resampling did not help it
DMMD_SAMPLER = "exact"
# a gradient-normalised DMMD step (sample.step_norm = "gradient") inpaints best about 3x longer than it
# samples: digits preset weights, 297 training digits, r 0.06 / 0.1 / 0.15 / 0.2 / 0.3 gave classifier
# agreement 0.77 / 0.85 / 0.86 / 0.86 / 0.86 (mean of both masks; benchmarks/results/inpaint_presets.md)
INPAINT_GRADIENT_STEP = 0.2 / 0.06


def data_range(data: DataConfig | str) -> tuple[float, float] | None:
    """The range of the data space's values (None: unbounded, toys and user arrays kept as they are;
    a user's array file scaled from [LO, HI] is bounded by them)."""
    name = data if isinstance(data, str) else data.name
    if name == "file" and not isinstance(data, str):
        return parse_range(data.scale)
    if name == "digits":
        return 0.0, 16.0
    return (0.0, 255.0) if name in IMAGE_SETS else None


def check_model(cfg: Config) -> None:
    """ConfigError for models whose coordinates are not pixels or whose process mixes pixels."""
    if cfg.model.latent:
        raise ConfigError("inpainting needs a model of pixels: this checkpoint models the latents of an autoencoder "
                          f"({cfg.model.latent}), whose coordinates are not pixels, so known pixels cannot be held")
    if cfg.method != "fm" and cfg.process.kind != "vp":
        raise ConfigError(f"inpainting by replacement needs a pixelwise Gaussian process; this checkpoint uses "
                          f"process.kind = {cfg.process.kind!r} (a blur mixes known and unknown pixels)")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    import zipfile


    if not path.is_file():
        raise DataError(f"--images {path}: file does not exist")
    if path.suffix != ".npz":
        raise DataError(f"--images {path}: expected an .npz file holding an array 'x' (and optional labels 'y')")
    check_array_file(path, "x")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise DataError(f"--images {path}: expected an array named 'x', found {npz.files or 'no arrays'}")
            return {k: npz[k] for k in ("x", "y") if k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"--images {path}: not a readable .npz file ({' '.join(str(err).split())[:100]})") from None


def read_images(path: str | Path, data_name: DataConfig | str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """(x as stored, labels or None), checked: numeric, finite, of shape (n, *shape) or
    (n, prod(shape)), within the data set's range; labels 1-D non-negative integers, one per image."""
    path = Path(path)
    arrays = _load_npz(path)
    x, y = arrays["x"], arrays.get("y")
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"--images {path}: 'x' must hold real numbers, found dtype {x.dtype}")
    size = math.prod(shape)
    if x.ndim < 2 or len(x) < 1 or (tuple(x.shape[1:]) != tuple(shape) and tuple(x.shape[1:]) != (size,)):
        raise DataError(f"--images {path}: 'x' has shape {x.shape}; this model's data needs (n, "
                        f"{', '.join(map(str, shape))})" + (f" or (n, {size})" if len(shape) > 1 else "")
                        + " with n >= 1")
    if not np.isfinite(x).all():
        raise DataError(f"--images {path}: 'x' contains NaN or Inf values")
    bounds = data_range(data_name)
    if bounds is not None and (x.min() < bounds[0] or x.max() > bounds[1]):
        raise DataError(f"--images {path}: values must lie in [{bounds[0]:g}, {bounds[1]:g}] (the data space of "
                        f"{getattr(data_name, 'name', data_name)!r}), found [{float(x.min()):g}, {float(x.max()):g}]")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
            raise DataError(f"--images {path}: labels 'y' must be {len(x)} non-negative integers (one per image), "
                            f"found shape {y.shape} of {y.dtype}")
    return x, y


def to_model(x: np.ndarray, data_name: DataConfig | str, shape: tuple[int, ...]) -> Tensor:
    """Images as stored -> (n, *shape) float32 in the model's scale."""
    return from_data_space(data_name, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).reshape(-1, *shape)


def merge(x: np.ndarray, generated: Tensor, mask: np.ndarray, data_name: DataConfig | str) -> np.ndarray:
    """np.where(mask, generated, x) in data space and x's layout: generated (n, *shape) in model
    scale, clipped to the data range; known values are x's own (dtype wide enough for both)."""
    gen = to_data_space(data_name, generated.detach().cpu().double()).numpy()
    bounds = data_range(data_name)
    if bounds is not None:
        gen = np.clip(gen, *bounds)
    dtype = np.result_type(x.dtype, np.float32)
    gen = gen.reshape(x.shape).astype(dtype)
    return np.where(mask.reshape((1, *x.shape[1:])), gen, x.astype(dtype))


def resample_count(cfg: Config, repeats: int | None) -> int:
    return RESAMPLE[cfg.method] if repeats is None else repeats


def evaluations(cfg: Config, repeats: int) -> int:
    """Network evaluations of one completion: resampling repeats every level (DMMD) or step (flow
    matching, DDPM) but the one that ends the chain."""

    if repeats == 1:
        return nfe(cfg)
    if cfg.method == "fm":
        return flow_matching.num_evaluations(cfg.sample.num_steps, cfg.sample.sampler, repeats)
    if cfg.method == "ddpm":
        return ddpm.num_evaluations(cfg.sample.num_steps, True, repeats)
    return ((cfg.sample.num_levels - 1) * repeats + 1) * cfg.sample.steps_per_level


def complete(disc, cfg: Config, stats: dict, process, x: Tensor, mask: np.ndarray, seed: int, batch: int,
             reference: Tensor | None = None, device="cpu", progress=None, noise_mode: str = "auto",
             repeats: int | None = None) -> Tensor:
    """Completions (n, *shape) in model space of x (n, *shape) under mask (True = generated):
    completion i depends only on (seed, i) for population-free samplers. repeats: RePaint's
    resampling (None: the method's default, inpaint.RESAMPLE)."""

    shape = tuple(x.shape[1:])
    m = torch.from_numpy(np.ascontiguousarray(mask)).to(device)
    out = []
    for start in range(0, len(x), batch):
        xb = x[start:start + batch].to(device)
        known = replacement_for(cfg.method, process, xb, m, noise_mode, resample_count(cfg, repeats))
        out.append(sample(disc, cfg, stats, process, shape, len(xb), seed, reference, start=start, device=device,
                          progress=progress, known=known).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------ metrics
def _classifier(data_name: DataConfig | str, shape: tuple[int, ...]):
    """The shipped independent classifier for this data set, or None."""
    if data_name == "digits" and math.prod(shape) == 64:
        return digits_classifier()
    if data_name == "fashion_mnist" and math.prod(shape) == 784:
        return fashion_classifier()
    return None


@torch.no_grad()
def _predict(net, x: Tensor) -> Tensor:
    return torch.cat([net(b.float()).argmax(1) for b in x.split(2000)])


def _bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """The same bits when the dtypes agree; otherwise b's values, exactly, in a's dtype."""
    if a.dtype == b.dtype:
        return a.tobytes() == b.tobytes()
    return bool((a == b.astype(a.dtype)).all() and (b.astype(a.dtype).astype(b.dtype) == b).all())


def inpaint_metrics(x: np.ndarray, completed: np.ndarray, mask: np.ndarray, labels: np.ndarray | None,
                    data_name: DataConfig | str, shape: tuple[int, ...]) -> dict:
    """Known values unchanged (a count), MSE of the unknown values (model scale [-1, 1] for image
    data, and data space), and the independent classifier's labels for completions, originals and
    the masked inputs (unknown pixels at the data's lowest value) when one exists for the data."""
    flat_mask = np.broadcast_to(mask.reshape((1, *x.shape[1:])), x.shape)
    same = completed[~flat_mask] == x.astype(completed.dtype)[~flat_mask]
    x_model, c_model = to_model(x, data_name, shape), to_model(completed, data_name, shape)
    unknown = torch.from_numpy(np.ascontiguousarray(mask)).expand_as(x_model)
    report = {"num_images": len(x), "unknown_fraction": float(mask.mean()),
              "known_values_checked": int(same.size), "known_values_changed": int(same.size - same.sum()),
              "known_bit_equal": _bit_equal(completed[~flat_mask], x[~flat_mask]),
              "mse_unknown_model_scale": float((c_model - x_model)[unknown].double().square().mean()),
              "mse_unknown_data_space": float(((completed - x.astype(np.float64))[flat_mask] ** 2).mean())}
    net = _classifier(data_name if isinstance(data_name, str) else data_name.name, shape)
    if net is None:
        return report
    masked = torch.where(unknown, torch.full_like(x_model, -1.0), x_model)
    pred_c, pred_x, pred_m = _predict(net, c_model), _predict(net, x_model), _predict(net, masked)
    report["classifier_agreement_with_original"] = float((pred_c == pred_x).double().mean())
    if labels is not None:
        y = torch.from_numpy(labels.astype(np.int64))
        report.update({"accuracy_completed": float((pred_c == y).double().mean()),
                       "accuracy_original": float((pred_x == y).double().mean()),
                       "accuracy_masked_input": float((pred_m == y).double().mean())})
    return report


def save_picture(path: Path, x: np.ndarray, completed: np.ndarray, mask: np.ndarray, data_name: DataConfig | str,
                 shape: tuple[int, ...], title: str) -> None:
    """Rows of originals, masked inputs (unknown pixels grey) and completions, GRID_COLUMNS wide."""

    k = min(GRID_COLUMNS, len(x))
    orig, comp = to_model(x[:k], data_name, shape), to_model(completed[:k], data_name, shape)
    masked = torch.where(torch.from_numpy(np.ascontiguousarray(mask)), torch.zeros_like(orig), orig)
    rows = torch.cat([orig, masked, comp]).clamp(-1, 1).numpy()
    save_image_grid(path, rows, nrow=k, title=title)


# -------------------------------------------------------------------------------- the command
def _sampling_inputs(disc, cfg: Config, stats: dict, process, device, progress: bool):
    """(stats, reference): level statistics and a replay made now when the sampler settings
    (e.g. --nfe) differ from the stored ones, and reference data for the exact sampler with a
    non-linear kernel; both need the training data, loaded only then."""
    from tqdm.auto import tqdm


    settings = flow_settings(cfg.sample)
    calib = needs_calibration(disc, cfg, stats)
    wants_ref = cfg.method == "dmmd" and cfg.sample.sampler == "exact" and cfg.model.kernel != "linear"
    if not (calib or wants_ref):
        return stats, None
    data = load_dataset(cfg.data, cfg.seed)
    reference = None
    if wants_ref:
        perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
        reference = data.train[perm[: cfg.sample.num_reference]].to(device)
    if calib:
        with tqdm(total=settings.num_steps, desc="replay", disable=not progress, dynamic_ncols=True) as bar:
            stats = calibrate(disc, cfg, data.train.to(device), process, stats, settings, bar)
    return stats, reference


def run(checkpoint: str, images: str, mask_spec: str, out: str, seed: int = 0, configure=None,
        batch_size: int = 4096, device_name: str = "auto", progress: bool = True, sampler: str | None = None,
        repeats: int | None = None) -> dict:
    """The whole command; returns the metrics written to OUT/metrics.json. configure(cfg) applies
    the command line's sampler options (--nfe, --sampler, --set) to the checkpoint's config.
    sampler: the --sampler given, or None for DMMD_SAMPLER's choice; repeats: --resample."""
    from tqdm.auto import tqdm


    for name, value in (("checkpoint", checkpoint), ("images", images), ("mask_spec", mask_spec), ("out", out)):
        guards.path(name, value)  # a str or Path (the Python API's callers): one line naming the argument
    seed, batch_size = guards.integer("seed", seed), guards.integer("batch_size", batch_size)
    if repeats is not None:
        repeats = guards.integer("repeats", repeats)
    check_flag("seed", seed)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    device = resolve_device(device_name)
    cfg, disc, stats, payload = load_model(checkpoint, device)
    if cfg.method == "dmmd" and cfg.sample.step_norm == "gradient":  # before --nfe and --set, which still apply
        cfg.sample.step_size *= INPAINT_GRADIENT_STEP
    cfg = configure(cfg) if configure is not None else cfg
    if sampler is None and cfg.method == "dmmd" and cfg.sample.sampler == "approx":
        cfg.sample.sampler = DMMD_SAMPLER
    repeats = resample_count(cfg, repeats)
    if repeats < 1:
        raise ConfigError(f"--resample must be >= 1, got {repeats}")
    check_model(cfg)
    shape = tuple(payload["data_shape"])
    try:
        if mask_spec not in MASKS and Path(mask_spec).suffix == ".npy" and Path(mask_spec).is_file():
            check_array_file(mask_spec, max_values=math.prod(shape))  # its header, before numpy allocates
        mask = load_mask(mask_spec, shape)
    except MaskError as err:
        raise ConfigError(str(err)) from None
    x, labels = read_images(images, cfg.data, shape)
    exact = cfg.method == "dmmd" and cfg.sample.sampler == "exact"
    if exact and len(x) < 2:
        raise ConfigError("the exact sampler moves a population: --images must hold at least 2 images")
    batch = len(x) if exact else min(batch_size, len(x))
    check_sampling(cfg, shape, len(x), batch, device)
    staging = claim_output(out, "dmmd inpaint", OUTPUT_FILES)  # checked and locked before any compute
    process = build_process(cfg.process)
    stats, reference = _sampling_inputs(disc, cfg, stats, process, device, progress)
    check_sampler(disc, cfg, stats, reference)
    started = time.time()
    cost = evaluations(cfg, repeats)
    with tqdm(total=cost * -(-len(x) // batch), desc="inpaint", disable=not progress, dynamic_ncols=True) as bar:
        generated = complete(disc, cfg, stats, process, to_model(x, cfg.data, shape), mask, seed, batch,
                             reference, device, bar, repeats=repeats)
    # loud, with the count: a diverged flow (a step size far too large, NaN weights) completes nothing
    diverged = guards.warn_nonfinite(generated, "completions", "lower sample.step_size or check the checkpoint")
    completed = merge(x, generated, mask, cfg.data)
    report = {"method": cfg.method, "sampler": cfg.sample.sampler, "nfe": cost, "resample": repeats, "seed": seed,
              **({"step_size": cfg.sample.step_size, "step_norm": cfg.sample.step_norm} if cfg.method == "dmmd" else {}),
              "mask": str(mask_spec), "seconds": round(time.time() - started, 3), "nonfinite_completions": diverged,
              "null_label": bool(cfg.model.conditional),  # a conditional model completes through its null label
              **inpaint_metrics(x, completed, mask, labels, cfg.data, shape)}
    atomic_write_bytes(staging / "completions.npz", lambda fh: np.savez(fh, x=completed, mask=mask))
    if len(shape) == 3:
        save_picture(staging / "inpaint.png", x, completed, mask, cfg.data, shape,
                     f"{cfg.method} {cfg.sample.sampler}, NFE {cost}, mask {Path(mask_spec).name}: "
                     "originals / masked / completed")
    atomic_write_text(staging / "metrics.json", json.dumps(report, indent=2) + "\n")
    publish(staging)
    return report
