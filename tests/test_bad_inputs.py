"""A corpus of bad inputs: each ends with exit code 2, a one-line error naming the problem,
and no new or changed file."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from test_cli import TINY

from dmmd.cli import main


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Files the bad invocations point at, made once."""
    root = tmp_path_factory.mktemp("corpus")
    run = root / "run"
    assert main(["train", *TINY, "--out", str(run), "--no-progress"]) == 0
    rbf = root / "rbf"
    assert main(["train", *TINY, "--set", "model.kernel=rbf", "--set", "sample.sampler=exact",
                 "--out", str(rbf), "--no-progress"]) == 0
    final = run / "checkpoints" / "final.pt"
    (root / "truncated.pt").write_bytes(final.read_bytes()[:2000])
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pt")
    payload = torch.load(final, weights_only=True)
    payload["version"] = 99
    torch.save(payload, root / "future.pt")
    payload = torch.load(final, weights_only=True)
    name = next(k for k, v in payload["ema"].items() if v.is_floating_point())
    payload["ema"][name] = torch.full_like(payload["ema"][name], float("nan"))
    torch.save(payload, root / "nan_weights.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'pwned'}",))

    (root / "evil.pt").write_bytes(pickle.dumps({"format": "dmmd-checkpoint", "x": Evil()}))
    (root / "empty_dir").mkdir()
    (root / "bad.toml").write_text("[train\nsteps = 1\n")
    (root / "unknown.toml").write_text("[train]\nstepz = 1\n")
    (root / "wrongtype.json").write_text('{"train": {"steps": "many"}}')
    mnist = root / "mnist"
    mnist.mkdir()
    header = struct.pack(">IIII", 0x803, 10, 28, 28)
    (mnist / "train-images-idx3-ubyte").write_bytes(header + bytes(100))  # truncated
    (mnist / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(10 * 784)))
    cifar = root / "cifar"
    cifar.mkdir()
    (cifar / "data_batch_1").write_bytes(pickle.dumps(Evil()))
    import numpy as np

    np.save(root / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0], [2.0, 0.0], [3.0, 1.0]]))
    np.save(root / "rank3.npy", np.zeros((5, 2, 2)))
    np.save(root / "empty.npy", np.zeros((0, 2)))
    np.save(root / "objects.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    np.savez(root / "good.npz", x=np.random.default_rng(0).normal(size=(40, 2)))
    (root / "truncated.npz").write_bytes((root / "good.npz").read_bytes()[:300])
    np.savez(root / "no_samples.npz", x=np.zeros((10, 2)))
    np.savez(root / "wrong_shape.npz", samples=np.zeros((10, 3)))
    np.savez(root / "nan_samples.npz", samples=np.full((10, 2), np.nan))
    return root


CASES = {
    "unknown key": (["train", "--set", "train.stepz=3"], "unknown config key 'train.stepz'"),
    "wrong type": (["train", "--set", "train.steps=abc"], "train.steps must be of type int"),
    "float for int": (["train", "--set", "train.batch_size=2.5"], "train.batch_size must be of type int"),
    "negative step size": (["train", "--set", "sample.step_size=-1"], "sample.step_size must be > 0"),
    "T < 1": (["train", "--set", "sample.num_levels=0"], "sample.num_levels must be > 0"),
    "t_min >= t_max": (["train", "--set", "process.t_min=0.9", "--set", "process.t_max=0.5"], "t_min < process.t_max"),
    "negative penalty": (["train", "--set", "train.lambda_gp=-1"], "train.lambda_gp must be >= 0"),
    "ema out of range": (["train", "--set", "train.ema_decay=1.5"], "train.ema_decay must be in"),
    "batch of one": (["train", "--set", "train.batch_size=1"], "batch_size must be >= 2"),
    "bad list": (["train", "--set", "model.channel_mults=a,b"], "model.channel_mults must be of type list"),
    "no equals": (["train", "--set", "train.steps"], "--set expects key=value"),
    "unknown choice": (["train", "--set", "model.kernel=laplace"], "model.kernel must be one of"),
    "approx with rbf in config": (["train", "--set", "model.kernel=rbf"], "needs model.kernel = 'linear'"),
    "bad toml": (["train", "--config", "{root}/bad.toml"], "is not valid TOML"),
    "unknown key in file": (["train", "--config", "{root}/unknown.toml"], "unknown config key 'train.stepz'"),
    "wrong type in json": (["train", "--config", "{root}/wrongtype.json"], "train.steps must be of type int"),
    "missing config": (["train", "--config", "{root}/nope.toml"], "cannot read config file"),
    "mnist without root": (["train", "--set", "data.name=mnist"], "set data.root"),
    "missing data folder": (["train", "--set", "data.name=mnist", "--set", "data.root={root}/nowhere"], "nowhere"),
    "truncated idx": (["train", "--set", "data.name=mnist", "--set", "data.root={root}/mnist"], "train-images-idx3-ubyte"),
    "code-running cifar batch": (["train", "--set", "data.name=cifar10", "--set", "data.root={root}/cifar"], "data_batch_1"),
    "existing run": (["train", *TINY, "--out", "{root}/run"], "already holds a run"),
    "resume non-run": (["train", "--resume", "{root}/empty_dir"], "not a run folder"),
    "missing checkpoint": (["sample", "--checkpoint", "{root}/none.pt"], "does not exist"),
    "folder without latest": (["sample", "--checkpoint", "{root}/empty_dir"], "without a 'latest' file"),
    "truncated checkpoint": (["sample", "--checkpoint", "{root}/truncated.pt"], "truncated.pt is not a readable checkpoint"),
    "foreign checkpoint": (["sample", "--checkpoint", "{root}/foreign.pt"], "is not a dmmd checkpoint"),
    "future version": (["sample", "--checkpoint", "{root}/future.pt"], "format version 99"),
    "NaN weights": (["sample", "--checkpoint", "{root}/nan_weights.pt"], "holds NaN or inf in"),
    "code-running checkpoint": (["sample", "--checkpoint", "{root}/evil.pt"], "refused by the safe loader"),
    "approx on rbf": (["sample", "--checkpoint", "{root}/rbf", "--sampler", "approx"], "approx.*linear"),
    "kale on mmd": (["sample", "--checkpoint", "{root}/run", "--sampler", "kale"], "trained with model.objective = 'kale'"),
    "zero samples": (["sample", "--checkpoint", "{root}/run", "--num-samples", "0"], "--num-samples"),
    "one exact particle": (["sample", "--checkpoint", "{root}/run", "--sampler", "exact", "--num-samples", "1"], "population"),
    "train key at sampling": (["sample", "--checkpoint", "{root}/run", "--set", "train.steps=3"], "only sample.\\* keys"),
    "NaN in data": (["train", "--set", "data.name=file", "--set", "data.root={root}/nan.npy"], "NaN or Inf"),
    "wrong rank data": (["train", "--set", "data.name=file", "--set", "data.root={root}/rank3.npy"], r"expected shape \(N, D\)"),
    "empty data": (["train", "--set", "data.name=file", "--set", "data.root={root}/empty.npy"], "is empty"),
    "pickled data": (["train", "--set", "data.name=file", "--set", "data.root={root}/objects.npy"], "not a readable"),
    "truncated data": (["train", "--set", "data.name=file", "--set", "data.root={root}/truncated.npz"], "truncated.npz"),
    "samples without array": (["evaluate", "--samples", "{root}/no_samples.npz", "--checkpoint", "{root}/run"],
                              "expected an array named 'samples'"),
    "samples of wrong shape": (["evaluate", "--samples", "{root}/wrong_shape.npz", "--checkpoint", "{root}/run"],
                               r"shape \(3,\) per item"),
    "NaN samples": (["evaluate", "--samples", "{root}/nan_samples.npz", "--checkpoint", "{root}/run"], "NaN or Inf"),
    "missing samples": (["evaluate", "--samples", "{root}/none.npz", "--checkpoint", "{root}/run"], "does not exist"),
    "unknown metric": (["evaluate", "--samples", "{root}/good.npz", "--checkpoint", "{root}/run", "--metrics", "fid"],
                       "unknown metrics"),
    "sampler of another method": (["sample", "--checkpoint", "{root}/run", "--sampler", "euler"], "samples with"),
    "nfe below one": (["sample", "--checkpoint", "{root}/run", "--nfe", "0"], "--nfe must be >= 1"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, corpus, tmp_path, monkeypatch, capsys):
    argv, expected = CASES[name]
    argv = [a.replace("{root}", str(corpus)) for a in argv]
    monkeypatch.chdir(tmp_path)
    before = _snapshot(corpus), _snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    import re

    assert re.search(expected, err), (expected, err)
    assert (_snapshot(corpus), _snapshot(tmp_path)) == before
    assert not (corpus / "pwned").exists()


def test_corpus_is_large_enough():
    assert len(CASES) >= 30
