"""Per-class figures of class-conditional samples (docs/conditional.md).

For samples x_i requested with labels y_i:
  agreement        share of samples whose class by the shipped classifier (digits_net for digits,
                   fashion_net for Fashion-MNIST) is the requested one; the classifier's accuracy
                   on the held-out images is reported beside it
  per class k      dmmd.evaluation.diversity.diversity_report of the class-k samples against the
                   class-k training and held-out images: near_duplicate_share (threshold a quarter
                   of the median nearest-neighbour distance among held-out class-k images) and
                   nn_to_train_ratio (median distance to the nearest class-k training image, over
                   the same for held-out class-k images)
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmmd.evaluation.digits_net import load_classifier
from dmmd.evaluation.diversity import diversity_report
from dmmd.evaluation.fashion_net import features_and_logits

CLASSIFIED = ("digits", "fashion_mnist")


def classifier_logits(name: str, x: Tensor) -> Tensor:
    """Logits (N, 10) of the shipped classifier for data set `name`, images in model scale [-1, 1]."""
    if name == "digits":
        with torch.no_grad():
            return load_classifier()(x.float())
    if name == "fashion_mnist":
        return features_and_logits(x.float())[1]
    raise ValueError(f"no shipped classifier for data set {name!r} (have: {', '.join(CLASSIFIED)})")


def per_class_report(samples: Tensor, labels: Tensor, train: Tensor, train_labels: Tensor, heldout: Tensor,
                     heldout_labels: Tensor, name: str | None = None) -> dict:
    """Agreement with the requested class (when `name` has a shipped classifier) and per-class
    near-duplicates and nearest-training distances; samples and data in model scale."""
    labels, train_labels, heldout_labels = labels.long(), train_labels.long(), heldout_labels.long()
    if len(labels) != len(samples):
        raise ValueError(f"expected one label per sample, found {len(labels)} labels for {len(samples)} samples")
    out: dict = {"num_samples": len(samples), "classes": {}}
    predicted = None
    if name in CLASSIFIED:
        predicted = classifier_logits(name, samples).argmax(1)
        out["agreement"] = float((predicted == labels).double().mean())
        out["classifier_accuracy_heldout"] = float(
            (classifier_logits(name, heldout).argmax(1) == heldout_labels).double().mean())
    flat, train_flat, held_flat = samples.flatten(1).double(), train.flatten(1).double(), heldout.flatten(1).double()
    for k in sorted(set(labels.tolist())):
        rows = labels == k
        entry: dict = {"num_samples": int(rows.sum())}
        if predicted is not None:
            entry["agreement"] = float((predicted[rows] == k).double().mean())
        held_k = held_flat[heldout_labels == k]
        if int(rows.sum()) >= 2 and len(held_k) >= 2 and torch.isfinite(flat[rows]).all():
            d = diversity_report(flat[rows], train_flat[train_labels == k], held_k)
            entry.update({key: d[key] for key in ("near_duplicate_share", "nn_to_train_ratio", "nn_to_train_samples",
                                                  "nn_to_train_heldout", "distinct_share")})
        out["classes"][str(k)] = entry
    per = [c for c in out["classes"].values() if "near_duplicate_share" in c]
    if per:
        out["max_near_duplicate_share"] = max(c["near_duplicate_share"] for c in per)
        out["nn_to_train_ratio_range"] = [min(c["nn_to_train_ratio"] for c in per),
                                          max(c["nn_to_train_ratio"] for c in per)]
    if predicted is not None and per:
        out["min_class_agreement"] = min(c["agreement"] for c in out["classes"].values())
    return out


def acceptance(report: dict, min_agreement: float) -> bool:
    """The issue's criteria: agreement >= min_agreement, per class <= 2% near-duplicates and a
    nearest-training ratio in [0.5, 1.6]."""
    lo, hi = report.get("nn_to_train_ratio_range", [float("nan")] * 2)
    return bool(report.get("agreement", 0.0) >= min_agreement and report.get("max_near_duplicate_share", 1.0) <= 0.02
                and 0.5 <= lo and hi <= 1.6)
