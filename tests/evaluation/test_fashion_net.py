"""The shipped Fashion-MNIST network (FD-fashion) on the real test split of Debian's
dataset-fashion-mnist, and its use by the reports and `dmmd evaluate`.

The weights are not re-trained here (about 3 to 7 minutes on one core: `python -m
dmmd.evaluation.fashion_net --train`); these tests check what the shipped file does."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dmmd.cli import main
from dmmd.config import DataConfig
from dmmd.data.datasets import Dataset, load_dataset
from dmmd.data.scaling import to_data_space
from dmmd.evaluation.fashion_net import WEIGHTS, FashionNet, fashion_scores, load_classifier
from dmmd.evaluation.report import evaluate_samples, sample_report

KEYS = {"fd_fashion", "is_fashion", "classes_covered", "max_class_share", "min_class_share", "class_shares",
        "confidence", "confidence_heldout"}


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(name="fashion_mnist"))


def _noise(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_weights_load_small_frozen_and_in_eval_mode():
    net = load_classifier()
    assert isinstance(net, FashionNet) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert load_classifier() is net
    assert WEIGHTS.stat().st_size < 3_000_000


def test_heldout_accuracy_on_real_test_images(data):
    x, y = data.test[:2000], data.labels_test[:2000]
    with torch.no_grad():
        acc = float((load_classifier()(x).argmax(1) == y).float().mean())
    assert acc >= 0.89, acc


def test_fd_of_heldout_halves_is_far_below_fd_against_noise(data):
    a, b = data.test[:1000], data.test[1000:2000]
    halves = fashion_scores(a, b)["fd_fashion"]
    noise = fashion_scores(_noise(a.shape), b)["fd_fashion"]
    assert halves >= 0 and noise > 20 * halves, (halves, noise)
    assert fashion_scores(a, a)["fd_fashion"] < 1e-6


def test_scores_match_an_independent_float64_computation(data):
    x, ref = data.test[:600], data.test[600:1200]
    scores = fashion_scores(x, ref)
    assert set(scores) == KEYS
    net = load_classifier()
    with torch.no_grad():
        fx, fr = net.features(x).double(), net.features(ref).double()
        lx = net.head(net.features(x)).double().log_softmax(1)
        px, pr = lx.exp(), net.head(net.features(ref)).double().softmax(1)
    # Frechet distance with tr (Sx Sr)^(1/2) = sum of square roots of the eigenvalues of the
    # non-symmetric product Sx Sr (numpy's general eig; frechet_distance uses symmetric eigh twice)
    mx, mr = fx.mean(0).numpy(), fr.mean(0).numpy()
    cx, cr = np.cov(fx.numpy(), rowvar=False), np.cov(fr.numpy(), rowvar=False)
    tr_sqrt = np.sqrt(np.linalg.eigvals(cx @ cr).real.clip(min=0)).sum()
    fd = float(((mx - mr) ** 2).sum() + np.trace(cx) + np.trace(cr) - 2 * tr_sqrt)
    assert math.isclose(scores["fd_fashion"], fd, rel_tol=1e-6, abs_tol=1e-6)
    marginal = px.mean(0)
    is_ref = math.exp(float((px * (lx - marginal.log())).sum(1).mean()))
    assert math.isclose(scores["is_fashion"], is_ref, rel_tol=1e-9)
    shares = np.bincount(px.argmax(1).numpy(), minlength=10) / len(px)
    assert scores["class_shares"] == [round(float(s), 4) for s in shares]
    assert scores["classes_covered"] == int((shares > 0).sum()) == 10
    assert scores["max_class_share"] == pytest.approx(shares.max())
    assert scores["min_class_share"] == pytest.approx(shares.min())
    assert scores["confidence"] == pytest.approx(float(px.max(1).values.mean()), rel=1e-9)
    assert scores["confidence_heldout"] == pytest.approx(float(pr.max(1).values.mean()), rel=1e-9)


def test_collapsed_samples_cover_one_class(data):
    collapsed = fashion_scores(data.test[:1].repeat(100, 1, 1, 1), data.test[:500])
    assert collapsed["classes_covered"] == 1 and collapsed["max_class_share"] == 1.0
    assert collapsed["min_class_share"] == 0.0 and collapsed["is_fashion"] < 1.01


def test_reports_carry_the_fashion_entries(data):
    small = Dataset(data.train[:300], data.test[:300], "image", "fashion_mnist",
                    data.labels_train[:300], data.labels_test[:300])
    samples = data.test[300:500]
    report = sample_report(samples, small)
    assert set(report["classes"]) == {"class_shares", "min_class_share", "max_class_share", "confidence",
                                      "confidence_heldout"}
    assert len(report["classes"]["class_shares"]) == 10 and report["classes"]["confidence"] > 0.5
    out = evaluate_samples(samples, small, ("fd",))
    assert set(out["fashion"]) == KEYS
    assert out["fashion"]["fd_fashion"] == pytest.approx(fashion_scores(samples, small.test)["fd_fashion"])


def test_cli_evaluate_reports_fd_fashion(data, tmp_path, capsys):
    samples = data.test[:200]
    pixels = to_data_space("fashion_mnist", samples).round().numpy().astype(np.float32)  # 0..255
    assert pixels.min() == 0 and pixels.max() == 255
    np.savez(tmp_path / "samples.npz", samples=pixels)
    (tmp_path / "fashion.toml").write_text('[data]\nname = "fashion_mnist"\n')
    out = tmp_path / "report.json"
    assert main(["evaluate", "--config", str(tmp_path / "fashion.toml"), "--samples", str(tmp_path / "samples.npz"),
                 "--metrics", "fd", "--out", str(out)]) == 0
    capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["num_samples"] == 200 and report["num_heldout"] == 10000
    assert set(report["fashion"]) == KEYS and report["fashion"]["classes_covered"] == 10
    fd = report["fashion"]["fd_fashion"]  # real images read back from data space: small, not zero
    assert 0 < fd < fashion_scores(_noise(samples.shape), data.test[:1000])["fd_fashion"] / 5
