"""The fault corpus of the Python API (issue 29): dmmd.train / Trainer, Pipeline.sample, evaluate,
save_picture, save_images and inpainting, given wrong types, hostile paths and sizes that cannot
fit, end in one exception naming the argument (or a RuntimeWarning with a count) and change no
file; and the API takes the run-folder locks of the command line, whichever of the two comes first.

benchmarks/faults_stress.py repeats the races with real processes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from test_faults import _snapshot

import dmmd
from dmmd import config
from dmmd.apps import inpaint
from dmmd.apps import pipeline as api
from dmmd.cli import main
from dmmd.config import ConfigError
from dmmd.methods import resources
from dmmd.methods.build import build_model
from dmmd.runtime import runfolder
from dmmd.runtime.checkpoint import CheckpointError
from dmmd.runtime.memory import ResourceError
from dmmd.runtime.runfolder import RunFolderError

TINY = {"data.name": "eight_gaussians", "data.num_points": 500, "model.width": 16, "model.feature_dim": 8,
        "model.time_dim": 8, "model.depth": 1, "train.batch_size": 16, "sample.num_levels": 3,
        "sample.steps_per_level": 2, "sample.replay_particles": 50, "train.threads": 1, "train.steps": 4,
        "train.checkpoint_every": 2, "train.log_every": 1}
HOLDER = f"pid {os.getpid()}"


def _steps(run) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [int(re.search(r'"step": (\d+)', line).group(1)) for line in lines]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A trained toy run (4 steps), a digits Pipeline with untrained weights (image outputs), a
    checkpoint whose weights are NaN, and inpainting inputs."""
    root = tmp_path_factory.mktemp("faults_api")
    run = root / "run"
    pipe = dmmd.train(None, run, overrides=TINY, progress=False, device="cpu")
    cfg = config.load("configs/digits.toml", ["model.width=8", "model.depth=1", "model.feature_dim=4",
                                              "model.time_dim=4"])
    digits = dmmd.Pipeline(cfg, build_model(cfg, (1, 8, 8)), {}, (1, 8, 8), torch.device("cpu"))
    payload = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    payload["ema"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in payload["ema"].items()}
    torch.save(payload, root / "nan_weights.pt")
    np.savez(root / "points.npz", x=np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32))
    np.save(root / "mask.npy", np.array([True, False]))
    np.savez(root / "user_data.npz", x=np.zeros((3, 2)))
    (root / "a_file").write_text("not a folder\n")
    (root / "user_folder").mkdir()
    for name in ("log.txt", "metrics.jsonl"):
        (root / "user_folder" / name).write_text("the user's own\n")
    return {"root": root, "run": run, "pipe": pipe, "digits": digits}


@dataclass
class Case:
    name: str
    call: Callable  # call(env, tmp_path)
    error: type
    match: str

    @property
    def id(self):
        return self.name


def _big_step(cfg):
    config.set_value(cfg, "sample.step_size", "1e30")
    return cfg


def _inpaint(e, t, **kw):
    args = {"checkpoint": e["run"], "images": e["root"] / "points.npz", "mask_spec": e["root"] / "mask.npy",
            "out": t / "completed", "progress": False, **kw}
    return inpaint.run(**args)


def _held(folder, lock_name, call):
    with runfolder.hold(folder, "dmmd sample", lock_name=lock_name):
        return call()


def _cases() -> list[Case]:
    train = lambda *a, **k: dmmd.train(*a, **{"progress": False, **k})  # noqa: E731
    sample = lambda **k: (lambda e, t: e["pipe"].sample(**{"n": 4, **k}))  # noqa: E731
    x = lambda n=20: torch.randn(n, 2, generator=torch.Generator().manual_seed(0))  # noqa: E731
    nan_rows = lambda: torch.cat([x(47), torch.full((3, 2), float("nan"))])  # noqa: E731
    cases = [
        # dmmd.train / Trainer: argument types
        Case("train config=42", lambda e, t: train(42, t / "r"), ConfigError, r"^config must be a dmmd.config.Config"),
        Case("train config=[1]", lambda e, t: train([1], t / "r"), ConfigError, r"^config must be"),
        Case("train out=42", lambda e, t: train(None, 42), ConfigError, r"^out must be a path"),
        Case("train out=''", lambda e, t: train(None, ""), ConfigError, r"^out must name"),
        Case("train overrides=5", lambda e, t: train(None, t / "r", overrides=5), ConfigError, r"^overrides must be"),
        Case("train overrides as one string", lambda e, t: train(None, t / "r", overrides="train.steps=3"),
             ConfigError, r"^overrides: .*the string"),
        Case("train overrides=[1]", lambda e, t: train(None, t / "r", overrides=[1]), ConfigError, r"every item"),
        Case("train overrides={1: 2}", lambda e, t: train(None, t / "r", overrides={1: 2}), ConfigError,
             r"keys must be strings"),
        Case("train resume='yes'", lambda e, t: train(None, t / "r", resume="yes"), ConfigError,
             r"^resume must be True or False"),
        Case("train device=5", lambda e, t: train(None, t / "r", device=5), ConfigError, r"^device must be a string"),
        Case("train progress='no'", lambda e, t: dmmd.train(None, t / "r", progress="no"), ConfigError,
             r"^progress must be True or False"),
        # dmmd.train: the run-folder rules of `dmmd train`
        Case("train out onto a checkpoint", lambda e, t: train(None, e["run"] / "checkpoints" / "final.pt"),
             ConfigError, r"is a file"),
        Case("train into a user's non-run folder", lambda e, t: train(None, e["root"] / "user_folder",
                                                                     overrides=TINY), ConfigError, r"not empty"),
        Case("resume a user's non-run folder", lambda e, t: train(None, e["root"] / "user_folder", resume=True),
             ConfigError, r"no config.json"),
        Case("train into an existing run", lambda e, t: train(None, e["run"], overrides=TINY), ConfigError,
             r"not empty.*resume=True"),
        Case("resume changing model.width", lambda e, t: train(None, e["run"], {"model.width": 8}, resume=True),
             ConfigError, r"cannot change model.width"),
        Case("train out under a file", lambda e, t: train(None, e["root"] / "a_file" / "r", overrides=TINY),
             RunFolderError, r"is a file, not a folder"),
        Case("train data.num_points 10^11", lambda e, t: train(None, t / "r", {**TINY, "data.num_points": 10**11}),
             ResourceError, r"data.num_points"),
        Case("train model.width 10^7", lambda e, t: train(None, t / "r", {**TINY, "model.width": 10**7}),
             ResourceError, r"parameters"),
        # Pipeline.sample
        Case("sample n=2.5", sample(n=2.5), ConfigError, r"^n must be an integer, got 2.5"),
        Case("sample n='10'", sample(n="10"), ConfigError, r"^n must be an integer, got '10'"),
        Case("sample n=True", sample(n=True), ConfigError, r"^n must be an integer"),
        Case("sample n=0", sample(n=0), ConfigError, r"n must be >= 1"),
        Case("sample n=10^10", sample(n=10**10), ResourceError, r"^n 10000000000 .*memory"),
        Case("sample seed=1.5", sample(seed=1.5), ConfigError, r"^seed must be an integer"),
        Case("sample seed=-1", sample(seed=-1), ConfigError, r"seed must be >= 0"),
        Case("sample seed=2^32", sample(seed=2**32), ConfigError, r"seed"),
        Case("sample nfe=2.5", sample(nfe=2.5), ConfigError, r"^nfe must be an integer"),
        Case("sample nfe=0", sample(nfe=0), ConfigError, r"^nfe must be >= 1"),
        Case("sample nfe=True", sample(nfe=True), ConfigError, r"^nfe must be an integer"),
        Case("sample batch_size=2.0", sample(batch_size=2.0), ConfigError, r"^batch_size must be an integer"),
        Case("sample batch_size=0", sample(batch_size=0), ConfigError, r"batch_size >= 1"),
        Case("sample sampler=5", sample(sampler=5), ConfigError, r"^sampler must be a string"),
        Case("sample sampler='heun'", sample(sampler="heun"), ConfigError, r"sample.sampler"),
        Case("sample progress='yes'", sample(progress="yes"), ConfigError, r"^progress must be True or False"),
        Case("sample class_=1.5", sample(class_=1.5), ConfigError, r"^class_ must be"),
        Case("sample class_ of an unconditional model", sample(class_=0), ConfigError, r"class_ needs a conditional"),
        Case("sample guidance='x'", sample(guidance="x"), ConfigError, r"^guidance must be a number"),
        Case("sample step_size='a'", sample(step_size="a"), ConfigError, r"sample.step_size"),
        Case("sample unknown setting", sample(steps=3), ConfigError, r"unknown sample settings"),
        Case("sample step_size=1e30", sample(n=20, step_size=1e30), RuntimeWarning, r"^20 of 20 samples hold NaN"),
        Case("load NaN weights", lambda e, t: dmmd.Pipeline.from_run(e["root"] / "nan_weights.pt", "cpu"),
             CheckpointError, r"holds NaN or inf in"),
        Case("from_run path=5", lambda e, t: dmmd.Pipeline.from_run(5), ConfigError, r"^path must be a path"),
        Case("from_run device=5", lambda e, t: dmmd.Pipeline.from_run(e["run"], 5), ConfigError,
             r"^device must be a string"),
        # Pipeline.evaluate
        Case("evaluate NaN samples", lambda e, t: e["pipe"].evaluate(nan_rows()), ConfigError,
             r"^samples: 3 of 50 hold NaN or Inf"),
        Case("evaluate a string", lambda e, t: e["pipe"].evaluate("abc"), ConfigError,
             r"^samples must be a tensor or array of numbers"),
        Case("evaluate 3 samples", lambda e, t: e["pipe"].evaluate(x(3)), ConfigError,
             r"precision_recall needs at least 4 samples"),
        Case("evaluate 1 sample", lambda e, t: e["pipe"].evaluate(x(1), ["fd"]), ConfigError, r"at least 2 samples"),
        Case("evaluate metrics=5", lambda e, t: e["pipe"].evaluate(x(), 5), ConfigError, r"^metrics must be"),
        Case("evaluate metrics=['fid']", lambda e, t: e["pipe"].evaluate(x(), ["fid"]), ConfigError,
             r"unknown metrics"),
        Case("evaluate the wrong shape", lambda e, t: e["pipe"].evaluate(torch.zeros(4, 3)), ConfigError, r"shape"),
        # Pipeline.save_picture: never onto a file that must survive, nothing inside checkpoints/
        Case("save_picture onto a checkpoint", lambda e, t: e["pipe"].save_picture(
            x(), e["run"] / "checkpoints" / "final.pt"), RunFolderError, r"checkpoints/ folder"),
        Case("save_picture into a new folder in checkpoints/", lambda e, t: e["pipe"].save_picture(
            x(), e["run"] / "checkpoints" / "new" / "x.png"), RunFolderError, r"checkpoints/ folder"),
        Case("save_picture onto config.json", lambda e, t: e["pipe"].save_picture(x(), e["run"] / "config.json"),
             RunFolderError, r"does not overwrite"),
        Case("save_picture onto the user's data", lambda e, t: e["pipe"].save_picture(
            x(), e["root"] / "user_data.npz"), RunFolderError, r"does not overwrite"),
        Case("save_picture onto the run's own checkpoint file input", lambda e, t: dmmd.Pipeline.from_run(
            e["run"] / "checkpoints" / "final.pt", "cpu").save_picture(x(), e["run"] / "checkpoints" / "final.pt"),
             RunFolderError,
             r"also an input|does not overwrite"),
        Case("save_picture onto a folder", lambda e, t: e["pipe"].save_picture(x(), e["root"] / "user_folder"),
             RunFolderError, r"existing folder"),
        Case("save_picture under a file", lambda e, t: e["pipe"].save_picture(x(), e["root"] / "a_file" / "p.png"),
             RunFolderError, r"the folder .*a_file is an existing file, not a folder"),
        Case("save_picture path=None", lambda e, t: e["pipe"].save_picture(x(), None), ConfigError,
             r"^path must be a path"),
        Case("save_picture title=5", lambda e, t: e["pipe"].save_picture(x(), t / "p.png", title=5), ConfigError,
             r"^title must be a string"),
        Case("save_picture while its lock is held", lambda e, t: _held(t, ".p.png.lock", lambda: e["pipe"].save_picture(
            x(), t / "p.png")), RunFolderError, rf"in use by {HOLDER} \(dmmd sample\)"),
        # Pipeline.save_images
        Case("save_images of points", lambda e, t: e["pipe"].save_images(x(), t / "png"), ConfigError, r"image data"),
        Case("save_images into checkpoints/", lambda e, t: e["digits"].save_images(
            torch.zeros(2, 1, 8, 8), e["run"] / "checkpoints" / "png"), RunFolderError, r"checkpoints/ folder"),
        Case("save_images onto a file", lambda e, t: e["digits"].save_images(torch.zeros(2, 1, 8, 8),
                                                                            e["root"] / "a_file"),
             RunFolderError, r"existing file, not a folder"),
        Case("save_images folder=3", lambda e, t: e["digits"].save_images(torch.zeros(2, 1, 8, 8), 3), ConfigError,
             r"^folder must be a path"),
        Case("save_images while `sample --out` holds the folder", lambda e, t: _held(t, ".png.lock", lambda: e[
            "digits"].save_images(torch.zeros(2, 1, 8, 8), t / "png")), RunFolderError, rf"in use by {HOLDER}"),
        # inpainting through the API
        Case("inpaint seed=1.5", lambda e, t: _inpaint(e, t, seed=1.5), ConfigError, r"^seed must be an integer"),
        Case("inpaint batch_size='8'", lambda e, t: _inpaint(e, t, batch_size="8"), ConfigError,
             r"^batch_size must be an integer"),
        Case("inpaint out=None", lambda e, t: _inpaint(e, t, out=None), ConfigError, r"^out must be a path"),
        Case("inpaint repeats=1.5", lambda e, t: _inpaint(e, t, repeats=1.5), ConfigError,
             r"^repeats must be an integer"),
        Case("inpaint with step 1e30", lambda e, t: _inpaint(e, t, configure=_big_step), RuntimeWarning,
             r"^6 of 6 completions hold NaN"),
        Case("inpaint with NaN weights", lambda e, t: _inpaint(e, t, checkpoint=e["root"] / "nan_weights.pt"),
             CheckpointError, r"holds NaN or inf in"),
    ]
    if hasattr(resources, "MAX_NFE"):  # the NFE bound of `dmmd sample --nfe`
        cases.append(Case("sample nfe=10^9", sample(nfe=10**9), ResourceError, r"network evaluations"))
    return cases


CASES = _cases()


def test_corpus_is_large():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api_fault(case, env, tmp_path, monkeypatch):
    monkeypatch.setenv("DMMD_MEMORY_GB", "8")  # the memory guards compare with this, not the machine's
    before = _snapshot(env["root"], tmp_path)
    if issubclass(case.error, Warning):  # a result, loudly flagged; it may write its own new output
        with pytest.warns(case.error, match=case.match):
            case.call(env, tmp_path)
        after = _snapshot(env["root"], tmp_path)
        assert {k: v for k, v in after.items() if k in before} == before, "an existing file changed"
    else:
        with pytest.raises(case.error, match=case.match) as raised:
            case.call(env, tmp_path)
        assert "\n" not in str(raised.value)  # one line
        assert _snapshot(env["root"], tmp_path) == before, "a refused call changed files"


# ------------------------------------------------------------------------------------- locks
def test_api_is_refused_while_the_cli_holds_the_run(env, tmp_path):
    """The lock `dmmd train` takes (here held by this process, as the command does): dmmd.train,
    resume or not, is refused with the holder named, and nothing in the folder changes."""
    run = env["run"]
    before = _snapshot(run)
    with runfolder.hold(run, "dmmd train --resume"):
        with pytest.raises(RunFolderError, match=rf"in use by {HOLDER} \(dmmd train --resume\)"):
            dmmd.train(None, run, overrides={"train.steps": 6}, resume=True, progress=False)
        fresh = tmp_path / "fresh"
        with runfolder.hold(fresh, "dmmd train"):  # a new folder a CLI train has just locked
            with pytest.raises(RunFolderError, match=rf"in use by {HOLDER} \(dmmd train\)"):
                dmmd.train(None, fresh, overrides=TINY, progress=False)
            assert sorted(p.name for p in fresh.iterdir()) == [".lock"]
    assert _snapshot(run) == before and not fresh.exists()


def test_second_writers_are_refused_while_the_api_trains(env, tmp_path, monkeypatch, capsys):
    """While dmmd.train holds a run: another dmmd.train (resume or a new start), `dmmd train
    --resume` and `dmmd calibrate` are refused naming the API holder (a new start into the run,
    once it has files, as not empty); the steps never go back."""
    out, real, seen = tmp_path / "run", api.loop.train, {}

    def second_writers(cli: bool):
        snapshot = _snapshot(out)
        with pytest.raises(RunFolderError) as raised:
            dmmd.train(None, out, resume=True, progress=False)
        seen[f"api resume, cli={cli}"] = str(raised.value)
        if cli:  # a run is there: a new start is refused before the lock is tried, as `dmmd train --out` does
            with pytest.raises(ConfigError, match="not empty: pass resume=True"):
                dmmd.train(None, out, overrides=TINY, progress=False)
        else:
            with pytest.raises(RunFolderError) as raised:
                dmmd.train(None, out, overrides=TINY, progress=False)
            seen["api train"] = str(raised.value)
        for command in (["train", "--resume", str(out)], ["calibrate", "--checkpoint", str(out)]) if cli else ():
            assert main([*command, "--no-progress"]) == 2
            seen[command[0]] = capsys.readouterr().err
        assert _snapshot(out) == snapshot

    def racing(*args, **kwargs):
        second_writers(cli=False)  # the folder holds only the lock: the command line would not see a run yet
        state = real(*args, **kwargs)
        second_writers(cli=True)  # config.json and checkpoints exist now, and the lock is still held
        return state

    monkeypatch.setattr(api.loop, "train", racing)
    dmmd.train(None, out, overrides=TINY, progress=False)
    for name, message in seen.items():
        assert re.search(rf"in use by {HOLDER} \(dmmd.train (resume=True )?\(Python API\)\)", message), (name, message)
    monkeypatch.setattr(api.loop, "train", real)
    dmmd.train(None, out, overrides={"train.steps": 6}, resume=True, progress=False)  # free again: resumes
    assert _steps(out) == sorted(_steps(out)) and max(_steps(out)) == 6
    assert (out / "log.txt").read_text().count("training dmmd on") == 1
    assert not (out / ".lock").exists()


def test_save_picture_makes_missing_folders_and_releases_its_lock(env, tmp_path):
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    path = env["pipe"].save_picture(x, tmp_path / "a" / "b" / "p.png")
    assert path.stat().st_size > 1000 and sorted(p.name for p in path.parent.iterdir()) == ["p.png"]
    paths = env["digits"].save_images(torch.zeros(3, 1, 8, 8), tmp_path / "new" / "png")
    assert [p.name for p in paths] == ["000000.png", "000001.png", "000002.png"]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["png"]
