"""Sample-diversity diagnostics: collapse, near-duplicates, copying, mode coverage.

Accuracy scores (share of points near a mode, FID) do not see collapse: a sampler can put
every particle on a mode while leaving only a handful of distinct points (docs/sampling.md, "Noise in the flow").
These functions measure diversity beside accuracy. They take torch tensors or numpy arrays
of shape (N, D), compute in float64 with chunked ``torch.cdist`` (no full N x M matrix) and
return python floats or dicts of them. The distance helpers here are shared with metrics.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

_BLOCK_ELEMENTS = 1 << 24  # entries of one distance block (~128 MB in float64)
_EXACT = "donot_use_mm_for_euclid_dist"  # exact distances: copies are at distance 0.0
_FAST = "use_mm_for_euclid_dist"  # BLAS; error ~1e-8 |x| near d = 0 (d^2 to ~1e-16 |x|^2)
_FAST_FROM_DIM = 16  # the matrix-product path is faster from about D = 16 (3x at D = 64, slower at D = 2)


def as_float64_matrix(x: Any, name: str = "x") -> torch.Tensor:
    """Return ``x`` as a float64 CPU tensor of shape (N, D), checking shape and finiteness."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array (N, D), found shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return t


def median(values: torch.Tensor) -> float:
    """Median with the mean of the two middle values for even counts (numpy's, not torch's lower one)."""
    return float(np.median(values.detach().cpu().numpy()))


def cdist_mode(dim: int, exact: bool = False) -> str:
    """torch.cdist compute_mode: exact below D = 16 (where it is also faster) or when asked."""
    return _EXACT if exact or dim < _FAST_FROM_DIM else _FAST


def rows_per_block(m: int) -> int:
    """Rows of a (rows, m) distance block holding at most _BLOCK_ELEMENTS entries."""
    return max(1, _BLOCK_ELEMENTS // max(m, 1))


def pairwise_block_sum(
    x: torch.Tensor, y: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], exact: bool = True
) -> float:
    """sum_{i,j} fn(||x_i - y_j||) over all pairs, in row chunks; x (N, D), y (M, D).

    exact=False uses matrix-product distances (faster; fine when fn depends on d^2 only).
    """
    total = 0.0
    step = rows_per_block(y.shape[0])
    mode = cdist_mode(x.shape[1], exact)
    for i in range(0, x.shape[0], step):
        total += float(fn(torch.cdist(x[i : i + step], y, compute_mode=mode)).sum())  # (c, M)
    return total


def kth_nearest_distance(x: Any, reference: Any | None = None, k: int = 1) -> torch.Tensor:
    """d_k(x_i) = distance from x_i to its k-th nearest point of ``reference``, shape (N,).

    With ``reference=None`` the reference is x itself and x_i is excluded (nearest OTHER point;
    exact copies of x_i count, at distance 0). For D >= 16 candidates are chosen with fast float32
    matrix-product distances and their distances recomputed exactly in float64 (copies give exactly
    0.0); a candidate can differ from the true nearest only among near-ties (relative gap ~1e-3).
    """
    xs = as_float64_matrix(x, "x")
    same = reference is None
    ref = xs if same else as_float64_matrix(reference, "reference")
    if xs.shape[1] != ref.shape[1]:
        raise ValueError(f"x and reference: expected the same dimension, found {xs.shape[1]} and {ref.shape[1]}")
    available = ref.shape[0] - (1 if same else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k: expected 1 <= k <= {available} (reference points available), found {k}")
    out = torch.empty(xs.shape[0], dtype=torch.float64)
    step = rows_per_block(ref.shape[0])
    fast = cdist_mode(xs.shape[1]) == _FAST  # candidates from float32 matrix-product distances (2x faster)
    xs_c, ref_c = (xs.float(), ref.float()) if fast else (xs, ref)
    for i in range(0, xs.shape[0], step):
        chunk = xs[i : i + step]  # (c, D)
        d = torch.cdist(xs_c[i : i + step], ref_c, compute_mode=cdist_mode(xs.shape[1]))  # (c, M)
        if same:
            rows = torch.arange(d.shape[0])
            d[rows, rows + i] = math.inf
        idx = d.argmin(1, keepdim=True) if k == 1 else torch.topk(d, k, dim=1, largest=False).indices  # (c, k)
        out[i : i + step] = (chunk[:, None, :] - ref[idx]).norm(dim=-1).max(1).values  # k-th of the k nearest
    return out


# ----------------------------------------------------------------------------- diversity


def distinct_share(samples: Any, resolution: float) -> float:
    """#unique rows of round(x / resolution) / N: share of samples distinct on a grid of that step.

    Points closer than ``resolution`` usually share a cell (two points can straddle a cell
    boundary); bit-identical copies always do.
    """
    x = as_float64_matrix(samples, "samples")
    if not resolution > 0:
        raise ValueError(f"resolution: expected > 0, found {resolution}")
    cells = torch.round(x / resolution)  # (N, D)
    return torch.unique(cells, dim=0).shape[0] / x.shape[0]


def median_nn_distance(x: Any) -> float:
    """median_i min_{j != i} ||x_i - x_j||: median distance to the nearest OTHER point (N >= 2)."""
    xs = as_float64_matrix(x, "x")
    if xs.shape[0] < 2:
        raise ValueError(f"x: expected at least 2 rows, found {xs.shape[0]}")
    return median(kth_nearest_distance(xs, k=1))


def near_duplicate_share(samples: Any, threshold: float) -> float:
    """(1/N) #{i : min_{j != i} ||x_i - x_j|| < threshold}: share of samples with a near-copy."""
    x = as_float64_matrix(samples, "samples")
    if x.shape[0] < 2:
        raise ValueError(f"samples: expected at least 2 rows, found {x.shape[0]}")
    if not threshold > 0:
        raise ValueError(f"threshold: expected > 0, found {threshold}")
    return float((kth_nearest_distance(x, k=1) < threshold).double().mean())


def median_distance_to_set(samples: Any, reference: Any) -> float:
    """median_i min_j ||x_i - r_j||: median distance from each sample to the nearest reference point."""
    return median(kth_nearest_distance(samples, reference, k=1))


def rms_radius(x: Any) -> float:
    """sqrt(mean_i ||x_i - mean(x)||^2): root-mean-square distance to the centre of mass."""
    xs = as_float64_matrix(x, "x")
    return float((xs - xs.mean(0)).square().sum(1).mean().sqrt())


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.nan if num == 0 else math.inf


def diversity_report(
    samples: Any,
    train: Any,
    heldout: Any,
    resolution: float | None = None,
    near_duplicate_threshold: float | None = None,
    heldout_nn: torch.Tensor | None = None,
    heldout_to_train: torch.Tensor | None = None,
) -> dict[str, float]:
    """Diversity and copying diagnostics of generated samples against real data.

    Keys:
      resolution                 grid step of distinct_share (default 1e-3 * rms_radius(train))
      distinct_share             distinct_share(samples, resolution); ~1 for a healthy sampler
      distinct_share_heldout     the same for held-out data (the share to expect; < 1 on dense data)
      median_nn_samples          median_nn_distance(samples)
      median_nn_heldout          median_nn_distance(heldout), the reference value
      near_duplicate_threshold   default median_nn_heldout / 4
      near_duplicate_share       near_duplicate_share(samples, threshold)
      near_duplicate_share_heldout  the same for held-out data (the share to expect)
      nn_to_train_samples        median distance from samples to the nearest training point
      nn_to_train_heldout        the same for held-out data
      nn_to_train_ratio          nn_to_train_samples / nn_to_train_heldout; << 1 means copying
      n_samples, n_heldout       set sizes
    Nearest-neighbour distances shrink as N grows (~ N^{-1/d}): compare samples and held-out
    data at equal sizes. ``heldout_nn`` and ``heldout_to_train`` (each (H,)) are the held-out side's
    kth_nearest_distance(heldout) and kth_nearest_distance(heldout, train), when computed before
    (they do not depend on the samples; sample reports cache them).
    """
    x = as_float64_matrix(samples, "samples")
    tr = as_float64_matrix(train, "train")
    ho = as_float64_matrix(heldout, "heldout")
    if not x.shape[1] == tr.shape[1] == ho.shape[1]:
        raise ValueError(
            f"samples, train, heldout: expected the same dimension, found {x.shape[1]}, {tr.shape[1]}, {ho.shape[1]}"
        )
    if x.shape[0] < 2 or ho.shape[0] < 2:
        raise ValueError(f"samples, heldout: expected at least 2 rows each, found {x.shape[0]}, {ho.shape[0]}")
    res = 1e-3 * rms_radius(tr) if resolution is None else float(resolution)
    nn_x = kth_nearest_distance(x)  # (N,), one pass each
    nn_ho = kth_nearest_distance(ho) if heldout_nn is None else heldout_nn.double()
    thr = median(nn_ho) / 4 if near_duplicate_threshold is None else float(near_duplicate_threshold)
    to_train_x = median_distance_to_set(x, tr)
    to_train_ho = median_distance_to_set(ho, tr) if heldout_to_train is None else median(heldout_to_train.double())
    return {
        "resolution": res,
        "distinct_share": distinct_share(x, res),
        "distinct_share_heldout": distinct_share(ho, res),
        "median_nn_samples": median(nn_x),
        "median_nn_heldout": median(nn_ho),
        "near_duplicate_threshold": thr,
        "near_duplicate_share": float((nn_x < thr).double().mean()),
        "near_duplicate_share_heldout": float((nn_ho < thr).double().mean()),
        "nn_to_train_samples": to_train_x,
        "nn_to_train_heldout": to_train_ho,
        "nn_to_train_ratio": _ratio(to_train_x, to_train_ho),
        "n_samples": float(x.shape[0]),
        "n_heldout": float(ho.shape[0]),
    }


def nearest_centre(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (N,), distance (N,)) of each point's nearest centre; x (N, D), centres (K, D)."""
    d = torch.cdist(x, centres, compute_mode=cdist_mode(x.shape[1], exact=True))  # (N, K), K small
    dist, idx = d.min(1)
    return idx, dist


def mode_report(samples: Any, centres: Any, data_std: float, radius_in_std: float = 3.0) -> dict[str, Any]:
    """Mode coverage of a mixture with known centres (K, D) and per-coordinate component std.

    Each point is assigned to its nearest centre; it is "near" when within
    radius_in_std * data_std of it. Keys:
      radius              radius_in_std * data_std
      near_share          share of all points that are near
      mode_shares         list (K,): share of ALL points assigned to each centre
      near_mode_shares    list (K,): share of all points that are near centre k
      modes_covered       number of centres with at least one near point
      within_mode_std     pooled per-coordinate std of near points about their mode's mean:
                          sqrt(sum_k sum_{i near k} ||x_i - m_k||^2 / (D * sum_k (n_k - 1)))
                          (nan when no mode has 2 near points)
      within_mode_std_ratio  within_mode_std / data_std (a bit under 1 for a perfect sampler,
                          the radius cuts the tails; << 1 means collapse, >> 1 blur)
    """
    x = as_float64_matrix(samples, "samples")
    c = as_float64_matrix(centres, "centres")
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"samples and centres: expected the same dimension, found {x.shape[1]} and {c.shape[1]}")
    if not data_std > 0 or not radius_in_std > 0:
        raise ValueError(f"data_std, radius_in_std: expected > 0, found {data_std}, {radius_in_std}")
    n, k = x.shape[0], c.shape[0]
    radius = radius_in_std * data_std
    idx, dist = nearest_centre(x, c)
    near = dist <= radius
    mode_shares = torch.bincount(idx, minlength=k).double() / n  # (K,)
    near_counts = torch.bincount(idx[near], minlength=k)  # (K,)
    ss, dof = 0.0, 0
    for j in range(k):
        pts = x[near & (idx == j)]  # (n_j, D)
        if pts.shape[0] >= 2:
            ss += float((pts - pts.mean(0)).square().sum())
            dof += pts.shape[0] - 1
    within = math.sqrt(ss / (dof * x.shape[1])) if dof > 0 else math.nan
    return {
        "radius": radius,
        "near_share": float(near.double().mean()),
        "mode_shares": mode_shares.tolist(),
        "near_mode_shares": (near_counts.double() / n).tolist(),
        "modes_covered": int((near_counts > 0).sum()),
        "within_mode_std": within,
        "within_mode_std_ratio": within / data_std,
    }
