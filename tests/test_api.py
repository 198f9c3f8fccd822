"""The Python API (dmmd.Pipeline, dmmd.Trainer, dmmd.train) against the CLI and the library it wraps."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dmmd
from dmmd.apps.pipeline import sample_folder_name
from dmmd.cli import main
from dmmd.config import ConfigError
from dmmd.methods.sample import settings_for_nfe

TINY_DIGITS = {"data.name": "digits", "model.width": 16, "model.depth": 1, "model.feature_dim": 8,
               "model.time_dim": 8, "train.steps": 6, "train.batch_size": 16, "train.checkpoint_every": 3,
               "train.log_every": 2, "sample.num_levels": 3, "sample.steps_per_level": 2,
               "sample.replay_particles": 20}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "digits"
    pipe = dmmd.train(None, out, overrides=TINY_DIGITS, progress=False, device="cpu")
    return out, pipe


def test_train_returns_the_final_checkpoint_as_a_pipeline(run):
    out, pipe = run
    assert isinstance(pipe, dmmd.Pipeline) and pipe.cfg.train.steps == 6 and pipe.data_shape == (1, 8, 8)
    assert (out / "latest").read_text().strip() == "checkpoints/final.pt"
    reloaded = dmmd.Pipeline.from_run(out / "checkpoints" / "final.pt", device="cpu")
    torch.testing.assert_close(pipe.sample(4, seed=3), reloaded.sample(4, seed=3), rtol=0, atol=0)


def test_trainer_refuses_a_folder_with_files_and_resumes_on_request(run, tmp_path):
    out, _ = run
    with pytest.raises(ConfigError, match="not empty"):
        dmmd.Trainer(None, out, overrides=TINY_DIGITS)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        dmmd.train(None, other, overrides=TINY_DIGITS)
    with pytest.raises(ConfigError, match="no config.json"):
        dmmd.Trainer(None, other, resume=True)
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1


def test_resume_continues_the_run_with_its_own_config(tmp_path):
    out = tmp_path / "r"
    dmmd.train(None, out, overrides=TINY_DIGITS, progress=False)
    pipe = dmmd.train(None, out, overrides={"train.steps": 8}, resume=True, progress=False)
    assert pipe.cfg.train.steps == 8 and pipe.cfg.model.width == 16  # the folder's config, steps changed
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 8


def test_sample_equals_the_cli_in_data_space(run, tmp_path):
    """dmmd sample writes data-space samples (digits 0..16); Pipeline.sample must give the same array."""
    out, pipe = run
    assert main(["sample", "--checkpoint", str(out), "--num-samples", "12", "--seed", "4", "--device", "cpu",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    cli = np.load(tmp_path / "s" / "samples.npz")["samples"]
    x = pipe.sample(12, seed=4)
    assert x.dtype == torch.float32 and x.device.type == "cpu"
    np.testing.assert_array_equal(x.numpy(), cli)
    # model space is [-1, 1]-scaled: data space is (z + 1) * 8, which the CLI's file checks independently
    z = pipe._draw(pipe.cfg, 12, 4, False, 4096)
    np.testing.assert_allclose(cli, (z.double().numpy() + 1.0) * 8.0, rtol=1e-6, atol=1e-5)


def test_sample_i_depends_only_on_seed_and_index(run):
    _, pipe = run
    # equal up to float32 rounding: batched matrix products round differently by batch size
    torch.testing.assert_close(pipe.sample(3, seed=1), pipe.sample(7, seed=1, batch_size=2)[:3], rtol=0, atol=1e-5)
    assert not torch.equal(pipe.sample(3, seed=1), pipe.sample(3, seed=2))


def test_nfe_and_overrides_follow_the_cli_rules(run):
    _, pipe = run
    cfg = pipe.sample_config(nfe=20)
    expected = pipe.sample_config()
    settings_for_nfe(expected, 20)
    assert cfg.sample == expected.sample and cfg.sample.num_levels * cfg.sample.steps_per_level == 20
    kept = pipe.sample_config(nfe=20, step_size=0.05, inject=0.2)  # explicit keys win over the NFE rule
    assert kept.sample.step_size == 0.05 and kept.sample.inject == 0.2
    assert pipe.cfg.sample.num_levels == 3  # the pipeline's own config is untouched
    with pytest.raises(ConfigError, match="unknown sample settings"):
        pipe.sample(2, steps=3)
    with pytest.raises(ConfigError, match="nfe"):
        pipe.sample(2, nfe=0)
    with pytest.raises(ConfigError, match="sample.sampler"):
        pipe.sample(2, sampler="heun")


def test_sample_makes_missing_statistics_in_memory(run):
    """Other sampler settings than the checkpoint's: the replay is made on the fly (not stored)."""
    out, pipe = run
    x = pipe.sample(5, nfe=4, seed=0)
    assert x.shape == (5, 1, 8, 8) and torch.isfinite(x).all()
    stored = dmmd.Pipeline.from_run(out, device="cpu").stats
    assert len(pipe.stats["replay"]) == len(stored["replay"]) + 1


def test_save_images_writes_one_png_per_sample_with_the_data_bytes(run, tmp_path):
    _, pipe = run
    x = pipe.sample(5, seed=0).clamp(0, 16)
    paths = pipe.save_images(x, tmp_path / "png")
    assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(5)]
    for p, sample in zip(paths, x.double().numpy()):
        with Image.open(p) as img:
            assert img.mode == "L" and img.size == (8, 8)
            pixels = np.asarray(img).astype(np.float64)
        # independent float64 reference: digits 0..16 map linearly onto bytes 0..255
        np.testing.assert_allclose(pixels, np.round(sample[0] * 255.0 / 16.0), atol=1)


def test_evaluate_scores_the_held_out_data_against_itself_as_identical(run):
    """Held-out data, passed in data space, must score FD ~ 0 and MMD ~ 0: a missing or doubled
    scale conversion would make these large."""
    _, pipe = run
    heldout = (pipe.data.test + 1.0) * 8.0  # data space, written out independently of to_data_space
    report = pipe.evaluate(heldout, metrics=["fd", "mmd"])
    assert abs(report["fd"]) < 1e-6 and abs(report["mmd_rbf"]) < 1e-2
    noisy = pipe.evaluate(heldout + 4.0 * torch.randn(heldout.shape, generator=torch.Generator().manual_seed(0)),
                          metrics=["fd"])
    assert noisy["fd"] > 1.0
    with pytest.raises(ConfigError, match="shape"):
        pipe.evaluate(torch.zeros(4, 2))
    with pytest.raises(ConfigError, match="unknown metrics"):
        pipe.evaluate(heldout, metrics=["fid"])


def test_save_images_needs_image_data(tmp_path):
    pipe = dmmd.train(None, tmp_path / "toy", overrides={**TINY_DIGITS, "data.name": "eight_gaussians",
                                                          "data.num_points": 200}, progress=False)
    x = pipe.sample(6, seed=0)
    assert x.shape == (6, 2)
    with pytest.raises(ConfigError, match="image data"):
        pipe.save_images(x, tmp_path / "png")
    assert pipe.save_picture(x, tmp_path / "s.png").stat().st_size > 1000


def test_load_config_takes_presets_files_and_configs(tmp_path):
    from dmmd import config
    from dmmd.apps.pipeline import load_config

    by_name = load_config("digits", {"train.steps": 5})
    by_file = config.load("configs/digits.toml", ["train.steps=5"])
    assert by_name == by_file
    assert load_config(by_file) == by_file and load_config(by_file) is not by_file
    assert load_config(by_file, ["seed=3"]).seed == 3 and by_file.seed == 0
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no_such_preset")


def test_sample_folder_names_differ_with_any_sample_setting():
    from dmmd import config

    cfg = config.load("configs/digits.toml")
    name = sample_folder_name(cfg, 0, 100)
    assert name.startswith("samples-approx-nfe100-seed0-") and name == sample_folder_name(cfg, 0, 100)
    changed = config.load("configs/digits.toml", ["sample.renoise=0.2"])
    assert len({name, sample_folder_name(changed, 0, 100), sample_folder_name(cfg, 1, 100),
                sample_folder_name(cfg, 0, 50)}) == 4


def test_thread_guard_avoids_spinning_threads_when_torch_came_first():
    """torch imported before dmmd (without OMP_WAIT_POLICY): dmmd runs on one thread and says so once;
    dmmd imported first, or the variable set before Python started: torch's own thread count is kept."""
    body = ("from dmmd.runtime.device import thread_guard\n"
            "before = torch.get_num_threads()\n"
            "with thread_guard(0) as n:\n"
            "    inside = torch.get_num_threads()\n"
            "with thread_guard(0):\n"
            "    pass\n"
            "print(dmmd.openmp.SET_TOO_LATE, before, n, inside, torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = "2"

    def run(imports, extra_env=None):
        return subprocess.run([sys.executable, "-c", imports + body], env={**env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=120)

    late = run("import torch\nimport dmmd\n")
    assert late.stdout.split() == ["True", "2", "1", "1", "2"], late.stderr
    assert late.stderr.count("note: torch was imported before dmmd") == 1  # the note, once
    first = run("import dmmd\nimport torch\n")
    assert first.stdout.split() == ["False", "2", "2", "2", "2"], first.stderr
    assert "OMP_WAIT_POLICY" not in first.stderr
    pinned = run("import torch\nimport dmmd\n", {"OMP_WAIT_POLICY": "PASSIVE"})
    assert pinned.stdout.split() == ["False", "2", "2", "2", "2"], pinned.stderr


@pytest.mark.parametrize("method, kernel", [("dmmd", "linear"), ("dmmd", "rbf"), ("ddpm", "linear"),
                                            ("fm", "linear")])
def test_preview_samples_of_a_model_in_training(method, kernel):
    """The TensorBoard grid's samples: any method, no stored statistics needed."""
    from dmmd import config
    from dmmd.methods.build import build_model
    from dmmd.training.preview import preview_samples

    cfg = config.load(None, [f"method={method}", f"model.kernel={kernel}", "model.width=8", "model.depth=1",
                             "model.feature_dim=4", "model.time_dim=4", "sample.num_levels=2",
                             "sample.steps_per_level=1", "sample.num_steps=2",
                             *(["sample.sampler=exact"] if kernel != "linear" else [])])
    torch.manual_seed(0)
    model = build_model(cfg, (1, 4, 4))
    data = torch.rand(40, 1, 4, 4) * 2 - 1
    z = preview_samples(model, cfg, data, (1, 4, 4), num=5)
    assert z.shape == (5, 1, 4, 4) and torch.isfinite(z).all()
