"""What `dmmd sample` and the demo report beside samples: diversity next to accuracy (docs/sampling.md).

- every data set: distinct share, nearest-neighbour distances among samples against held-out data
  (at equal set sizes), near-duplicate share, distance to the nearest training example;
- 8 Gaussians: each mode's share, share within 3 data standard deviations of a mode centre,
  within-mode spread against the data's;
- digits: a logistic-regression classifier fitted on the training split gives each class's share
  of the samples and the mean top-class probability, against the same on held-out digits;
- Fashion-MNIST: the same class figures from the shipped Fashion-MNIST network
  (dmmd.evaluation.fashion_net).
"""

from __future__ import annotations

import hashlib
import pickle
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from dmmd.data.datasets import Dataset, load_digits
from dmmd.data.toys import EIGHT_GAUSSIANS_RADIUS, EIGHT_GAUSSIANS_STD, eight_gaussians_centres
from dmmd.evaluation import metrics as m
from dmmd.evaluation.digits_net import digits_scores
from dmmd.evaluation.diversity import (
    distinct_share,
    diversity_report,
    kth_nearest_distance,
    median,
    median_nn_distance,
    mode_report,
    rms_radius,
)
from dmmd.evaluation.fashion_net import fashion_scores, features_and_logits
from dmmd.evaluation.metrics import class_figures, frechet_distance
from dmmd.methods.latent import Autoencoder, decode, encode
from dmmd.runtime.checkpoint import atomic_write_bytes
from dmmd.runtime.runfolder import RunFolderError


@lru_cache(maxsize=1)
def digits_classifier():
    """Logistic regression on the digits training split (pixels in [-1, 1]); deterministic."""
    from sklearn.linear_model import LogisticRegression


    data = load_digits()
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(data.train.flatten(1).numpy(), data.labels_train.numpy())
    return clf


def class_probabilities(x: Tensor, data_name: str) -> Tensor | None:
    """(N, 10) class probabilities of images (model scale) from the data set's classifier: logistic
    regression on digits' training split, the shipped Fashion-MNIST network; None for other data."""
    if data_name == "digits":
        return torch.as_tensor(digits_classifier().predict_proba(x.flatten(1).clamp(-1, 1).numpy()))
    if data_name == "fashion_mnist":
        return features_and_logits(x.float())[1].double().softmax(1)
    return None


def eight_gaussians_scores(z: Tensor) -> dict:
    """The issue-8 criteria: share within 3 data std of a mode centre, each mode's share, distinct
    share at a thousandth of the radius, within-mode std over the data's (pass: >= 0.9, 8-17%,
    >= 0.95, 0.6-1.5)."""
    modes = mode_report(z.double(), eight_gaussians_centres().double(), EIGHT_GAUSSIANS_STD, radius_in_std=3.0)
    r = {"near": modes["near_share"], "min_mode": min(modes["mode_shares"]), "max_mode": max(modes["mode_shares"]),
         "distinct": distinct_share(z.double(), EIGHT_GAUSSIANS_RADIUS / 1000),
         "std_ratio": modes["within_mode_std_ratio"]}
    r["pass"] = bool(r["near"] >= 0.9 and r["min_mode"] >= 0.08 and r["max_mode"] <= 0.17
                     and r["distinct"] >= 0.95 and 0.6 <= r["std_ratio"] <= 1.5)
    return r


REFERENCE_TRAIN = 5000  # training rows the copy check measures against: about 0.4 CPU-s per 1000 samples of 784 values
REFERENCE_HELDOUT = 2000  # held-out rows of the diversity references (the toys' whole held-out split)


def reference_rows(x: Tensor, cap: int) -> Tensor:
    """At most `cap` rows of x, a fixed random subset (seed 0), so every call compares with the same rows."""
    if len(x) <= cap:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:cap]]


MAX_DIAGNOSED = 10000  # samples whose nearest neighbours are measured (a fixed subset of more): ~N^2 work
REFERENCE_FORMAT = 2  # bump when reference_figures changes what it computes


def _references(data: Dataset) -> tuple[Tensor, Tensor]:
    return (reference_rows(data.train.flatten(1), REFERENCE_TRAIN).double(),
            reference_rows(data.test.flatten(1), REFERENCE_HELDOUT).double())


def reference_figures(data: Dataset, m: int, references: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
    """The held-out side of a sample report for m samples: it does not depend on the samples, so
    sample reports compute it once per data set and cache it (cached_reference_figures).
    references: _references(data), when the caller has them."""
    train, test = _references(data) if references is None else references
    nn = kth_nearest_distance(test)  # (H,)
    out = {"heldout_nn": nn, "heldout_to_train": kth_nearest_distance(test, train),
           "resolution": torch.tensor(1e-3 * rms_radius(train)),
           "heldout_nn_equal_size": nn if m >= len(test) else kth_nearest_distance(test[:m])}
    probs = class_probabilities(reference_rows(data.test, REFERENCE_HELDOUT), data.name)  # the same rows
    if probs is not None:
        out["heldout_confidence"] = probs.max(1).values.mean()
    return out


def cached_reference_figures(data: Dataset, m: int, cache_dir: Path | None,
                             references: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
    """reference_figures, read from or written to cache_dir/reference-<key>.pt, the key a SHA-256 of
    the reference rows, m and the data set's name (another data set or scale: another file). A cache
    that does not load safely or does not fit is recomputed; a folder that cannot be written is skipped."""
    train, test = _references(data) if references is None else references
    m = min(m, len(test))
    digest = hashlib.sha256(f"{REFERENCE_FORMAT} {data.name} {m} {tuple(train.shape)} {tuple(test.shape)}".encode())
    for t in (train, test):
        digest.update(t.float().numpy().tobytes())
    path = None if cache_dir is None else Path(cache_dir) / f"reference-{digest.hexdigest()[:20]}.pt"
    if path is not None and path.is_file() and not path.is_symlink():
        try:
            cached = torch.load(path, weights_only=True)
            if (isinstance(cached, dict) and all(isinstance(cached.get(k), Tensor) for k in REFERENCE_KEYS)
                    and cached["heldout_nn"].shape == cached["heldout_to_train"].shape == (len(test),)
                    and cached["heldout_nn_equal_size"].shape == (m,)):
                return cached
        except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError):
            pass  # recomputed below and written again
    figures = reference_figures(data, m, (train, test))
    if path is not None:
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(path, lambda fh: torch.save(figures, fh))
        except (OSError, RunFolderError):
            pass  # a read-only run folder: the figures are still right, only not kept
    return figures


REFERENCE_KEYS = ("heldout_nn", "heldout_to_train", "heldout_nn_equal_size", "resolution")


def sample_report(samples: Tensor, data: Dataset, cache_dir: Path | None = None, progress=None) -> dict:
    """Diversity and accuracy figures of samples (model scale) against the data set; the nearest-
    neighbour references are bounded subsets (REFERENCE_TRAIN, REFERENCE_HELDOUT rows), their
    held-out side cached in cache_dir when given. progress: a tqdm bar of total REPORT_STAGES (or None)."""
    flat = samples.flatten(1).double()
    if not torch.isfinite(flat).all():
        return {"error": "non-finite samples"}
    stage = _stages(progress)
    train, test = _references(data)
    everything, flat = flat, reference_rows(flat, MAX_DIAGNOSED)  # nearest neighbours grow as N^2
    m = min(len(flat), len(test))
    stage("held-out references" + (" (cached)" if cache_dir is not None else ""))
    ref = cached_reference_figures(data, m, cache_dir, (train, test))
    stage("nearest neighbours")
    report = diversity_report(flat, train, test, float(ref["resolution"]), heldout_nn=ref["heldout_nn"],
                              heldout_to_train=ref["heldout_to_train"])
    report["n_train_reference"] = float(len(train))
    report["n_samples_total"] = float(len(everything))
    report["median_nn_samples_equal_size"] = median_nn_distance(flat[:m])
    report["median_nn_heldout_equal_size"] = median(ref["heldout_nn_equal_size"])
    stage("modes and classes")
    if data.name == "eight_gaussians":
        report["modes"] = mode_report(everything, eight_gaussians_centres().double(), EIGHT_GAUSSIANS_STD)
    probs = class_probabilities(samples.float(), data.name)
    if probs is not None:
        report["classes"] = class_figures(probs, float(ref["heldout_confidence"]))
    stage("done")
    return report


def _stages(progress):
    """stage(name): the bar (total REPORT_STAGES) counts the finished stage and names the next."""
    started = []

    def stage(name: str) -> None:
        if progress is None:
            return
        if started:
            progress.update(1)
        started.append(name)
        if name != "done":
            progress.set_postfix_str(name)
    return stage


REPORT_STAGES = 3


METRICS = ("diversity", "fd", "kid", "mmd", "energy", "precision_recall")


def evaluate_samples(samples: Tensor, data: Dataset, metrics: tuple[str, ...] = METRICS) -> dict:
    """Metrics of samples (model scale) against held-out data, on raw (flattened) coordinates.

    fd: Frechet distance; kid: KID (mean, standard error); mmd: unbiased MMD^2 with a Gaussian kernel
    of median-heuristic width; energy: energy distance; precision_recall: k-NN manifolds (k = 3).
    Raw-coordinate metrics suit low-dimensional data; for images use a feature network.
    """

    flat, test = samples.flatten(1).double(), data.test.flatten(1).double()
    out: dict = {"num_samples": len(flat), "num_heldout": len(test)}
    if "diversity" in metrics:
        out["diversity"] = sample_report(samples, data)
    if "fd" in metrics:
        out["fd"] = m.frechet_distance(flat, test)
    if "kid" in metrics:
        mean, err = m.kid(flat, test, num_subsets=50, subset_size=min(len(flat), len(test), 1000))
        out["kid"] = {"mean": mean, "std_error": err}
    if "mmd" in metrics:
        out["mmd_rbf"] = m.mmd_rbf(flat, test)
    if "energy" in metrics:
        out["energy_distance"] = m.energy_distance(flat, test)
    if data.name == "digits":
        out["digits"] = digits_scores(samples, data.test)  # FD-digits, IS-digits, class coverage
    if data.name == "fashion_mnist":
        out["fashion"] = fashion_scores(samples, data.test)  # FD-fashion, IS-fashion, class coverage
    if "precision_recall" in metrics:
        precision, recall = m.precision_recall(test, flat, k=3)
        out["precision"], out["recall"] = precision, recall
    return out


def reconstruction_floor(ae: Autoencoder, data: Dataset, num: int) -> dict:
    """FD of the reconstructions of the first `num` held-out images (at most all of them) against
    every held-out image, as samples are scored: raw pixels, and FD-fashion / FD-digits for those
    data sets. A latent model's samples can at best match their decoder's output distribution."""
    x = data.test[:max(2, min(num, len(data.test)))]
    recon = decode(encode(x, ae), ae)
    out = {"num_images": len(x), "mse": float((recon - x).square().mean()), "autoencoder_sha256": ae.sha256,
           "fd": frechet_distance(recon.flatten(1).double(), data.test.flatten(1).double())}
    if data.name == "fashion_mnist":
        out["fd_fashion"] = fashion_scores(recon, data.test)["fd_fashion"]
    if data.name == "digits":
        out["fd_digits"] = digits_scores(recon, data.test)["fd_digits"]
    return out


NEAR_DUPLICATE_WARN = 0.25  # share of samples with a near-copy among the others (healthy samplers: about 0)
CLASS_SHARE_WARN = 0.5  # one class's share of samples drawn for every class (healthy: about 1 / classes)
MODE_SHARE_WARN = 0.02  # an 8-Gaussians mode holding less than this is lost (healthy: about 1/8)
# samples' median nearest-neighbour distance over that of as many held-out points: below this they bunch
# (conditional digits, one class, DMMD: 0.72 at the default guidance 0.5, 0.56 at 1, 0.31 at 2; all classes
# 0.93 and 0.47 at 2; unconditional digits 1.06)
SPREAD_WARN = 0.5
# the largest guidance weight without collapse or a worse FD, per method, measured on conditional digits
# (benchmarks/results/conditional_digits.md): DMMD makes near-copies from w = 1 up
SAFE_GUIDANCE = {"dmmd": 0.5, "fm": 1.0, "ddpm": 2.0}


def collapse_figure(diversity: dict, one_class: bool = False) -> str | None:
    """The figure of a sample report that says the samples collapsed, in words, or None."""
    share, held = diversity.get("near_duplicate_share"), diversity.get("near_duplicate_share_heldout", 0.0)
    if share is not None and share >= NEAR_DUPLICATE_WARN and share > 2 * held:
        return f"{share:.0%} of the samples have a near-copy among the others (held-out data: {held:.0%})"
    samples_nn, heldout_nn = (diversity.get(f"median_nn_{k}_equal_size") for k in ("samples", "heldout"))
    spread = samples_nn / heldout_nn if samples_nn is not None and heldout_nn else None
    if spread is not None and spread < SPREAD_WARN:
        return (f"the samples bunch together (median distance to the nearest other sample {spread:.2f} x that of "
                "as many held-out points)")
    classes = diversity.get("classes") or {}
    if not one_class and classes.get("max_class_share", 0.0) >= CLASS_SHARE_WARN:
        return f"one class holds {classes['max_class_share']:.0%} of the samples"
    shares = (diversity.get("modes") or {}).get("mode_shares")
    if shares and min(shares) < MODE_SHARE_WARN:
        return f"a mode holds {min(shares):.1%} of the samples (each should hold about {1 / len(shares):.0%})"
    return None


def collapse_warning(diversity: dict, method: str, nfe: int, guidance: float | None = None,
                     one_class: bool = False) -> str | None:
    """One warning line naming the collapse figure and its likely cause, or None for healthy samples."""
    figure = collapse_figure(diversity, one_class)
    if figure is None:
        return None
    if guidance is not None and guidance > SAFE_GUIDANCE.get(method, float("inf")):
        cause = (f"guidance too strong (--guidance {guidance:g}; measured safe for {method} up to "
                 f"{SAFE_GUIDANCE[method]:g})")
    elif nfe < 20:
        cause = f"too few steps (NFE {nfe}; try --nfe 20 or more)"
    else:
        cause = "the step size or too little noise in the flow (sample.step_size, sample.inject, sample.renoise)"
    return f"warning: the samples look collapsed: {figure}; likely cause: {cause}"


def _figures(values: dict, keys: dict) -> list[str]:
    return [f"{label} {values[key]:.4g}" for key, label in keys.items() if isinstance(values.get(key), (int, float))]


def summary_lines(report: dict) -> list[str]:
    """A few lines a person reads, of a `dmmd evaluate` report (the JSON holds every figure)."""
    lines = [f"{report['num_samples']} samples against {report['num_heldout']} held-out points"]
    raw = _figures(report, {"fd": "FD", "mmd_rbf": "MMD^2 (RBF)", "energy_distance": "energy distance",
                            "precision": "precision", "recall": "recall"})
    if "kid" in report:
        raw.insert(1, f"KID {report['kid']['mean']:.4g} +- {report['kid']['std_error']:.2g}")
    if raw:
        lines.append("raw coordinates: " + ", ".join(raw))
    for key, label in (("digits", "digits classifier"), ("fashion", "Fashion-MNIST classifier")):
        if key in report:
            lines.append(f"{label}: " + ", ".join(_figures(report[key], {k: k for k in report[key]})))
    div = report.get("diversity") or {}
    if "near_duplicate_share" in div:
        lines.append(f"diversity: {div['near_duplicate_share']:.1%} near-copies (held-out data "
                     f"{div['near_duplicate_share_heldout']:.1%}), distance to the nearest training point "
                     f"{div['nn_to_train_ratio']:.2f} x held-out data's, {div['distinct_share']:.1%} distinct")
        if "modes" in div:
            lines.append(f"modes: {div['modes']['modes_covered']} covered, {div['modes']['near_share']:.1%} of "
                         f"samples near a mode, shares {min(div['modes']['mode_shares']):.1%}-"
                         f"{max(div['modes']['mode_shares']):.1%}")
        if "classes" in div:
            lines.append(f"classes: shares {div['classes']['min_class_share']:.1%}-{div['classes']['max_class_share']:.1%}, "
                         f"confidence {div['classes']['confidence']:.2f} (held-out {div['classes']['confidence_heldout']:.2f})")
    if "per_class" in report:
        lines.append(f"per class: agreement {report['per_class']['agreement']:.3f} (every class: --json)")
    if "reconstruction_floor" in report:
        lines.append("autoencoder's reconstruction floor: "
                     + ", ".join(_figures(report["reconstruction_floor"], {"fd": "FD", "fd_fashion": "FD-fashion",
                                                                           "fd_digits": "FD-digits", "mse": "MSE"})))
    if "inception_fid" in report:
        lines.append(f"Inception FID {report['inception_fid']:.4g}")
    if "inception_is" in report:
        lines.append(f"Inception IS {report['inception_is']['mean']:.4g} +- {report['inception_is']['std']:.2g}")
    return lines
