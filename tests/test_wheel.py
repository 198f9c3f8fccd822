"""The wheel: built from the source, installed into a fresh virtual environment, used from a folder
outside the checkout (presets, train, sample, evaluate, a quick study, the Python API).

The fresh environment gets the wheel alone (no dependencies); a .pth file lets it see this venv's
site-packages for torch and the other dependencies, which `make` pinned (torch==2.13.0 first).
That path line is not a site directory, so the checkout's editable install there stays out of it.
With DMMD_WHEEL_FULL=1 the environment installs torch==2.13.0 and then the wheel with its
dependencies instead (about 3 minutes and 1.3 GB on the 2-core machine: not in the default suite).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FULL = os.environ.get("DMMD_WHEEL_FULL") == "1"


def _run(argv, cwd, env, timeout=600):
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the source (pyproject.toml, README.md, src/): nothing is written into the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          str(source)], tmp_path, os.environ)
    (wheel,) = dist.glob("dmmd-*.whl")
    return wheel


def _fresh_env(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "fresh"
    if FULL:
        _run([sys.executable, "-m", "venv", str(venv)], tmp_path, os.environ)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        _run([*pip, "torch==2.13.0"], tmp_path, os.environ, timeout=1800)  # pinned first: no CUDA build
        _run([*pip, str(wheel)], tmp_path, os.environ, timeout=1800)
        return venv
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, os.environ)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], tmp_path, os.environ)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                     os.environ).strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow
def test_wheel_runs_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    venv = _fresh_env(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"  # no configs/, no src/: only what the wheel installed
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    dmmd = str(venv / "bin" / "dmmd")
    python = str(venv / "bin" / "python")

    assert _run([dmmd, "--version"], elsewhere, env).strip() == "dmmd 0.1.0"
    listing = _run([dmmd, "presets"], elsewhere, env)
    assert {line.split()[0] for line in listing.splitlines()} >= {"digits", "eight_gaussians", "mnist"}

    small = ["--set", "train.steps=10", "--set", "train.checkpoint_every=5", "--set", "sample.replay_particles=50",
             "--set", "model.width=32"]
    _run([dmmd, "train", "--preset", "digits", *small, "--out", "run"], elsewhere, env)
    _run([dmmd, "sample", "--checkpoint", "run", "--num-samples", "30", "--out", "samples", "--png-dir", "png"],
         elsewhere, env)
    assert len(list((elsewhere / "png").glob("*.png"))) == 30
    report = json.loads(_run([dmmd, "evaluate", "--samples", "samples/samples.npz", "--checkpoint", "run",
                              "--metrics", "fd,mmd", "--json"], elsewhere, env))
    assert report["num_samples"] == 30 and report["fd"] > 0
    _run([dmmd, "study", "flows", "--quick", "--out", "study"], elsewhere, env)
    assert (elsewhere / "study" / "flows.md").is_file()
    # one interpreter for the Python API: which dmmd it imports, and a Pipeline from the run
    where, shape = _run([python, "-c", "import dmmd; print(dmmd.__file__); p = dmmd.Pipeline.from_run('run'); "
                                       "print(tuple(p.sample(4).shape))"], elsewhere, env).strip().splitlines()
    assert Path(where).is_relative_to(venv), where  # the installed wheel, not the checkout
    assert shape.strip() == "(4, 1, 8, 8)"
