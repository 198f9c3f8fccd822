"""FID and IS with the standard Inception network (torchmetrics, local weights file).

The real weights cannot be downloaded here, so the tests that run the network build torch-fidelity's
Inception with random (He-initialised) weights and save its state dict in the file format that
torchmetrics and torch-fidelity load. They skip when torch-fidelity cannot be imported (its package
imports torchvision); the missing-file and missing-package errors are checked everywhere.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from dmmd.cli import main
from dmmd.evaluation import inception as metrics
from dmmd.evaluation.inception import (
    INCEPTION_WEIGHTS_FILE,
    InceptionUnavailable,
    inception_fid,
    inception_score_standard,
    inception_weights_path,
)
from dmmd.evaluation.metrics import frechet_distance, inception_score

GEN = torch.Generator().manual_seed(0)
IMAGES = torch.rand(4, 1, 8, 8, generator=GEN) * 2 - 1  # grey, data space [-1, 1]
SHIFTED = (IMAGES + 0.5).clamp(-1, 1)
CHECKER = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1).reshape(1, 8, 8)
DISTINCT = torch.stack([torch.full((1, 8, 8), -1.0), torch.full((1, 8, 8), 1.0), CHECKER, IMAGES[0]])


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """torch.hub.get_dir() -> an empty folder: no cached weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a torch.hub.set_dir() elsewhere would win over TORCH_HOME
    return tmp_path / "torch_home"


def image_data_config(tmp_path, num_images: int = 4) -> tuple:
    """A config naming an array file of (3, 8, 8) images (used as they are) and a 2-sample file."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "images.npy", rng.uniform(-1, 1, size=(num_images, 3, 8, 8)).astype(np.float32))
    (tmp_path / "data.toml").write_text(f'[data]\nname = "file"\nroot = "{tmp_path / "images.npy"}"\n')
    np.savez(tmp_path / "samples.npz", samples=rng.uniform(-1, 1, size=(2, 3, 8, 8)).astype(np.float32))
    return tmp_path / "data.toml", tmp_path / "samples.npz"


def evaluate(tmp_path, *extra: str) -> list[str]:
    config, samples = image_data_config(tmp_path)
    return ["evaluate", "--samples", str(samples), "--config", str(config), "--out", str(tmp_path / "eval.json"),
            *extra]


# ----------------------------------------------------------------------------- no network needed


def test_missing_explicit_weights_is_a_one_line_error(tmp_path):
    with pytest.raises(InceptionUnavailable) as info:
        inception_fid(IMAGES, IMAGES, tmp_path / "missing.pth")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "missing.pth") in message
    assert "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE in message
    assert "--inception-weights" in message


def test_missing_cached_weights_names_the_cache_location(empty_torch_home):
    cached = empty_torch_home / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    for call in (lambda: inception_weights_path(None), lambda: inception_score_standard(IMAGES, splits=2)):
        with pytest.raises(InceptionUnavailable, match="no Inception weights given") as info:
            call()
        assert "\n" not in str(info.value) and str(cached) in str(info.value)


def test_cached_weights_are_found(empty_torch_home):
    cached = empty_torch_home / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert inception_weights_path(None) == cached
    assert inception_weights_path(cached) == cached


def test_missing_torch_fidelity_says_how_to_install(tmp_path, monkeypatch):
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # `import torch_fidelity` -> ModuleNotFoundError
    with pytest.raises(InceptionUnavailable, match="need torch-fidelity .*torchvision") as info:
        inception_fid(IMAGES, IMAGES, weights)
    assert "\n" not in str(info.value)


def test_images_become_three_channel_bytes():
    grey = torch.tensor([-1.0, -0.5, 0.0, 1.0, 1.7]).reshape(1, 1, 1, 5).repeat(2, 1, 1, 1)
    batches = list(metrics._inception_batches(grey, "x", batch_size=1))
    assert len(batches) == 2 and all(b.dtype == torch.uint8 and b.shape == (1, 3, 1, 5) for b in batches)
    assert batches[0][0, :, 0].tolist() == [[0, 64, 128, 255, 255]] * 3  # (x + 1) * 127.5, rounded, clipped
    rgb = torch.zeros(2, 3, 4, 4)
    assert next(metrics._inception_batches(rgb, "x", 50)).shape == (2, 3, 4, 4)
    for bad in (torch.zeros(2, 2, 4, 4), torch.zeros(2, 16), torch.zeros(1, 3, 4, 4)):
        with pytest.raises(ValueError, match="expected at least 2 images of shape"):
            next(metrics._inception_batches(bad, "x", 50))
    with pytest.raises(ValueError, match="finite"):
        next(metrics._inception_batches(torch.full((2, 1, 4, 4), float("nan")), "x", 50))


def test_cli_missing_weights_exits_2_with_one_line(tmp_path, empty_torch_home, capsys):
    for extra in (["--inception-weights", str(tmp_path / "missing.pth")], []):
        args = evaluate(tmp_path, "--metrics", "fd,inception_fid", *extra)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and INCEPTION_WEIGHTS_FILE in err
        assert not (tmp_path / "eval.json").exists()


def test_cli_inception_metrics_need_images(tmp_path, capsys):
    (tmp_path / "toy.toml").write_text('[data]\nname = "eight_gaussians"\n')
    np.savez(tmp_path / "samples.npz", samples=np.zeros((5, 2), np.float32))
    assert main(["evaluate", "--samples", str(tmp_path / "samples.npz"), "--config", str(tmp_path / "toy.toml"),
                 "--metrics", "inception_is", "--inception-weights", str(tmp_path / "w.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inception_is: only for images" in err


def test_cli_help_says_where_the_weights_come_from(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--inception-weights" in text and "inception_fid" in text and "inception_is" in text
    assert "torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth" in text.replace(" ", "")


# ----------------------------------------------------------------------------- with torch-fidelity


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """torch-fidelity's Inception with He-normal convolutions and a scaled last layer, saved as the
    state dict torch-fidelity loads. PyTorch's default init shrinks the 2048 pool features to ~1e-8,
    where FID is all rounding; He init keeps them ~0.1. Ten times the fc weights spread the logits
    (IS of DISTINCT: 1.16 instead of 1.006) while the smallest softmax stays far from float32
    underflow (~1e-17), where torchmetrics' IS would turn 0 * log 0 into NaN."""
    pytest.importorskip("torch_fidelity", reason="torch-fidelity (which imports torchvision) is not installed")
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:  # build without any weights (None would mean a download)
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    with torch.no_grad():
        net.fc.weight.mul_(10.0)
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return path


def pool_features(weights, images: torch.Tensor) -> torch.Tensor:
    network = metrics._inception_network(weights, "2048")
    with torch.no_grad():
        return torch.cat([network(b) for b in metrics._inception_batches(images, "x", 50)]).double()


@pytest.mark.slow  # ~17 s: four 2048 x 2048 eigen-problems and 24 Inception passes on one CPU thread
def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(random_weights):
    # torchmetrics: tr S1 + tr S2 - 2 sum sqrt(eigvals(S1 S2)) in float64. Here tr S ~ 2 and S1 S2 has
    # rank 3, so ~2045 eigenvalues are rounding noise of size ~1e-16 |S|^2 whose square roots add up to
    # at most ~2048 * 1e-8 * 1.5 ~ 3e-5 (measured: -7e-6). 1e-3 leaves a 30x margin; the shift gives ~70.
    same = inception_fid(IMAGES, IMAGES, random_weights, batch_size=3)
    shifted = inception_fid(IMAGES, SHIFTED, random_weights)
    assert abs(same) < 1e-3
    assert shifted > 1.0
    # the same distance from the network's features by the float64 eigh-based reference of this package
    reference = frechet_distance(pool_features(random_weights, IMAGES), pool_features(random_weights, SHIFTED))
    assert shifted == pytest.approx(reference, rel=1e-4, abs=1e-3)


def test_grey_images_equal_their_three_channel_copies(random_weights):
    grey = pool_features(random_weights, IMAGES[:2])
    rgb = pool_features(random_weights, IMAGES[:2].repeat(1, 3, 1, 1))
    torch.testing.assert_close(grey, rgb, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:std\\(\\)")  # one split: torchmetrics' ddof=1 std is NaN
def test_is_matches_the_reference_and_is_repeatable(random_weights):
    network = metrics._inception_network(random_weights, "logits_unbiased")
    with torch.no_grad():
        logits = network(next(metrics._inception_batches(DISTINCT, "x", 50))).double()
    state = torch.get_rng_state()
    mean, std = inception_score_standard(DISTINCT, random_weights, splits=1)
    assert torch.equal(torch.get_rng_state(), state)  # network init and split shuffle ran in forked generators
    # one split: no shuffle matters; the float64 reference of this package on the same logits
    assert mean == pytest.approx(inception_score(logits, splits=1)[0], rel=1e-5) and math.isnan(std)
    assert mean > 1.1  # the images' class probabilities differ (measured 1.16)
    # identical images: p(y|x) = p(y), every KL is 0 and IS = 1 (up to float32 rounding)
    same, spread = inception_score_standard(DISTINCT[:1].repeat(4, 1, 1, 1), random_weights, splits=2)
    assert same == pytest.approx(1.0, abs=1e-5) and spread == pytest.approx(0.0, abs=1e-5)
    assert inception_score_standard(DISTINCT, random_weights, splits=2) == inception_score_standard(
        DISTINCT, random_weights, splits=2)


def test_a_file_that_is_not_the_weights_is_a_one_line_error(tmp_path, random_weights):
    (tmp_path / "text.pth").write_text("not weights\n")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    for name in ("text.pth", "other.pth"):
        with pytest.raises(InceptionUnavailable, match="not torch-fidelity's Inception weights") as info:
            inception_fid(IMAGES, IMAGES, tmp_path / name)
        assert "\n" not in str(info.value)


def test_cli_reports_inception_metrics(tmp_path, random_weights, capsys):
    args = evaluate(tmp_path, "--metrics", "fd,inception_fid,inception_is", "--inception-weights", str(random_weights))
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "eval.json").read_text())
    assert report["inception_fid"] > 0 and "fd" in report and "kid" not in report
    # two samples in two splits: each split is one image, whose KL to itself is 0, so IS = 1
    assert report["inception_is"]["splits"] == 2 and report["inception_is"]["mean"] == pytest.approx(1.0, abs=1e-5)
