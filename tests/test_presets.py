"""Presets shipped in the package (configs/ is the same folder), --preset, `dmmd presets`, --version,
train --device and sample --png-dir on the command line."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dmmd
from dmmd import presets
from dmmd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_configs_is_the_package_presets_folder():
    """One source: the checkout's configs/ resolves to dmmd/presets (no copy that could drift)."""
    assert (ROOT / "configs").resolve() == presets.FOLDER
    assert sorted(p.name for p in (ROOT / "configs").glob("*.toml")) == [f"{n}.toml" for n in presets.names()]
    assert {"digits", "eight_gaussians", "mnist", "cifar10"} <= set(presets.names())


def test_presets_lists_each_with_the_first_sentence_of_its_comment(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == presets.names()
    for line, name in zip(lines, presets.names()):
        head = []
        for text in (ROOT / "configs" / f"{name}.toml").read_text().splitlines():
            if not text.startswith("#"):
                break
            head.append(text.lstrip("# ").strip())
        shown = line[len(name):].strip()
        assert " ".join(head).startswith(shown) and shown.endswith("."), (name, shown)


def test_preset_loads_the_same_config_as_the_file(capsys):
    assert main(["train", "--preset", "digits", "--set", "train.steps=7", "--dry-run"]) == 0
    by_preset = json.loads(capsys.readouterr().out)
    assert main(["train", "--config", "configs/digits.toml", "--set", "train.steps=7", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == by_preset and by_preset["train"]["steps"] == 7


def test_unknown_preset_and_both_sources_are_one_line_errors(capsys):
    assert main(["train", "--preset", "nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown preset 'nope'") and "digits" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "digits", "--config", "configs/digits.toml"])
    assert exit_info.value.code == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dmmd {dmmd.__version__}"


def test_train_device_defaults_to_auto_and_takes_device(capsys):
    assert main(["train", "--preset", "digits", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["device"] == "auto"
    assert main(["train", "--preset", "digits", "--device", "cpu", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["device"] == "cpu"
    assert main(["train", "--preset", "digits", "--device", "tpu", "--dry-run"]) == 2
    assert "train.device" in capsys.readouterr().err


def test_sample_png_dir_writes_one_png_per_sample(tmp_path):
    run = tmp_path / "run"
    tiny = ["--set", "model.width=16", "--set", "model.depth=1", "--set", "model.feature_dim=8",
            "--set", "model.time_dim=8", "--set", "train.steps=4", "--set", "train.batch_size=16",
            "--set", "sample.num_levels=2", "--set", "sample.steps_per_level=2", "--set", "sample.replay_particles=20"]
    assert main(["train", "--preset", "digits", *tiny, "--out", str(run), "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "7", "--out", str(tmp_path / "s"),
                 "--png-dir", str(tmp_path / "png"), "--no-progress"]) == 0
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 7
    samples = np.load(tmp_path / "s" / "samples.npz")["samples"]  # digits in data space, 0..16
    with Image.open(pngs[3]) as img:
        assert img.mode == "L" and img.size == (8, 8)
        np.testing.assert_allclose(np.asarray(img), np.clip(np.round(samples[3, 0] * 255 / 16), 0, 255), atol=1)


def test_sample_folders_of_other_settings_do_not_overwrite(tmp_path):
    run = tmp_path / "run"
    tiny = ["--set", "data.name=eight_gaussians", "--set", "data.num_points=200", "--set", "model.width=8",
            "--set", "model.depth=1", "--set", "model.feature_dim=4", "--set", "model.time_dim=4",
            "--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "sample.num_levels=2",
            "--set", "sample.steps_per_level=1", "--set", "sample.replay_particles=10"]
    assert main(["train", *tiny, "--out", str(run), "--no-progress"]) == 0
    for extra in ([], ["--set", "sample.inject=0.2"], ["--seed", "1"]):
        assert main(["sample", "--checkpoint", str(run), "--num-samples", "5", "--no-progress", *extra]) == 0
    folders = sorted(p.name for p in run.glob("samples-*"))
    assert len(folders) == 3 and all(f.startswith("samples-approx-nfe2-seed") for f in folders)
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "5", "--png-dir", str(tmp_path / "p")]) == 2


def test_study_preset_is_the_study_own_preset_flag(monkeypatch):
    import dmmd.apps.studies.flows as flows
    import dmmd.apps.studies.kernel_width as kernel_width

    seen = []
    monkeypatch.setattr(flows, "main", lambda argv: seen.append(("flows", argv)) or 0)
    monkeypatch.setattr(kernel_width, "main", lambda argv: seen.append(("kernel-width", argv)) or 0)
    assert main(["study", "flows", "--preset", "two_moons", "--quick", "--out", "x"]) == 0
    assert main(["study", "kernel-width", "--preset=digits", "--out", "y"]) == 0
    assert seen == [("flows", ["--toys", "two_moons", "--quick", "--out", "x"]),
                    ("kernel-width", ["--data=digits", "--out", "y"])]
    assert main(["study", "optimal-width", "--preset", "digits", "--out", "z"]) == 2
