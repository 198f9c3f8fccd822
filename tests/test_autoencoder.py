"""The autoencoder and latent modelling: shapes, scaling, identity, resume, and a latent run end to end."""

import json
import shutil

import numpy as np
import pytest
import torch

from dmmd import config
from dmmd.cli import main
from dmmd.data.datasets import load_digits
from dmmd.methods.latent import decode, encode, encode_dataset, load_autoencoder
from dmmd.methods.sample import clip_range
from dmmd.nets.autoencoder import ConvAutoencoder, moments, reconstruction_loss, weights_sha256
from dmmd.training.autoencoder import train_autoencoder

AE_ARGS = ["--set", "autoencoder.channels=[4,8]", "--set", "autoencoder.latent_dim=6", "--set", "autoencoder.steps=30",
           "--set", "autoencoder.batch_size=32", "--set", "autoencoder.log_every=10", "--set",
           "autoencoder.checkpoint_every=20", "--set", "train.threads=1"]
MODEL_ARGS = ["--set", "model.width=16", "--set", "model.depth=1", "--set", "model.feature_dim=8", "--set",
              "model.time_dim=8", "--set", "train.steps=8", "--set", "train.batch_size=16", "--set",
              "train.checkpoint_every=4", "--set", "sample.num_levels=3", "--set", "sample.steps_per_level=2",
              "--set", "sample.replay_particles=40", "--set", "sample.num_steps=4", "--set", "train.threads=1"]


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 64, 64), (1, 7, 9)])
def test_encode_decode_shapes(shape):
    torch.manual_seed(0)
    ae = ConvAutoencoder(shape, latent_dim=5, channels=(4, 8, 8))
    x = torch.rand(3, *shape) * 2 - 1
    recon, e = ae(x)
    assert e.shape == (3, 5) and recon.shape == x.shape
    assert recon.abs().max() <= 1.0  # tanh output


def test_reconstruction_loss_matches_float64_reference():
    torch.manual_seed(1)
    ae = ConvAutoencoder((1, 8, 8), latent_dim=4, channels=(3, 5)).double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 2 - 1
    loss, terms = reconstruction_loss(ae, x, latent_l2=0.3)
    with torch.no_grad():
        r, e = ae.decode(ae.encode(x)).numpy(), ae.encode(x).numpy()
    mse = sum(float(((r[i] - x[i].numpy()) ** 2).sum()) for i in range(6)) / x.numel()
    l2 = sum(float((e[i] ** 2).sum()) for i in range(6)) / 6
    assert float(terms["mse"]) == pytest.approx(mse, rel=1e-12)
    assert float(loss.detach()) == pytest.approx(mse + 0.3 * l2, rel=1e-12)


def test_moments_match_float64_reference_and_survive_a_constant_coordinate():
    gen = torch.Generator().manual_seed(2)
    e = torch.randn(250, 4, generator=gen) * torch.tensor([1.0, 3.0, 0.2, 0.0]) + torch.tensor([5.0, -1.0, 0.0, 7.0])
    mean, std = moments(e.split(64))
    ref = e.double()
    torch.testing.assert_close(mean.double(), ref.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std[:3].double(), ref.std(0, unbiased=False)[:3], rtol=1e-5, atol=1e-6)
    assert std[3] > 0 and torch.isfinite((e - mean) / std).all()


def test_weights_sha256_is_an_identity():
    torch.manual_seed(3)
    state = ConvAutoencoder((1, 8, 8), 4, (3,)).state_dict()
    reordered = dict(reversed(list(state.items())))
    assert weights_sha256(state) == weights_sha256(reordered)
    changed = {k: v.clone() for k, v in state.items()}
    changed["latent_std"][0] += 1e-6
    assert weights_sha256(changed) != weights_sha256(state)


def test_clip_is_off_for_latents():
    cfg = config.load(None, ["method=ddpm"])
    assert clip_range(cfg) == 1.0
    cfg.model.latent = "somewhere"
    assert clip_range(cfg) is None


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "ae"
    assert main(["train-autoencoder", *AE_ARGS, "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_autoencoder_writes_its_folder(ae_dir):
    assert (ae_dir / "latest").read_text().strip() == "checkpoints/final.pt"
    assert (ae_dir / "reconstructions.png").stat().st_size > 500
    summary = json.loads((ae_dir / "autoencoder.json").read_text())
    assert summary["steps"] == 30 and summary["sha256"] == load_autoencoder(ae_dir).sha256
    kinds = [json.loads(line)["kind"] for line in (ae_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("train") == 3 and kinds.count("val") == 2


def test_standardised_latents_of_the_training_data(ae_dir):
    """Mean 0 and (population) std 1 per coordinate on the training split; the cache returns the same."""
    ae = load_autoencoder(ae_dir)
    data = load_digits()
    z = encode(data.train, ae).double()
    assert z.shape == (1500, 6)
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-4
    cfg = config.load(None)
    first = encode_dataset(data, ae, cfg.data, progress=False)
    assert list((ae_dir / "latents").glob("digits-*.pt"))
    second = encode_dataset(data, ae, cfg.data, progress=False)
    assert first.kind == "points" and torch.equal(first.train, second.train) and torch.equal(first.test, second.test)
    torch.testing.assert_close(first.train, z.float())
    images = decode(first.test[:5], ae)
    assert images.shape == (5, 1, 8, 8) and images.abs().max() <= 1


def test_checkpoint_round_trip_and_exact_resume(ae_dir, tmp_path):
    """Reloaded: same identity and outputs. 30 steps in one go equal 20 + a resume to 30."""
    a, b = load_autoencoder(ae_dir), load_autoencoder(ae_dir / "checkpoints" / "final.pt")
    x = load_digits().test[:7]
    assert a.sha256 == b.sha256 and torch.equal(decode(encode(x, a), a), decode(encode(x, b), b))
    cfg = config.load(None, [s for s in AE_ARGS if s != "--set"])
    cfg.autoencoder.steps = 20
    data = load_digits()
    train_autoencoder(cfg, data, tmp_path / "half", progress=False)
    cfg.autoencoder.steps = 30
    resumed = train_autoencoder(cfg, data, tmp_path / "half", resume=True, progress=False)
    assert resumed.sha256 == a.sha256


@pytest.fixture(scope="module")
def latent_run(ae_dir, tmp_path_factory):
    """A DMMD model trained on the latents of a copy of the autoencoder."""
    root = tmp_path_factory.mktemp("latent")
    shutil.copytree(ae_dir, root / "ae")
    run = root / "dmmd"
    assert main(["train", *MODEL_ARGS, "--set", f"model.latent={root / 'ae'}", "--out", str(run), "--no-progress"]) == 0
    return root, run


def test_latent_run_end_to_end(latent_run, tmp_path, capsys):
    """Samples, picture, diversity and evaluate are in pixel space; the floor is reported."""
    root, run = latent_run
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["latent_id"] == load_autoencoder(root / "ae").sha256
    from dmmd.runtime.checkpoint import load

    assert load(run)["data_shape"] == [6]
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "30", "--out", str(out), "--no-progress"]) == 0
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (30, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 16  # digits' 0..16
    assert "classes" in json.loads((out / "diversity.json").read_text())["diversity"]
    assert (out / "samples.png").stat().st_size > 500
    capsys.readouterr()
    assert main(["evaluate", "--samples", str(out / "samples.npz"), "--checkpoint", str(run),
                 "--metrics", "fd", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    floor = report["reconstruction_floor"]
    assert floor["num_images"] == 30 and floor["fd_digits"] > 0 and report["digits"]["fd_digits"] > 0


@pytest.mark.parametrize("method", ["fm", "ddpm"])
def test_other_methods_in_latents(ae_dir, tmp_path, method):
    run = tmp_path / method
    assert main(["train", *MODEL_ARGS, "--method", method, "--set", f"model.latent={ae_dir}", "--out", str(run),
                 "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "6", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    samples = np.load(tmp_path / "s" / "samples.npz")["samples"]
    assert samples.shape == (6, 1, 8, 8) and np.isfinite(samples).all()


def test_a_latent_model_refuses_a_foreign_or_missing_autoencoder(latent_run, tmp_path, capsys):
    root, run = latent_run
    foreign = tmp_path / "foreign"
    assert main(["train-autoencoder", *AE_ARGS, "--set", "seed=1", "--out", str(foreign), "--no-progress"]) == 0
    final = root / "ae" / "checkpoints" / "final.pt"
    original = final.read_bytes()
    try:
        shutil.copy(foreign / "checkpoints" / "final.pt", final)
        capsys.readouterr()
        assert main(["sample", "--checkpoint", str(run), "--num-samples", "4", "--out", str(tmp_path / "s"),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "is not the one this model was trained on" in err and len(err.strip().splitlines()) == 1
        final.rename(final.with_suffix(".gone"))
        assert main(["sample", "--checkpoint", str(run), "--num-samples", "4", "--out", str(tmp_path / "s"),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "model.latent" in err and len(err.strip().splitlines()) == 1
    finally:
        final.with_suffix(".gone").unlink(missing_ok=True)
        final.write_bytes(original)


@pytest.mark.parametrize("preset", ["fashion_mnist_latent", "celeba64_latent", "lsun_church64_latent"])
def test_latent_presets_dry_run(capsys, preset):
    for command in ("train-autoencoder", "train"):
        assert main([command, "--config", f"configs/{preset}.toml", "--dry-run"]) == 0
        cfg = json.loads(capsys.readouterr().out)
        assert cfg["model"]["latent"] and cfg["model"]["backbone"] == "mlp" and cfg["method"] == "dmmd"
    if preset != "fashion_mnist_latent":  # the GPU presets' autoencoder fits 64x64 images
        sizes = config.load(f"configs/{preset}.toml").autoencoder
        ae = ConvAutoencoder((3, 64, 64), sizes.latent_dim, tuple(sizes.channels))
        assert ae(torch.zeros(1, 3, 64, 64))[0].shape == (1, 3, 64, 64)


def test_folder_preset_streams_through_the_latent_path(tmp_path):
    """The 64x64 presets' path at toy sizes: the autoencoder reads the stream, every streamed image
    is encoded for training, samples decode to the folder's image size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    root.mkdir()
    for i in range(14):
        Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)).save(root / f"{i}.png")
    small = ["--set", f"data.root={root}", "--set", "data.image_size=16", "--set", "data.workers=2", "--set",
             "data.in_memory=10", "--set", "train.device=cpu", "--set", "autoencoder.channels=[4,8]", "--set",
             "autoencoder.latent_dim=5", "--set", "autoencoder.steps=3", "--set", "autoencoder.batch_size=4", "--set",
             "model.width=16", "--set", "model.depth=1", "--set", "model.feature_dim=8", "--set", "model.time_dim=8",
             "--set", "train.steps=3", "--set", "train.batch_size=4", "--set", "sample.replay_particles=4", "--set",
             "sample.num_levels=2", "--set", "sample.steps_per_level=1", "--set", f"model.latent={tmp_path / 'ae'}"]
    assert main(["train-autoencoder", "--config", "configs/celeba64_latent.toml", *small, "--no-progress"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/celeba64_latent.toml", *small, "--out", str(run), "--no-progress"]) == 0
    cache = next((tmp_path / "ae" / "latents").glob("folder-*.pt"))
    assert torch.load(cache, weights_only=True)["train"].shape == (14, 5)  # the whole stream, not the in-memory subset
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "3", "--out", str(out), "--no-progress"]) == 0
    assert np.load(out / "samples.npz")["samples"].shape == (3, 3, 16, 16)


def test_compare_races_in_latents_and_scores_in_pixels(ae_dir, tmp_path):
    """`dmmd compare --latent AE`: every method trains on the latents, samples are decoded and
    scored in pixels (8x8 digit grids), and the reconstruction floor sits beside the table."""
    out = tmp_path / "cmp"
    i = MODEL_ARGS.index("train.steps=8")
    small = MODEL_ARGS[:i - 1] + MODEL_ARGS[i + 1:]  # the budget stops training
    assert main(["compare", *small, "--latent", str(ae_dir), "--nfe", "2", "--num-samples", "12", "--budget", "1",
                 "--points", "1", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["latent"] == str(ae_dir.resolve()) and result["reconstruction_floor"]["fd_digits"] > 0
    assert {r["method"] for r in result["rows"]} == {"dmmd", "ddpm", "fm"}
    assert all(r["metric_name"] == "FD-digits" and np.isfinite(r["metric"]) for r in result["rows"])
    assert "Reconstruction floor" in (out / "compare.md").read_text()
    assert (out / "grids_nfe2.png").stat().st_size > 1000


def test_python_api_trains_in_latents_and_decodes(ae_dir, tmp_path):
    """dmmd.train with model.latent encodes like `dmmd train`; Pipeline.sample decodes to data space,
    the same images as `dmmd sample` for the same seed."""
    import dmmd

    overrides = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in MODEL_ARGS if a != "--set"}
    pipe = dmmd.train("digits", tmp_path / "api", overrides={**overrides, "model.latent": str(ae_dir)}, progress=False)
    assert pipe.model_shape == (6,) and pipe.data_shape == (1, 8, 8)
    x = pipe.sample(5, seed=3)
    assert x.shape == (5, 1, 8, 8) and x.min() >= 0 and x.max() <= 16  # decoded digits, 0..16
    again = dmmd.Pipeline.from_run(tmp_path / "api", device="cpu").sample(5, seed=3)
    torch.testing.assert_close(again, x)
    assert main(["sample", "--checkpoint", str(tmp_path / "api"), "--num-samples", "5", "--seed", "3", "--out",
                 str(tmp_path / "s"), "--no-progress"]) == 0
    cli = torch.from_numpy(np.load(tmp_path / "s" / "samples.npz")["samples"])
    torch.testing.assert_close(cli.float(), x.float(), rtol=0, atol=1e-4)
