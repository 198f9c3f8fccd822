"""Which RBF width maximises the MMD gradient between two Gaussians (docs/optimal_width.md).

Claim made checkable: for two Gaussians the width that maximises the MMD gradient grows with
their distance, so the kernel must adapt as particles approach the data.

Setting (everything float64, numpy only; scipy is imported lazily by the numeric search):

    data       P = N(0, s^2 I_d)
    particles  Q = N(m, s^2 I_d),  ||m|| = delta > 0
    kernel     k(x, y) = exp(-||x - y||^2 / (2 w^2))        (same as dmmd.math.divergences.rbf_kernel)

Gaussian convolution gives E_{X ~ N(mu, s^2 I)} k(z, X) = c exp(-||z - mu||^2 / (2u)) with

    u = w^2 + s^2,   c = (w^2 / u)^(d/2),

so the witness f(z) = E_P k(z, X) - E_Q k(z, Y) and its gradient are

    f(z)      = c [exp(-||z||^2 / 2u) - exp(-||z - m||^2 / 2u)]
    grad f(z) = (c / u) [(z - m) exp(-||z - m||^2 / 2u) - z exp(-||z||^2 / 2u)].

Particles move along grad f. "The MMD gradient" is made precise in three ways (``CRITERIA``):

1. ``"mean"``: g(w) = ||grad f(m)||, the force on a particle at the particle mean (the Q term has
   zero gradient at its own mean):

       g(w) = delta w^d u^(-d/2 - 1) exp(-delta^2 / 2u).

   With t = w^2, d log g / dt = 0 becomes  2 t^2 - B t - d s^4 = 0,  B = (d - 2) s^2 + delta^2.
   The roots have product -d s^4 / 2 < 0, so there is exactly one positive root for every d >= 1
   and delta > 0 (never imaginary), and it is the maximum (d log g / dt -> +inf at t -> 0 and ~ -1/t
   at t -> inf):

       w*^2 = (B + sqrt(B^2 + 8 d s^4)) / 4.

2. ``"drift"``: h(w) = ||E_{Z~Q} grad f(Z)||, the mean force on the particle cloud. It equals
   (1/2) ||grad_m MMD^2(P, Q_m)||, the gradient of the squared MMD with respect to translating the
   particles. The Q-Q (repulsion) part averages to zero, and Z - X ~ N(m, 2 s^2 I) for Z ~ Q,
   X ~ P, so h is g with s^2 replaced by 2 s^2:

       h(w) = delta w^d (w^2 + 2 s^2)^(-d/2 - 1) exp(-delta^2 / (2 (w^2 + 2 s^2))),
       w*^2 = (B' + sqrt(B'^2 + 32 d s^4)) / 4,   B' = 2 (d - 2) s^2 + delta^2.

   For both 1 and 2, dw*/d delta > 0 strictly; w*^2 -> d s_eff^2 / 2 as delta -> 0 (s_eff^2 = s^2
   resp. 2 s^2: the width shrinks to the data scale, not to zero) and w* ~ delta / sqrt(2) as
   delta -> inf.

3. ``"expected_sq"``: G(w) = E_{Z~Q} ||grad f(Z)||^2, the mean squared force per particle. With
   v = u/2, V = v + s^2, tau^2 = s^2 v / V, rho = (v / V)^(d/2) (completing the square in products
   of Gaussians):

       G(w) = (c^2 rho / u^2) { d tau^2 [1 + e1 - 2 e2]
                                + e1 v^2 delta^2 / V^2
                                + e2 delta^2 s^2 (v + s^2/2) / V^2 },
       e1 = exp(-delta^2 / 2V),   e2 = exp(-delta^2 / 4u - delta^2 / 8V).

   The first term d tau^2 (c^2 rho / u^2) is E_Q ||grad E_Q k(Z, Y)||^2, the particle-particle
   repulsion, and does not depend on delta. No closed-form maximiser is given; use
   ``optimal_width_numeric``. Its global maximiser grows with delta only up to delta ~ 4.5 s
   (d = 1, 2, 8; ~ 10 s at d = 64), then falls back to the maximiser of the delta-independent
   repulsion term, O(s sqrt(d)), which it reaches as delta -> inf (a second local maximum at the
   attraction scale appears further out but never becomes global for delta <= 50 s).
   So the claim holds for the force toward the data (criteria 1 and 2), not for the raw mean
   squared gradient norm; see docs/optimal_width.md.

``dmmd study optimal-width --out DIR`` writes DIR/optimal_width.png and
DIR/optimal_width.json (optimal width against distance for a few d).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

CRITERIA = ("mean", "drift", "expected_sq")
CLOSED_FORM_CRITERIA = ("mean", "drift")
DEFAULT_DIMS = (1, 2, 8, 64)


# ----------------------------------------------------------------------------------- helpers
def _check(width, delta, s: float, d: int, *, delta_positive: bool = False):
    width = np.asarray(width, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    if not (isinstance(d, (int, np.integer)) and d >= 1):
        raise ValueError(f"d must be a positive integer, got {d!r}")
    if not s > 0:
        raise ValueError(f"s must be > 0, got {s!r}")
    if np.any(width <= 0) or not np.all(np.isfinite(width)):
        raise ValueError("width must be finite and > 0")
    if np.any(delta < 0) or not np.all(np.isfinite(delta)):
        raise ValueError("delta must be finite and >= 0")
    if delta_positive and np.any(delta <= 0):
        raise ValueError("delta must be > 0 (at delta = 0 the gradient vanishes for every width)")
    return width, delta


def _out(x):
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


def _effective_var(criterion: str, s: float) -> float:
    if criterion == "mean":
        return s * s
    if criterion == "drift":
        return 2.0 * s * s
    raise ValueError(f"no closed form for criterion {criterion!r}; closed forms: {CLOSED_FORM_CRITERIA}")


# ----------------------------------------------------------------------- witness (closed form)
def witness(z, m, width: float, s: float):
    """Closed-form MMD witness f(z) = E_P k(z, X) - E_Q k(z, Y), P = N(0, s^2 I), Q = N(m, s^2 I).

    z: (..., d), m: (d,). Returns (...,).
    """
    z = np.asarray(z, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    d = m.shape[-1]
    _check(width, 0.0, s, d)
    u = width * width + s * s
    c = (width * width / u) ** (d / 2)
    return c * (np.exp(-(z * z).sum(-1) / (2 * u)) - np.exp(-((z - m) ** 2).sum(-1) / (2 * u)))


def witness_gradient(z, m, width: float, s: float):
    """Closed-form grad_z f(z) for ``witness``: (..., d) -> (..., d)."""
    z = np.asarray(z, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    d = m.shape[-1]
    _check(width, 0.0, s, d)
    u = width * width + s * s
    c = (width * width / u) ** (d / 2)
    ep = np.exp(-(z * z).sum(-1, keepdims=True) / (2 * u))
    eq = np.exp(-((z - m) ** 2).sum(-1, keepdims=True) / (2 * u))
    return (c / u) * ((z - m) * eq - z * ep)


# ------------------------------------------------------------------------- criteria (closed form)
def _log_g(width, delta, var, d):
    """log of delta w^d (w^2 + var)^(-d/2-1) exp(-delta^2 / (2 (w^2 + var)))."""
    u = width * width + var
    with np.errstate(divide="ignore"):
        return np.log(delta) + d * np.log(width) - (d / 2 + 1) * np.log(u) - delta * delta / (2 * u)


def _log_expected_sq(width, delta, s, d):
    s2 = s * s
    u = width * width + s2
    v = u / 2
    V = v + s2
    tau2 = s2 * v / V
    dd = delta * delta
    a1 = -dd / (2 * V)
    a2 = -dd / (4 * u) - dd / (8 * V)
    # 1 + e1 - 2 e2 = expm1(a1) - 2 expm1(a2): no cancellation at small delta.
    braces = (d * tau2 * (np.expm1(a1) - 2 * np.expm1(a2))
              + np.exp(a1) * v * v * dd / (V * V)
              + np.exp(a2) * dd * s2 * (v + s2 / 2) / (V * V))
    with np.errstate(divide="ignore"):
        return d * np.log(width * width / u) + (d / 2) * np.log(v / V) - 2 * np.log(u) + np.log(braces)


def log_criterion(criterion: str, width, delta, s: float = 1.0, d: int = 1):
    """log of the chosen criterion (``CRITERIA``); the numeric search maximises this."""
    width, delta = _check(width, delta, s, d)
    if criterion in CLOSED_FORM_CRITERIA:
        return _out(_log_g(width, delta, _effective_var(criterion, s), d))
    if criterion == "expected_sq":
        return _out(_log_expected_sq(width, delta, s, d))
    raise ValueError(f"unknown criterion {criterion!r}; choose from {CRITERIA}")


def gradient_norm_at_mean(width, delta, s: float = 1.0, d: int = 1):
    """g(w) = ||grad f(m)|| = delta w^d (w^2 + s^2)^(-d/2-1) exp(-delta^2 / (2 (w^2 + s^2)))."""
    return _out(np.exp(log_criterion("mean", width, delta, s, d)))


def mean_drift_norm(width, delta, s: float = 1.0, d: int = 1):
    """h(w) = ||E_{Z~Q} grad f(Z)|| = (1/2) ||grad_m MMD^2(P, Q_m)||: g with s^2 -> 2 s^2."""
    return _out(np.exp(log_criterion("drift", width, delta, s, d)))


def expected_sq_gradient_norm(width, delta, s: float = 1.0, d: int = 1):
    """G(w) = E_{Z~Q} ||grad f(Z)||^2 in closed form (module docstring, criterion 3)."""
    return _out(np.exp(log_criterion("expected_sq", width, delta, s, d)))


# ------------------------------------------------------------------------------ maximisers
def optimal_width(delta, s: float = 1.0, d: int = 1, criterion: str = "mean"):
    """Closed-form maximiser w* of the criterion over w > 0 ("mean" or "drift").

    w*^2 = (B + sqrt(B^2 + 8 d a^2)) / 4,  B = (d - 2) a + delta^2,  a = s^2 ("mean") or 2 s^2
    ("drift"). Always real and positive for d >= 1; strictly increasing in delta; at delta = 0 it
    returns the limit sqrt(d a / 2) (the gradient itself is zero there). "expected_sq" has no
    closed form: use ``optimal_width_numeric``.
    """
    a = _effective_var(criterion, s)
    _, delta = _check(1.0, delta, s, d)
    B = (d - 2) * a + delta * delta
    root = np.sqrt(B * B + 8 * d * a * a)
    # Stable positive root of 2 t^2 - B t - d a^2 / 2 = 0 (no cancellation for either sign of B).
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(B >= 0, (B + root) / 4, 2 * d * a * a / (root - B))
    return _out(np.sqrt(t))


def optimal_width_numeric(delta: float, s: float = 1.0, d: int = 1, criterion: str = "mean", *,
                          n_grid: int = 801, xatol: float = 1e-12) -> float:
    """Global maximiser of the criterion by bounded scalar search over x = log(width).

    A log-spaced grid over [1e-3 s, 1e3 max(s sqrt(d), delta)] locates the best basin (the
    "expected_sq" criterion can have two local maxima); scipy's bounded Brent search
    (``minimize_scalar(method="bounded")``) then refines between the neighbouring grid points.
    """
    from scipy.optimize import minimize_scalar  # lazy: scipy is a test extra

    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {CRITERIA}")
    _check(1.0, delta, s, d, delta_positive=True)
    lo = math.log(1e-3 * s)
    hi = math.log(1e3 * max(s * math.sqrt(d), float(delta)))
    xs = np.linspace(lo, hi, n_grid)
    vals = np.asarray(log_criterion(criterion, np.exp(xs), delta, s, d))
    i = int(np.nanargmax(vals))
    if i == 0 or i == n_grid - 1:
        raise RuntimeError(f"maximum at the search boundary (delta={delta}, s={s}, d={d})")
    res = minimize_scalar(lambda x: -float(log_criterion(criterion, math.exp(x), delta, s, d)),
                          bounds=(xs[i - 1], xs[i + 1]), method="bounded",
                          options={"xatol": xatol, "maxiter": 500})
    if not res.success:
        raise RuntimeError(f"bounded search failed: {res.message}")
    return math.exp(float(res.x))


# ------------------------------------------------------------------------------ curves, plot
def optimal_width_curve(deltas: Sequence[float], s: float = 1.0, dims: Sequence[int] = DEFAULT_DIMS,
                        criteria: Sequence[str] = CRITERIA) -> dict:
    """w*(delta) for each d and criterion: {"s", "deltas", "curves": {criterion: {d: [...]}}}."""
    deltas = [float(x) for x in deltas]
    curves: dict = {}
    for crit in criteria:
        curves[crit] = {}
        for d in dims:
            if crit in CLOSED_FORM_CRITERIA:
                ws = np.asarray(optimal_width(np.asarray(deltas), s, int(d), crit)).tolist()
            else:
                ws = [optimal_width_numeric(x, s, int(d), crit) for x in deltas]
            curves[crit][str(int(d))] = ws
    return {"s": float(s), "deltas": deltas, "dims": [int(d) for d in dims], "curves": curves,
            "w_star_squared": {"mean": "(B + sqrt(B^2 + 8 d s^4)) / 4, B = (d-2) s^2 + delta^2",
                               "drift": "(B + sqrt(B^2 + 32 d s^4)) / 4, B = 2 (d-2) s^2 + delta^2",
                               "expected_sq": "numeric (bounded search over log-width)"}}


def plot_optimal_width(path, deltas: Sequence[float] | None = None, s: float = 1.0,
                       dims: Sequence[int] = DEFAULT_DIMS, criteria: Sequence[str] = CRITERIA) -> dict:
    """Plot w*/s against delta/s for each d (log-log) and write a PNG to ``path``.

    Left panel: closed forms ("mean" solid, "drift" dashed) with the asymptote delta/sqrt(2).
    Right panel (if "expected_sq" in criteria): numeric maximiser of E_Q ||grad f||^2.
    Returns the curve data (``optimal_width_curve``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if deltas is None:
        deltas = (np.geomspace(0.05, 50.0, 121) * s).tolist()
    data = optimal_width_curve(deltas, s, dims, criteria)
    x = np.asarray(data["deltas"]) / s
    closed = [c for c in criteria if c in CLOSED_FORM_CRITERIA]
    panels = [closed] if closed else []
    if "expected_sq" in criteria:
        panels.append(["expected_sq"])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(dims)))
    styles = {"mean": "-", "drift": "--", "expected_sq": "-"}
    names = {"mean": "||grad f(m)||", "drift": "||E_Q grad f||", "expected_sq": "E_Q ||grad f||^2"}
    for ax, crits in zip(axes[0], panels):
        for crit in crits:
            for color, d in zip(colors, dims):
                y = np.asarray(data["curves"][crit][str(int(d))]) / s
                ax.plot(x, y, styles[crit], color=color, lw=1.6,
                        label=f"d={d}" if crit == crits[0] else None)
        ax.plot(x, x / math.sqrt(2), ":", color="grey", lw=1.0, label="delta/sqrt(2)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("distance delta / s")
        ax.set_ylabel("optimal width w* / s")
        title = " (solid), ".join(names[c] for c in crits) + (" (dashed)" if len(crits) > 1 else "")
        ax.set_title("maximiser of " + title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dmmd study optimal-width",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for optimal_width.png and optimal_width.json")
    p.add_argument("--s", type=float, default=1.0, help="standard deviation of both Gaussians")
    p.add_argument("--dims", type=int, nargs="+", default=list(DEFAULT_DIMS))
    p.add_argument("--num", type=int, default=121, help="number of distances (log-spaced, 0.05 s .. 50 s)")
    args = p.parse_args(argv)
    out = Path(args.out)
    deltas = (np.geomspace(0.05, 50.0, args.num) * args.s).tolist()
    try:
        import scipy  # noqa: F401

        criteria = CRITERIA
    except ImportError:  # the numeric criterion needs scipy (a test extra)
        criteria = CLOSED_FORM_CRITERIA
    data = plot_optimal_width(out / "optimal_width.png", deltas, args.s, args.dims, criteria)
    (out / "optimal_width.json").write_text(json.dumps(data, indent=1))
    print(f"wrote {out / 'optimal_width.png'} and {out / 'optimal_width.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
