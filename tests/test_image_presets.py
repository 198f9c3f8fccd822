"""Image presets end to end on small files made here: the mnist preset with the full U-Net at reduced width."""

import json
import struct

import numpy as np
import pytest

from dmmd.cli import main


def _write_idx(path, images):
    path.write_bytes(struct.pack(">IIII", 0x803, len(images), 28, 28) + images.astype(np.uint8).tobytes())


def test_mnist_preset_trains_and_samples(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "mnist"
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (48, 28, 28)))
    _write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28)))
    run = tmp_path / "run"
    small = ["--set", f"data.root={root}", "--set", "train.steps=20", "--set", "model.base_channels=8",
             "--set", "train.batch_size=8", "--set", "sample.replay_particles=8", "--set", "sample.num_levels=2",
             "--set", "sample.steps_per_level=2"]
    assert main(["train", "--config", "configs/mnist.toml", *small, "--out", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["backbone"] == "unet"
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "4", "--out", str(out), "--no-progress"]) == 0
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (4, 1, 28, 28) and np.isfinite(samples).all()
    assert (out / "samples.png").exists()


def test_cifar10_preset_dry_run(capsys):
    assert main(["train", "--config", "configs/cifar10.toml", "--set", "data.root=/data/cifar", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["data"] == {**cfg["data"], "name": "cifar10", "root": "/data/cifar"}
    assert (cfg["sample"]["num_levels"], cfg["sample"]["steps_per_level"]) == (10, 10)


@pytest.mark.parametrize("preset", ["celeba64", "lsun_church64", "celebahq128"])
def test_folder_presets_stream_and_train(tmp_path, preset):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(root / ("sub" if i % 2 else "") / f"{i}.png")
    run = tmp_path / "run"
    small = ["--set", f"data.root={root}", "--set", "data.image_size=16", "--set", "data.workers=2",
             "--set", "model.base_channels=8", "--set", "model.channel_mults=1,2", "--set", "model.num_res_blocks=1",
             "--set", "model.attn_resolutions=8", "--set", "train.steps=3", "--set", "train.batch_size=4",
             "--set", "train.device=cpu", "--set", "sample.replay_particles=4", "--set", "sample.num_levels=2",
             "--set", "sample.steps_per_level=1"]
    assert main(["train", "--config", f"configs/{preset}.toml", *small, "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "3", "--out", str(out), "--no-progress"]) == 0
    assert np.load(out / "samples.npz")["samples"].shape == (3, 3, 16, 16)
