"""The command line end to end on a tiny run, reloading in a new process, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dmmd.cli import main

TINY = ["--set", "data.name=eight_gaussians", "--set", "data.num_points=500", "--set", "model.width=16",
        "--set", "model.feature_dim=8", "--set", "model.time_dim=8", "--set", "model.depth=1",
        "--set", "train.steps=12", "--set", "train.batch_size=16", "--set", "train.checkpoint_every=5",
        "--set", "sample.num_levels=3", "--set", "sample.steps_per_level=2", "--set", "sample.replay_particles=50"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", *TINY, "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_writes_run_folder(run_dir):
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 12
    assert (run_dir / "log.txt").read_text().strip()
    assert (run_dir / "latest").read_text().strip() == "checkpoints/final.pt"
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert kept == ["best.pt", "final.pt", "step_00000005.pt", "step_00000010.pt"]
    assert not list(run_dir.rglob("*.tmp"))


def test_dry_run_prints_resolved_config(capsys):
    assert main(["train", "--config", "configs/digits.toml", "--set", "train.steps=7", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["steps"] == 7 and cfg["data"]["name"] == "digits"


@pytest.mark.parametrize("sampler", ["exact", "approx"])
def test_sample_writes_outputs(run_dir, tmp_path, sampler):
    out = tmp_path / sampler
    assert main(["sample", "--checkpoint", str(run_dir), "--sampler", sampler, "--num-samples", "40",
                 "--out", str(out), "--no-progress"]) == 0
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (40, 2) and np.isfinite(samples).all()
    assert (out / "samples.png").stat().st_size > 1000
    report = json.loads((out / "diversity.json").read_text())
    assert "distinct_share" in report["diversity"] and "modes" in report["diversity"]


def test_reload_in_new_process_gives_identical_samples(run_dir, tmp_path):
    """Same checkpoint, same seed, a fresh interpreter: identical features and samples."""
    script = (
        "import sys, torch; from dmmd.methods.build import load_model, build_process; from dmmd.methods.sample import sample\n"
        "cfg, disc, stats, p = load_model(sys.argv[1])\n"
        "x = torch.linspace(-2, 2, 20).view(10, 2)\n"
        "f = disc.features(x, 0.3)\n"
        "z = sample(disc, cfg, stats, build_process(cfg.process), (2,), 16, seed=5)\n"
        "torch.save({'f': f, 'z': z}, sys.argv[2])\n"
    )
    outs = []
    for i in range(2):
        path = tmp_path / f"out{i}.pt"
        subprocess.run([sys.executable, "-c", script, str(run_dir), str(path)], check=True)
        outs.append(torch.load(path, weights_only=True))
    assert torch.equal(outs[0]["f"], outs[1]["f"]) and torch.equal(outs[0]["z"], outs[1]["z"])


def test_resume_extends_run(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", str(copy), "--set", "train.steps=15", "--no-progress"]) == 0
    from dmmd.runtime.checkpoint import load

    assert load(copy)["step"] == 15


def test_calibrate_then_sample_other_settings(run_dir, tmp_path, capsys):
    """Unstored sampler settings: the replay is made on demand (a note, no error), and equals the
    one `dmmd calibrate` stores."""
    import shutil

    import numpy as np

    copy = tmp_path / "cal"
    shutil.copytree(run_dir, copy)
    args = ["--set", "sample.num_levels=4", "--set", "sample.steps_per_level=1"]
    assert main(["sample", "--checkpoint", str(copy), "--sampler", "approx", "--num-samples", "5",
                 "--out", str(tmp_path / "s1"), "--no-progress", *args]) == 0
    assert "making the level statistics and replay" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(copy), "--no-progress", *args]) == 0
    assert main(["sample", "--checkpoint", str(copy), "--sampler", "approx", "--num-samples", "5",
                 "--out", str(tmp_path / "s2"), "--no-progress", *args]) == 0
    assert "making the level statistics" not in capsys.readouterr().err
    first, second = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("s1", "s2"))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("nfe", [7, 20])
def test_sample_nfe_for_every_method(run_dir, tmp_path, nfe):
    """--nfe N sets the sampler's evaluations for DMMD (replay made on demand) and the diversity
    report records N."""
    import json

    assert main(["sample", "--checkpoint", str(run_dir), "--nfe", str(nfe), "--num-samples", "4",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "s" / "diversity.json").read_text())
    assert report["nfe"] == nfe
    assert report["settings"]["num_levels"] * report["settings"]["steps_per_level"] == nfe


@pytest.mark.parametrize("extra", [["--set", "model.objective=kale", "--set", "sample.sampler=kale"],
                                   ["--set", "model.kernel=rq", "--set", "sample.sampler=exact"],
                                   ["--set", "process.schedule=cosine"],
                                   ["--method", "ddpm"],
                                   ["--method", "ddpm", "--set", "sample.sampler=ddim", "--set", "sample.num_steps=5"],
                                   ["--method", "fm"],
                                   ["--method", "fm", "--set", "sample.sampler=heun", "--set", "sample.num_steps=5"]])
def test_variants_train_and_sample(tmp_path, extra):
    run = tmp_path / "run"
    assert main(["train", *TINY, *extra, "--out", str(run), "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "8", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    assert np.isfinite(np.load(tmp_path / "s" / "samples.npz")["samples"]).all()


def test_evaluate_reports_metrics(run_dir, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(run_dir), "--num-samples", "30", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--samples", str(out / "samples.npz"), "--checkpoint", str(run_dir),
                 "--out", str(tmp_path / "eval.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "eval.json").read_text())
    assert {"fd", "kid", "mmd_rbf", "energy_distance", "precision", "diversity"} <= report.keys()
    assert main(["evaluate", "--samples", str(out / "samples.npz"), "--checkpoint", str(run_dir)]) == 0
    summary = capsys.readouterr().out.splitlines()  # a person's summary: the same figures, a few lines
    assert summary[0] == f"{report['num_samples']} samples against {report['num_heldout']} held-out points"
    assert f"FD {report['fd']:.4g}" in summary[1] and "modes:" in "\n".join(summary) and len(summary) <= 8
    assert report["fd"] > 0 and "modes" in report["diversity"]


def test_train_on_array_file(tmp_path):
    x = np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    run = tmp_path / "run"
    pairs = [TINY[i:i + 2] for i in range(0, len(TINY), 2)]
    args = [a for pair in pairs if not pair[1].startswith("data.") for a in pair]
    assert main(["train", *args, "--set", "data.name=file", "--set", f"data.root={tmp_path / 'data.npz'}",
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "6", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["samples"].shape == (6, 3)
