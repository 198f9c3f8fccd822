"""A fault corpus: hostile checkpoints, run folders, data files, config files, output paths, sizes,
signals and concurrent writers against the command line (issue 15).

Every user mistake ends with exit code 2, exactly one `error:` line on stderr, no traceback, and
no new, changed or half-written file (a snapshot of every file and folder before and after).
Commands run in this process through dmmd.cli.main; signals are sent to this process from inside
a training step (os.kill), and two tests start real second processes. The same checks repeated
10 times and at 10 signal moments: benchmarks/faults_stress.py.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from dmmd.cli import main
from dmmd.runtime import runfolder

TINY = ["--set", "data.name=eight_gaussians", "--set", "data.num_points=500", "--set", "model.width=16",
        "--set", "model.feature_dim=8", "--set", "model.time_dim=8", "--set", "model.depth=1",
        "--set", "train.batch_size=16", "--set", "sample.num_levels=3", "--set", "sample.steps_per_level=2",
        "--set", "sample.replay_particles=50", "--set", "train.threads=1"]
RUN_ARGS = [*TINY, "--set", "train.steps=12", "--set", "train.checkpoint_every=5"]
SIG_STEPS = 40
SIG_ARGS = [*TINY, "--set", f"train.steps={SIG_STEPS}", "--set", "train.checkpoint_every=15",
            "--set", "train.log_every=1", "--set", "train.keep_checkpoints=1"]


def _snapshot(*roots: Path) -> dict:
    """Every file (size, mtime) and folder under the roots."""
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.is_symlink():
                out[p] = ("link", os.readlink(p))
            elif p.is_file():
                st = p.stat()
                out[p] = (st.st_size, st.st_mtime_ns)
            elif p.is_dir():
                out[p] = "dir"
    return out


def _leftovers(*roots: Path) -> list[Path]:
    """Temporary files and folders, and lock files (not the corpus's planted linked or FIFO locks)."""
    return [p for root in roots for p in root.rglob("*")
            if p.name.endswith(".tmp") or (p.name.endswith(".lock") and p.is_file() and not p.is_symlink())]


def _weights(path: Path) -> dict:
    p = torch.load(path, weights_only=True)
    return {**{f"model.{k}": v for k, v in p["model"].items()}, **{f"ema.{k}": v for k, v in p["ema"].items()},
            **{f"opt.{i}.{k}": v for i, s in p["optimizer"]["state"].items() for k, v in s.items()}}


def _assert_one_error(rc: int, err: str, expect: str = "") -> str:
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    assert len(errors) == 1 and all(line.startswith(("error: ", "note: ")) for line in lines), err
    assert re.search(expect, errors[0]), (expect, errors[0])
    return errors[0]


# ------------------------------------------------------------------------------------ corpus
def _mutations(p: dict) -> dict:
    """name -> (function making a hostile payload from a good one, expected message)."""
    cfg = json.loads(p["config"])
    ema_key = next(k for k in p["ema"] if k.startswith("module.") and p["ema"][k].ndim == 2)

    def with_config(tree):
        return lambda q: {**q, "config": json.dumps(tree)}

    def edit(section, key, value):
        return with_config({**cfg, section: {**cfg[section], key: value}})

    return {
        "config a list": (lambda q: {**q, "config": [1, 2]}, "config must be a JSON object"),
        "config a number": (lambda q: {**q, "config": 42}, "config must be a JSON object"),
        "config JSON list": (lambda q: {**q, "config": "[1, 2]"}, "config must be a JSON object"),
        "config not JSON": (lambda q: {**q, "config": "{'train': "}, "config is not valid JSON"),
        "config deeply nested": (lambda q: {**q, "config": "[" * 100000 + "]" * 100000}, "config is not valid JSON"),
        "config huge": (lambda q: {**q, "config": " " * (2 << 20)}, "characters long"),
        "config missing": (lambda q: {k: v for k, v in q.items() if k != "config"}, "config must be a JSON object"),
        "config wrong type": (edit("train", "steps", "many"), "train.steps must be of type int"),
        "config unknown key": (edit("train", "stepz", 3), "unknown config key 'train.stepz'"),
        "config negative width": (edit("model", "width", -3), "model.width must be > 0"),
        "config nested deeper": (edit("train", "inner", {"a": 1}), "nests deeper"),
        "config NaN rate": (edit("train", "lr", float("nan")), "train.lr must be"),
        "config seed -1": (with_config({**cfg, "seed": -1}), "seed must be >= 0"),
        "config huge int": (edit("train", "steps", 2**70), "below 2\\*\\*63"),
        "config section a list": (with_config({**cfg, "train": [1]}), "unknown config key|must be"),
        "step a string": (lambda q: {**q, "step": "ten"}, "step must be a non-negative integer"),
        "step negative": (lambda q: {**q, "step": -1}, "step must be a non-negative integer"),
        "step a float": (lambda q: {**q, "step": 1.5}, "step must be a non-negative integer"),
        "step a bool": (lambda q: {**q, "step": True}, "step must be a non-negative integer"),
        "step huge": (lambda q: {**q, "step": 2**70}, "step must be a non-negative integer"),
        "step missing": (lambda q: {k: v for k, v in q.items() if k != "step"}, "step must be"),
        "data_shape 10^9": (lambda q: {**q, "data_shape": [10**9]}, "values per item"),
        "data_shape a string": (lambda q: {**q, "data_shape": "abc"}, "data_shape must be"),
        "data_shape empty": (lambda q: {**q, "data_shape": []}, "data_shape must be"),
        "data_shape zero": (lambda q: {**q, "data_shape": [0]}, "data_shape must be"),
        "data_shape negative": (lambda q: {**q, "data_shape": [-2]}, "data_shape must be"),
        "data_shape float": (lambda q: {**q, "data_shape": [2.5]}, "data_shape must be"),
        "data_shape rank 4": (lambda q: {**q, "data_shape": [1, 1, 1, 1]}, "data_shape must be"),
        "data_shape other": (lambda q: {**q, "data_shape": [3]}, "shape"),
        "data_shape large": (lambda q: {**q, "data_shape": [3, 4096, 4096]}, "shape"),
        "stats a list": (lambda q: {**q, "stats": [1]}, "field 'stats' must be a dict"),
        "stats grid a number": (lambda q: {**q, "stats": {**q["stats"], "grid": 5}}, "stats 'grid' must be"),
        "stats mean a string": (lambda q: {**q, "stats": {**q["stats"], "data_mean": "abc"}}, "2-D float tensor"),
        "stats mean levels": (lambda q: {**q, "stats": {**q["stats"], "data_mean": torch.zeros(5, 8)}}, "has shape"),
        "stats mean features": (lambda q: {**q, "stats": {**q["stats"], "data_mean": torch.zeros(3, 7)}}, "shape"),
        "stats mean NaN": (lambda q: {**q, "stats": {**q["stats"], "noised_mean": torch.full((3, 8), float("nan"))}},
                           "NaN"),
        "stats replay a list": (lambda q: {**q, "stats": {**q["stats"], "replay": [1]}}, "'replay' must be a dict"),
        "stats replay 1-D": (lambda q: {**q, "stats": {**q["stats"], "replay": {"x": torch.zeros(4)}}}, "2-D"),
        "stats replay alone": (lambda q: {**q, "stats": {"replay": {}}}, "without the level means"),
        "model a list": (lambda q: {**q, "model": [1]}, "field 'model' must be"),
        "model empty": (lambda q: {**q, "model": {}}, "field 'model' must be"),
        "ema a string value": (lambda q: {**q, "ema": {**q["ema"], ema_key: "weights"}}, "field 'ema' must map"),
        "ema wrong shape": (lambda q: {**q, "ema": {**q["ema"], ema_key: torch.zeros(3, 3)}}, "shape|match"),
        "ema missing weight": (lambda q: {**q, "ema": {k: v for k, v in q["ema"].items() if k != ema_key}},
                               "missing|match"),
        "optimizer a string": (lambda q: {**q, "optimizer": "adam"}, "field 'optimizer' must be"),
        "optimizer lists": (lambda q: {**q, "optimizer": {"state": [], "param_groups": []}}, "field 'optimizer'"),
        "rng empty": (lambda q: {**q, "rng": {}}, "field 'rng'"),
        "rng floats": (lambda q: {**q, "rng": {"train": torch.zeros(3)}}, "field 'rng'"),
        "best a list": (lambda q: {**q, "best": [1]}, "field 'best'"),
        "best step a string": (lambda q: {**q, "best": {"step": "x", "val_loss": 1.0}}, "field 'best'"),
        "format a tensor": (lambda q: {**q, "format": torch.tensor([1, 2])}, "not a dmmd checkpoint"),
        "version a tensor": (lambda q: {**q, "version": torch.tensor([1, 1])}, "format version"),
        "version a string": (lambda q: {**q, "version": "1"}, "format version"),
        "payload a list": (lambda q: [q["step"]], "not a dmmd checkpoint"),
        "config channel_mults empty": (edit("model", "channel_mults", []), "model.channel_mults must be"),
        "config channel_mults zero": (edit("model", "channel_mults", [0]), "model.channel_mults must be"),
        "method ddpm over dmmd weights": (with_config({**cfg, "method": "ddpm", "sample": {**cfg["sample"],
                                                                                         "sampler": "ddpm"}}),
                                          "stats|weights|match"),
    }


LATEST_JUNK = {
    "binary": (b"\x80\x81\xfe\xff" * 10, "does not name a checkpoint"),
    "empty": (b"", "does not name a checkpoint"),
    "parent escape": (b"../../../etc/passwd\n", "does not name a checkpoint"),
    "absolute": (b"/etc/passwd\n", "does not name a checkpoint"),
    "a folder": (b"checkpoints\n", "not a file"),
    "missing file": (b"checkpoints/nope.pt\n", "not a file"),
    "huge": (b"a" * 10000, "does not name a checkpoint"),
    "two lines": (b"checkpoints/final.pt\ncheckpoints/final.pt\n", "does not name a checkpoint"),
    "NUL": (b"checkpoints/final.pt\x00\n", "does not name a checkpoint"),
    "not a checkpoint": (b"config.json\n", "not a readable checkpoint|not a dmmd checkpoint|refused by the safe loader"),
}

CONFIG_FILES = {
    "binary.toml": (bytes(range(256)) * 4, "not UTF-8 text"),
    "nul.toml": (b"seed = 0\x00\n", "not UTF-8 text"),
    "utf16.toml": ("seed = 1\n".encode("utf-16"), "not UTF-8 text|not valid TOML"),
    "list.json": (b"[1, 2, 3]", "must hold sections"),
    "number.json": (b"42", "must hold sections"),
    "string.json": (b'"train"', "must hold sections"),
    "null.json": (b"null", "must hold sections"),
    "deep.json": (b"[" * 100000 + b"]" * 100000, "nests too deeply|not valid JSON"),
    "deep_object.json": (b'{"a":' * 50000 + b"1" + b"}" * 50000, "nests too deeply|not valid JSON"),
    "deep.toml": (b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000 + b"\n", "nests too deeply|not valid TOML"),
    "huge.toml": (b"# " + b"x" * (2 << 20) + b"\n", "larger than"),
    "nested.json": (b'{"train": {"steps": {"value": 3}}}', "nests deeper"),
    "nested.toml": (b"[train.extra]\nvalue = 3\n", "nests deeper"),
    "nan.json": (b'{"train": {"lr": NaN}}', "finite|train.lr must be"),
    "inf.json": (b'{"train": {"lr": Infinity}}', "finite"),
    "inf.toml": (b"[train]\nlr = inf\n", "finite"),
    "date.toml": (b"[train]\nsteps = 1979-05-27\n", "train.steps must be of type int"),
    "array_for_int.toml": (b"[train]\nsteps = [1, 2]\n", "train.steps must be of type int"),
    "big_int.toml": (b"[train]\nsteps = 1180591620717411303424\n", "below 2\\*\\*63|not valid TOML"),
    "section_scalar.toml": (b"train = 5\n", "unknown config key 'train'"),
    "bad_json.json": (b'{"train": ', "not valid JSON"),
    "bad_toml.toml": (b"[train\n", "not valid TOML"),
    "negative_seed.toml": (b"seed = -1\n", "seed must be >= 0"),
}


def _npy_with_header(path: Path, shape, descr="<f8", payload=b"\x00" * 64) -> None:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
        fh.write(payload)


def _data_files(root: Path) -> dict:
    """name -> expected message; files made under root/data."""
    d = root / "data"
    d.mkdir()
    _npy_with_header(d / "huge_header.npy", (10**10, 2))
    _npy_with_header(d / "truncated_rows.npy", (1000, 2))
    np.save(d / "complex.npy", np.ones((10, 2), dtype=np.complex64))
    np.save(d / "overflow.npy", np.full((10, 2), 1e300))
    np.save(d / "bool.npy", np.ones((10, 2), dtype=bool))
    np.save(d / "strings.npy", np.array([["a", "b"]] * 10))
    np.save(d / "structured.npy", np.zeros(10, dtype=[("a", "f4"), ("b", "f4")]))
    np.save(d / "objects.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    np.save(d / "vector.npy", np.zeros(10))
    np.save(d / "scalar.npy", np.float64(3.0))
    np.save(d / "rank5.npy", np.zeros((2, 1, 1, 1, 1)))
    np.save(d / "nan.npy", np.full((10, 2), np.nan))
    np.save(d / "inf.npy", np.full((10, 2), np.inf))
    np.save(d / "empty.npy", np.zeros((0, 2)))
    np.save(d / "three_rows.npy", np.zeros((3, 2)))
    (d / "text.npy").write_text("1,2\n3,4\n")
    (d / "empty_file.npy").write_bytes(b"")
    (d / "folder.npy").mkdir()
    os.mkfifo(d / "fifo.npy")
    import zipfile

    with zipfile.ZipFile(d / "huge_member.npz", "w") as zf:
        with zf.open("x.npy", "w") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (10**10, 2)})
            fh.write(b"\x00" * 64)
    np.savez(d / "no_x.npz", y=np.zeros((10, 2)))
    np.savez(d / "complex.npz", x=np.ones((10, 2), dtype=np.complex128))
    np.savez(d / "good.npz", x=np.random.default_rng(0).normal(size=(40, 2)))
    (d / "truncated.npz").write_bytes((d / "good.npz").read_bytes()[:300])
    with zipfile.ZipFile(d / "not_npy.npz", "w") as zf:
        zf.writestr("x.txt", "hello")
    return {
        "huge_header.npy": "header claims",
        "truncated_rows.npy": "header claims",
        "complex.npy": "complex values",
        "overflow.npy": "do not fit float32",
        "bool.npy": "expected a numeric array",
        "strings.npy": "expected a numeric array",
        "structured.npy": "expected a numeric array|not a readable",
        "objects.npy": "not a readable",
        "vector.npy": "expected shape",
        "scalar.npy": "expected shape",
        "rank5.npy": "expected shape",
        "nan.npy": "NaN or Inf",
        "inf.npy": "NaN or Inf",
        "empty.npy": "is empty",
        "three_rows.npy": "at least 4 rows",
        "text.npy": "not a readable",
        "empty_file.npy": "not a readable",
        "folder.npy": "does not exist",
        "fifo.npy": "does not exist",
        "missing.npy": "does not exist",
        "huge_member.npz": "header claims",
        "no_x.npz": "expected an array named 'x'",
        "complex.npz": "complex values",
        "truncated.npz": "not a readable|unreadable",
        "not_npy.npz": "expected an array named 'x'",
    }


# ------------------------------------------------------------ the last fault paths (issue 29)
SAFETENSORS = ("truncated", "garbage header", "zero bytes")
JUNK_CHECKPOINTS = {"a text file": b"the user's own notes\n", "three bytes": b"abc"}  # the unpickler: IndexError
OPTIMIZER_JUNK = {  # name -> (edit of a good optimizer state dict, expected message)
    "moment of a wrong shape": (lambda o: o["state"][0].update(exp_avg=torch.zeros(3, 3)), "'exp_avg' of parameter 0"),
    "moment a string": (lambda o: o["state"][0].update(exp_avg_sq="big"), "'exp_avg_sq' of parameter 0"),
    "moment NaN": (lambda o: o["state"][1].update(exp_avg=torch.full_like(o["state"][1]["exp_avg"], float("nan"))),
                   "'exp_avg' of parameter 1 must be a finite"),
    "step a string": (lambda o: o["state"][0].update(step="ten"), "'step' of parameter 0 must be a number"),
    "state of a missing parameter": (lambda o: o["state"].update({99: dict(o["state"][0])}), "parameter '99'"),
    "groups one parameter short": (lambda o: o["param_groups"][0].update(params=o["param_groups"][0]["params"][:-1]),
                                   "parameters, the model has"),
}
MOUNTS = [p for p in ("/", "/proc", "/dev/shm", "/sys") if os.path.ismount(p)]
NO_ROOM = {"DMMD_MEMORY_GB": "16"}  # the replay estimates below need far more on any machine
CONFIG_FILES.update({"channel_mults_empty.toml": (b"[model]\nchannel_mults = []\n", "model.channel_mults must be"),
                     "channel_mults_zero.json": (b'{"model": {"channel_mults": [0]}}', "model.channel_mults must be")})


def _gzip_bomb(path: Path, header: bytes, mib: int) -> None:
    """`header`, then `mib` MiB of zeros: gzipped members one after another (one compressed once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header) + gzip.compress(bytes(1 << 20)) * mib)


def _npz_bomb(path: Path, key: str, shape: tuple, dtype: str) -> None:
    """An .npz whose array `key` is deflated zeros: about 1/1000 of its size on disk."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                      "shape": shape})
            for _ in range(int(np.prod(shape)) * np.dtype(dtype).itemsize >> 20):
                fh.write(bytes(1 << 20))


def _run_copy(run: Path, folder: Path, name: str, content: bytes) -> None:
    """A run folder whose `latest` names checkpoints/NAME, holding `content`."""
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.json", folder / "config.json")
    (folder / "checkpoints" / name).write_bytes(content)
    (folder / "latest").write_text(f"checkpoints/{name}\n")


def _more_inputs(root: Path, run: Path, good: dict) -> None:
    import copy
    import io

    from safetensors.torch import save

    whole = save({"w": torch.zeros(64, 64)})
    st = dict(zip(SAFETENSORS, (whole[:50], b"\xff" * 8 + b"junk" * 10, b"")))
    (root / "st").mkdir()
    for i, name in enumerate(SAFETENSORS):
        (root / "st" / f"s{i}.safetensors").write_bytes(st[name])
        _run_copy(run, root / "st_run" / f"s{i}", "final.safetensors", st[name])
    for i, content in enumerate(JUNK_CHECKPOINTS.values()):
        (root / "st" / f"j{i}.pt").write_bytes(content)
        _run_copy(run, root / "st_run" / f"j{i}", "final.pt", content)
    for i, (mutate, _) in enumerate(OPTIMIZER_JUNK.values()):
        bad = {**good, "optimizer": copy.deepcopy(good["optimizer"])}
        mutate(bad["optimizer"])
        buffer = io.BytesIO()
        torch.save(bad, buffer)
        _run_copy(run, root / "opt" / f"o{i}", "final.pt", buffer.getvalue())
    (root / "few").mkdir()
    for n in (2, 3):
        np.savez(root / "few" / f"n{n}.npz", samples=np.random.default_rng(n).normal(size=(n, 2)))
    (root / "masks").mkdir()
    _npy_with_header(root / "masks" / "huge.npy", (10**12,), descr="|b1")
    np.save(root / "masks" / "big.npy", np.ones(100, dtype=bool))
    _npy_with_header(root / "masks" / "truncated.npy", (2,), payload=b"")
    np.save(root / "masks" / "good.npy", np.array([True, False]))
    np.savez(root / "images.npz", x=np.random.default_rng(0).normal(size=(8, 2)))
    idx = lambda n: struct.pack(">IIII", 0x803, n, 28, 28)  # noqa: E731  (an MNIST image file's header)
    _gzip_bomb(root / "mnist_bomb" / "train-images-idx3-ubyte.gz", idx(10**6), 800)  # as much as it claims
    _gzip_bomb(root / "mnist_trailing" / "train-images-idx3-ubyte.gz", idx(100) + bytes(78400), 256)
    (root / "mnist_plain").mkdir()
    (root / "mnist_plain" / "train-images-idx3-ubyte").write_bytes(idx(10**7) + bytes(784))
    (root / "bombs").mkdir()
    _npz_bomb(root / "bombs" / "x.npz", "x", (2**23, 2), "uint8")  # 16 MiB inflated, 16 KiB on disk
    _npz_bomb(root / "bombs" / "samples.npz", "samples", (2**21, 2), "float32")
    (root / "bare" / "stats").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "final.pt", root / "bare" / "model.pt")
    (root / "bare" / "stats" / "model.pt").write_text("the user's own notes\n")
    (root / "target.txt").write_text("a file a lock must not write through\n")
    shutil.copytree(run, root / "linked")
    os.symlink(root / "target.txt", root / "linked" / ".lock")
    os.symlink(root / "target.txt", root / ".so.lock")  # the lock of `sample --out {root}/so`
    shutil.copytree(run, root / "fifo_run")
    os.mkfifo(root / "fifo_run" / ".lock")


def _last_fault_paths() -> list[Case]:
    cases = []
    for i, name in enumerate(SAFETENSORS):
        ck = f"{{root}}/st/s{i}.safetensors"
        for command, argv in {"sample": ["sample", "--checkpoint", ck], "calibrate": ["calibrate", "--checkpoint", ck],
                              "evaluate": ["evaluate", "--samples", "{root}/samples.npz", "--checkpoint", ck],
                              "inpaint": ["inpaint", "--checkpoint", ck, "--images", "{root}/images.npz", "--mask",
                                          "{root}/masks/good.npy", "--out", "{tmp}/i"],
                              "resume": ["train", "--resume", f"{{root}}/st_run/s{i}"]}.items():
            cases.append(Case("checkpoints", f"safetensors {name} / {command}", argv, "SafetensorError"))
    for i, name in enumerate(JUNK_CHECKPOINTS):
        cases += [Case("checkpoints", f"{name} / sample", ["sample", "--checkpoint", f"{{root}}/st/j{i}.pt"],
                       "not a readable checkpoint"),
                  Case("checkpoints", f"{name} / calibrate", ["calibrate", "--checkpoint", f"{{root}}/st/j{i}.pt"],
                       "not a readable checkpoint"),
                  Case("checkpoints", f"{name} / resume", ["train", "--resume", f"{{root}}/st_run/j{i}"],
                       "not a readable checkpoint")]
    for i, (name, (_, expect)) in enumerate(OPTIMIZER_JUNK.items()):
        cases.append(Case("checkpoints", f"optimizer {name} / resume", ["train", "--resume", f"{{root}}/opt/o{i}"],
                          expect))
    for value in ("[0]", "[]", "[1,-2]", "[1,1,1,1,1,1,1,1,1]"):
        cases.append(Case("one validation per value", f"train --set model.channel_mults={value}",
                          ["train", *TINY, "--set", f"model.channel_mults={value}"], "model.channel_mults must be"))
    few = "precision_recall needs at least 4 samples"
    cases += [
        Case("data files", "evaluate 3 samples", ["evaluate", "--samples", "{root}/few/n3.npz", "--checkpoint",
                                                  "{root}/run"], few),
        Case("data files", "evaluate 2 samples for precision_recall", ["evaluate", "--samples", "{root}/few/n2.npz",
                                                                       "--checkpoint", "{root}/run", "--metrics",
                                                                       "precision_recall"], few),
        Case("data files", "evaluate 3 samples with --config", ["evaluate", "--samples", "{root}/few/n3.npz", "--config",
                                                                "{root}/run/config.json"], few),
    ]
    inpaint = ["inpaint", "--checkpoint", "{root}/run", "--images", "{root}/images.npz", "--out", "{tmp}/i"]
    cases += [
        Case("data files", "mask header claims 10^12 values", [*inpaint, "--mask", "{root}/masks/huge.npy"],
             "header claims shape \\(1000000000000,\\)"),
        Case("data files", "mask larger than an item", [*inpaint, "--mask", "{root}/masks/big.npy"], "at most 2"),
        Case("data files", "mask header without data", [*inpaint, "--mask", "{root}/masks/truncated.npy"],
             "file holds 0 bytes"),
    ]
    mnist = ["train", *TINY, "--set", "data.name=mnist"]
    half = {"DMMD_MEMORY_GB": "0.5"}
    cases += [
        Case("resource limits", "MNIST gzip bomb", [*mnist, "--set", "data.root={root}/mnist_bomb"],
             "claims 784000016 bytes.* needs at least", half),
        Case("resource limits", "Fashion-MNIST gzip bomb", ["train", *TINY, "--set", "data.name=fashion_mnist",
                                                            "--set", "data.root={root}/mnist_bomb"], "claims", half),
        Case("resource limits", "MNIST gzip bomb / evaluate", [
            "evaluate", "--samples", "{root}/samples.npz", "--config", "{root}/run/config.json", "--set",
            "data.name=mnist", "--set", "data.root={root}/mnist_bomb"], "claims 784000016 bytes", half),
        Case("resource limits", "MNIST gzip far beyond its header", [*mnist, "--set", "data.root={root}/mnist_trailing"],
             "trailing bytes: header says 100 images"),
        Case("resource limits", "MNIST plain file claiming 10^7 images", [*mnist, "--set", "data.root={root}/mnist_plain"],
             "claims 7840000016 bytes", half),
        Case("resource limits", "npz deflate bomb as training data", ["train", *TINY, "--set", "data.name=file", "--set",
                                                                      "data.root={root}/bombs/x.npz"],
             "needs about .* of memory to load", {"DMMD_MEMORY_GB": "0.2"}),
        Case("resource limits", "npz deflate bomb as inpainting images", [
            "inpaint", "--checkpoint", "{root}/run", "--images", "{root}/bombs/x.npz", "--mask", "{root}/masks/good.npy",
            "--out", "{tmp}/i"], "needs about .* of memory to load", {"DMMD_MEMORY_GB": "0.2"}),
        Case("resource limits", "npz deflate bomb as samples", ["evaluate", "--samples", "{root}/bombs/samples.npz",
                                                                "--checkpoint", "{root}/run"],
             "needs about .* of memory to load", {"DMMD_MEMORY_GB": "0.06"}),
    ]
    nfe = "network evaluations per sample; at most 100000"
    sample = ["sample", "--checkpoint", "{root}/run", "--out", "{tmp}/s"]
    cases += [
        Case("resource limits", "sample --nfe 10^9", [*sample, "--nfe", str(10**9)], nfe),
        Case("resource limits", "sample --nfe 100001", [*sample, "--nfe", "100001"], nfe),
        Case("resource limits", "sample num_levels 10^6", [*sample, "--set", "sample.num_levels=1000000"], nfe),
        Case("resource limits", "sample --nfe 10^9 / ddpm", ["sample", "--checkpoint", "{root}/ddpm", "--out", "{tmp}/s",
                                                            "--nfe", str(10**9)], "sample.num_steps"),
        Case("resource limits", "inpaint --nfe 10^9", [*inpaint, "--mask", "{root}/masks/good.npy", "--nfe",
                                                       str(10**9)], nfe),
        Case("resource limits", "calibrate steps_per_level 10^6", ["calibrate", "--checkpoint", "{root}/run", "--set",
                                                                   "sample.steps_per_level=1000000"], nfe),
        Case("resource limits", "sample replay_particles 10^9", [*sample, "--set", "sample.replay_particles=1000000000"],
             "replay of sample.replay_particles", NO_ROOM),
        Case("resource limits", "calibrate replay_particles 10^9", ["calibrate", "--checkpoint", "{root}/run", "--set",
                                                                    "sample.replay_particles=1000000000"],
             "replay of sample.replay_particles", NO_ROOM),
        Case("resource limits", "inpaint replay_particles 10^9", [*inpaint, "--mask", "{root}/masks/good.npy", "--set",
                                                                  "sample.replay_particles=1000000000"],
             "replay of sample.replay_particles", NO_ROOM),
        Case("resource limits", "--num-samples 10^8 at NFE 100000", [*sample, "--num-samples", str(10**8), "--nfe",
                                                                     "100000"], "1e\\+13 particle steps"),
    ]
    for mount in MOUNTS:
        cases.append(Case("output paths", f"sample --out the mount point {mount}", [*sample[:3], "--out", mount],
                          "mount point"))
    for mount in MOUNTS[-2:]:
        cases.append(Case("output paths", f"train --out the mount point {mount}", ["train", *RUN_ARGS, "--out", mount],
                          "mount point"))
    if MOUNTS:
        cases += [
            Case("output paths", "inpaint --out a mount point", [*inpaint[:-2], "--mask", "{root}/masks/good.npy",
                                                                 "--out", MOUNTS[-1]], "mount point"),
            Case("output paths", "train-autoencoder --out a mount point", ["train-autoencoder", "--set",
                                                                           "data.name=digits", "--out", MOUNTS[-1]],
                 "mount point"),
            Case("output paths", "sample --png-dir a mount point", [*sample, "--png-dir", MOUNTS[-1]], "mount point"),
        ]
    inside = "inside a run's checkpoints/ folder"
    cases += [
        Case("output paths", "sample --out in a run's checkpoints/", [*sample[:3], "--out", "{root}/run/checkpoints/s"],
             inside),
        Case("output paths", "sample --out a run's checkpoints/", [*sample[:3], "--out", "{root}/run/checkpoints"], inside),
        Case("output paths", "sample --out in checkpoints/stats", [*sample[:3], "--out", "{root}/run/checkpoints/stats/s"],
             inside),
        Case("output paths", "inpaint --out in a run's checkpoints/", [*inpaint[:-2], "--mask", "{root}/masks/good.npy",
                                                                       "--out", "{root}/run/checkpoints/i"], inside),
        Case("output paths", "sample --png-dir in a run's checkpoints/", [*sample, "--png-dir",
                                                                          "{root}/run/checkpoints/png"], inside),
        Case("output paths", "train --out in a run's checkpoints/", ["train", *RUN_ARGS, "--out",
                                                                     "{root}/run/checkpoints/new"], inside),
        Case("output paths", "evaluate --out a run's final.pt", ["evaluate", "--samples", "{root}/samples.npz",
                                                                 "--checkpoint", "{root}/run", "--out",
                                                                 "{root}/run/checkpoints/final.pt"], inside),
        Case("output paths", "evaluate --out the samples file", ["evaluate", "--samples", "{root}/samples.npz",
                                                                 "--checkpoint", "{root}/run", "--out",
                                                                 "{root}/samples.npz"], "also an input"),
        Case("output paths", "plot --out a run's final.pt", ["plot", "{root}/run", "--out",
                                                             "{root}/run/checkpoints/final.pt"], inside),
        Case("output paths", "train --out a folder of the user's files", ["train", *RUN_ARGS, "--out", "{root}/busy"],
             "not a dmmd run"),
    ]
    seed = str(2**32)
    cases += [
        Case("one validation per value", "sample --seed 2^32", [*sample, "--seed", seed], "at most 2\\*\\*32 - 1"),
        Case("one validation per value", "train --seed 2^32", ["train", *TINY, "--seed", seed], "at most 2\\*\\*32 - 1"),
        Case("one validation per value", "inpaint --seed 2^32", [*inpaint, "--mask", "{root}/masks/good.npy", "--seed",
                                                                 seed], "at most 2\\*\\*32 - 1"),
        Case("run folders", "calibrate a bare checkpoint whose stats/ name holds a user's file", [
            "calibrate", "--checkpoint", "{root}/bare/model.pt"], "not a readable statistics file"),
        Case("run folders", "sample a bare checkpoint whose stats/ name holds a user's file", [
            "sample", "--checkpoint", "{root}/bare/model.pt", "--out", "{tmp}/s"], "not a readable statistics file"),
        Case("concurrency", "calibrate a run whose .lock is a symbolic link", ["calibrate", "--checkpoint",
                                                                               "{root}/linked"], "symbolic link"),
        Case("concurrency", "resume a run whose .lock is a symbolic link", ["train", "--resume", "{root}/linked"],
             "symbolic link"),
        Case("concurrency", "sample --out whose lock is a symbolic link", [*sample[:3], "--out", "{root}/so"],
             "symbolic link"),
        Case("concurrency", "calibrate a run whose .lock is a FIFO", ["calibrate", "--checkpoint", "{root}/fifo_run"],
             "not a regular file"),
    ]
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    run = root / "run"
    assert main(["train", *RUN_ARGS, "--out", str(run), "--no-progress"]) == 0
    assert main(["train", *TINY, "--set", "train.steps=3", "--method", "ddpm", "--out", str(root / "ddpm"),
                 "--no-progress"]) == 0
    final = run / "checkpoints" / "final.pt"
    good = torch.load(final, weights_only=True)
    (root / "ckpt").mkdir()
    (root / "resume").mkdir()
    for i, (name, (mutate, _)) in enumerate(_mutations(good).items()):
        bad = mutate({**good})
        torch.save(bad, root / "ckpt" / f"m{i:02d}.pt")
        folder = root / "resume" / f"m{i:02d}"
        (folder / "checkpoints").mkdir(parents=True)
        shutil.copy(run / "config.json", folder / "config.json")
        (folder / "latest").write_text("checkpoints/final.pt\n")
        torch.save(bad, folder / "checkpoints" / "final.pt")
    (root / "latest").mkdir()
    for i, (name, (content, _)) in enumerate(LATEST_JUNK.items()):
        folder = root / "latest" / f"l{i:02d}"
        shutil.copytree(run, folder)
        (folder / "latest").write_bytes(content)
    (root / "configs").mkdir()
    for name, (content, _) in CONFIG_FILES.items():
        (root / "configs" / name).write_bytes(content)
    (root / "configs" / "folder.toml").mkdir()
    os.mkfifo(root / "configs" / "fifo.toml")
    (root / "badcfg").mkdir()
    for name, (content, _) in CONFIG_FILES.items():
        if name.endswith(".json"):  # a run folder whose config.json is hostile
            folder = root / "badcfg" / name[:-5]
            shutil.copytree(run, folder)
            (folder / "config.json").write_bytes(content)
    _data_files(root)
    np.savez(root / "samples.npz", samples=np.random.default_rng(0).normal(size=(20, 2)))
    (root / "a_file").write_text("not a folder\n")
    os.symlink(root / "nowhere", root / "dangling")
    (root / "busy").mkdir()
    (root / "busy" / "notes.txt").write_text("mine\n")
    stats_file = root / "stats_is_file"
    shutil.copytree(run, stats_file)
    (stats_file / "checkpoints" / "stats").write_text("in the way\n")
    _more_inputs(root, run, good)
    return root


@dataclass
class Case:
    family: str
    name: str
    argv: list
    expect: str = ""
    env: dict = field(default_factory=dict)
    hold: tuple | None = None  # (folder, lock file name) held by this process while the command runs

    @property
    def id(self):
        return f"{self.family}: {self.name}"


def _cases() -> list[Case]:
    cases = []
    mutations = _mutations_for_ids()
    for i, (name, expect) in enumerate(mutations):
        ck = f"{{root}}/ckpt/m{i:02d}.pt"
        cases += [
            Case("checkpoints", f"{name} / sample", ["sample", "--checkpoint", ck, "--num-samples", "4"], expect),
            Case("checkpoints", f"{name} / calibrate", ["calibrate", "--checkpoint", ck], expect),
            Case("checkpoints", f"{name} / resume", ["train", "--resume", f"{{root}}/resume/m{i:02d}"],
                 expect if not name.startswith(("data_shape other", "data_shape large", "method ddpm"))
                 else "shape|stats|weights|match|method"),
        ]
    for i in range(0, len(mutations), 8):  # evaluate reads checkpoints through the same loader as sample
        name, expect = mutations[i]
        cases.append(Case("checkpoints", f"{name} / evaluate", ["evaluate", "--samples", "{root}/samples.npz",
                                                                "--checkpoint", f"{{root}}/ckpt/m{i:02d}.pt",
                                                                "--metrics", "mmd"], expect))
    for i, (name, (_, expect)) in enumerate(LATEST_JUNK.items()):
        folder = f"{{root}}/latest/l{i:02d}"
        cases += [
            Case("run folders", f"latest {name} / sample", ["sample", "--checkpoint", folder], expect),
            Case("run folders", f"latest {name} / calibrate", ["calibrate", "--checkpoint", folder], expect),
            Case("run folders", f"latest {name} / resume", ["train", "--resume", folder], expect),
        ]
    cases += [
        Case("run folders", "train into an existing run", ["train", *RUN_ARGS, "--out", "{root}/run"], "already holds a run"),
        Case("run folders", "resume a folder without config.json", ["train", "--resume", "{root}/busy"], "not a run folder"),
        Case("run folders", "resume a file", ["train", "--resume", "{root}/a_file"], "not a run folder"),
        Case("run folders", "resume a missing folder", ["train", "--resume", "{root}/nope"], "not a run folder"),
        Case("run folders", "sample a folder without latest", ["sample", "--checkpoint", "{root}/busy"], "without a 'latest'"),
        Case("run folders", "sample a missing checkpoint", ["sample", "--checkpoint", "{root}/nope.pt"], "does not exist"),
        Case("run folders", "sample a fifo as checkpoint", ["sample", "--checkpoint", "{root}/data/fifo.npy"],
             "not a regular file"),
        Case("run folders", "calibrate a DDPM run", ["calibrate", "--checkpoint", "{root}/ddpm"], "whose samplers need none"),
        Case("run folders", "sample a DDPM run with a DMMD sampler", ["sample", "--checkpoint", "{root}/ddpm",
                                                                      "--sampler", "exact"], "does not fit|samples with"),
        Case("run folders", "calibrate a config file", ["calibrate", "--checkpoint", "{root}/run/config.json"],
             "not a readable checkpoint|refused by the safe loader"),
    ]
    for name, (_, expect) in CONFIG_FILES.items():
        cases.append(Case("config files", f"--config {name}", ["train", "--config", f"{{root}}/configs/{name}"], expect))
        if name.endswith(".json"):
            cases.append(Case("config files", f"config.json {name} / resume",
                              ["train", "--resume", f"{{root}}/badcfg/{name[:-5]}"], expect))
    cases += [
        Case("config files", "--config a folder", ["train", "--config", "{root}/configs/folder.toml"], "not a regular file"),
        Case("config files", "--config a fifo", ["train", "--config", "{root}/configs/fifo.toml"], "not a regular file"),
        Case("config files", "--config missing", ["train", "--config", "{root}/configs/none.toml"], "cannot read"),
        Case("config files", "--config binary / evaluate", ["evaluate", "--samples", "{root}/samples.npz", "--config",
                                                             "{root}/configs/binary.toml"], "not UTF-8"),
        Case("config files", "--config a checkpoint", ["train", "--config", "{root}/run/checkpoints/final.pt"],
             "not UTF-8|not valid TOML"),
    ]
    for name, expect in _DATA_EXPECT.items():
        cases.append(Case("data files", f"data file {name}", ["train", *TINY, "--set", "data.name=file",
                                                              "--set", f"data.root={{root}}/data/{name}"], expect))
        if name.endswith(".npy") and name not in ("three_rows.npy",):
            cases.append(Case("data files", f"samples file {name}", [
                "evaluate", "--samples", f"{{root}}/data/{name}", "--checkpoint", "{root}/run", "--metrics", "mmd"],
                expect))
    cases += [
        Case("data files", "mnist root missing", ["train", "--set", "data.name=mnist", "--set", "data.root={root}/nope"],
             "nope"),
        Case("data files", "samples of the wrong width", ["evaluate", "--samples", "{root}/data/good.npz",
                                                          "--checkpoint", "{root}/run"], "expected an array named 'samples'"),
    ]
    long_name = "n" * 300
    cases += [
        Case("output paths", "train --out an existing file", ["train", *RUN_ARGS, "--out", "{root}/a_file"],
             "existing file, not a folder"),
        Case("output paths", "train --out below a file", ["train", *RUN_ARGS, "--out", "{root}/a_file/run"], "is a file"),
        Case("output paths", "train --out a dangling link", ["train", *RUN_ARGS, "--out", "{root}/dangling"],
             "symbolic link"),
        Case("output paths", "train --out below a dangling link", ["train", *RUN_ARGS, "--out", "{root}/dangling/run"],
             "symbolic link"),
        Case("output paths", "train --out a too long name", ["train", *RUN_ARGS, "--out", f"{{tmp}}/{long_name}"],
             "bytes|too long"),
        Case("output paths", "train --out a name without room for temporaries",
             ["train", *RUN_ARGS, "--out", f"{{tmp}}/{'m' * 250}"], "bytes|too long"),
        Case("output paths", "train --out a too long path", ["train", *RUN_ARGS, "--out", "{tmp}/" + "/".join(["d" * 200] * 25)],
             "longer than|too long"),
        Case("output paths", "sample --out an existing file", ["sample", "--checkpoint", "{root}/run", "--out", "{root}/a_file"],
             "existing file, not a folder"),
        Case("output paths", "sample --out below a file", ["sample", "--checkpoint", "{root}/run", "--out", "{root}/a_file/s"],
             "is a file"),
        Case("output paths", "sample --out a dangling link", ["sample", "--checkpoint", "{root}/run", "--out", "{root}/dangling"],
             "symbolic link"),
        Case("output paths", "sample --out a too long name", ["sample", "--checkpoint", "{root}/run", "--out",
                                                                f"{{tmp}}/{long_name}"], "bytes|too long"),
        Case("output paths", "sample --out a folder of other files", ["sample", "--checkpoint", "{root}/run", "--out",
                                                                        "{root}/busy"], "already holds other files"),
        Case("output paths", "sample --png-dir a file", ["sample", "--checkpoint", "{root}/run", "--out", "{tmp}/s",
                                                          "--png-dir", "{root}/a_file"], "existing file"),
        Case("output paths", "evaluate --out a folder", ["evaluate", "--samples", "{root}/samples.npz", "--checkpoint",
                                                          "{root}/run", "--out", "{root}/busy"], "existing folder"),
        Case("output paths", "evaluate --out in a missing folder", ["evaluate", "--samples", "{root}/samples.npz",
                                                                     "--checkpoint", "{root}/run", "--out",
                                                                     "{tmp}/nope/report.json"], "does not exist"),
        Case("output paths", "evaluate --out a dangling link", ["evaluate", "--samples", "{root}/samples.npz",
                                                                 "--checkpoint", "{root}/run", "--out", "{root}/dangling"],
             "symbolic link"),
        Case("output paths", "evaluate --out a too long name", ["evaluate", "--samples", "{root}/samples.npz",
                                                                 "--checkpoint", "{root}/run", "--out",
                                                                 f"{{tmp}}/{long_name}.json"], "bytes|too long"),
        Case("output paths", "calibrate with stats/ a file", ["calibrate", "--checkpoint", "{root}/stats_is_file"],
             "existing file, not a folder"),
    ]
    cases += [
        Case("resource limits", "--num-samples 10^12", ["sample", "--checkpoint", "{root}/run", "--num-samples",
                                                        str(10**12)], "--num-samples .* needs at least"),
        Case("resource limits", "--num-samples 10^8 in 1 GiB", ["sample", "--checkpoint", "{root}/run", "--num-samples",
                                                                str(10**8)], "GiB is available", {"DMMD_MEMORY_GB": "1"}),
        Case("resource limits", "--batch-size 10^7 in 1 GiB", ["sample", "--checkpoint", "{root}/run", "--num-samples",
                                                               str(10**7), "--batch-size", str(10**7)],
             "--batch-size", {"DMMD_MEMORY_GB": "0.4"}),
        Case("resource limits", "exact sampler population", ["sample", "--checkpoint", "{root}/run", "--sampler", "exact",
                                                             "--num-samples", str(10**7)], "exact sampler|--num-samples",
             {"DMMD_MEMORY_GB": "0.4"}),
        Case("resource limits", "data.num_points 10^11", ["train", *TINY, "--set", f"data.num_points={10**11}"],
             "data.num_points"),
        Case("resource limits", "model.width 10^7", ["train", *TINY, "--set", f"model.width={10**7}"], "parameters"),
        Case("resource limits", "train.batch_size 10^9", ["train", *TINY, "--set", f"train.batch_size={10**9}"],
             "train.batch_size"),
        Case("resource limits", "train.num_levels 10^7", ["train", *TINY, "--set", f"train.num_levels={10**7}"],
             "train.num_levels"),
        Case("resource limits", "sample.replay_particles 10^11", ["train", *TINY, "--set",
                                                                  f"sample.replay_particles={10**11}"], "replay"),
        Case("resource limits", "data file above the memory limit", ["train", *TINY, "--set", "data.name=file",
                                                                     "--set", "data.root={root}/data/good.npz"],
             "GiB|MiB", {"DMMD_MEMORY_GB": "0.000001"}),
        Case("resource limits", "DMMD_MEMORY_GB not a number", ["sample", "--checkpoint", "{root}/run"],
             "DMMD_MEMORY_GB must be", {"DMMD_MEMORY_GB": "lots"}),
        Case("resource limits", "model.width 2^70", ["train", *TINY, "--set", f"model.width={2**70}"], "2\\*\\*63"),
    ]
    cases += [
        Case("one validation per value", "train --seed -1", ["train", *TINY, "--seed", "-1"], "seed must be >= 0"),
        Case("one validation per value", "train --set seed=-1", ["train", *TINY, "--set", "seed=-1"], "seed must be >= 0"),
        Case("one validation per value", "sample --seed -1", ["sample", "--checkpoint", "{root}/run", "--seed", "-1"],
             "seed must be >= 0"),
        Case("one validation per value", "train --seed 2^64", ["train", *TINY, "--seed", str(2**64)], "2\\*\\*63"),
        Case("one validation per value", "sample --seed 2^64", ["sample", "--checkpoint", "{root}/run", "--seed",
                                                                str(2**64)], "2\\*\\*63"),
        Case("one validation per value", "sample --device bogus", ["sample", "--checkpoint", "{root}/run", "--device", "gpu0"],
             "device must be"),
        Case("one validation per value", "train --set train.lr=inf", ["train", *TINY, "--set", "train.lr=inf"], "finite"),
        Case("one validation per value", "train --set process.beta_min=nan", ["train", *TINY, "--set",
                                                                              "process.beta_min=nan"], "finite"),
    ]
    for key in ("data.name=two_moons", "model.width=32", "train.batch_size=8", "process.kind=blur", "seed=3",
                "train.num_levels=3", "sample.num_levels=4", "train.lambda_gp=0.5", "model.time_dim=4"):
        cases.append(Case("resume", f"--resume --set {key}", ["train", "--resume", "{root}/run", "--set", key],
                          f"--resume cannot change {key.split('=')[0]}"))
    cases += [
        Case("resume", "--resume --seed 4", ["train", "--resume", "{root}/run", "--seed", "4"], "cannot change seed"),
        Case("resume", "--resume --method ddpm", ["train", "--resume", "{root}/run", "--method", "ddpm"],
             "cannot change|method"),
    ]
    cases += [
        Case("concurrency", "train into a folder another train holds", ["train", *RUN_ARGS, "--out", "{tmp}/held"],
             "in use by pid", hold=("{tmp}/held", ".lock")),
        Case("concurrency", "resume a run another train holds", ["train", "--resume", "{root}/run"], "in use by pid",
             hold=("{root}/run", ".lock")),
        Case("concurrency", "calibrate a run another process holds", ["calibrate", "--checkpoint", "{root}/run"],
             "in use by pid", hold=("{root}/run", ".lock")),
        Case("concurrency", "calibrate a checkpoint file of a held run",
             ["calibrate", "--checkpoint", "{root}/run/checkpoints/final.pt"], "in use by pid", hold=("{root}/run", ".lock")),
        Case("concurrency", "calibrate a lone checkpoint held", ["calibrate", "--checkpoint", "{root}/ckpt/m00.pt"],
             "in use|config", hold=("{root}/ckpt", ".lock")),
        Case("concurrency", "sample into an --out another sample holds", ["sample", "--checkpoint", "{root}/run", "--out",
                                                                          "{tmp}/s"], "in use by pid",
             hold=("{tmp}", ".s.lock")),
    ]
    return cases + _last_fault_paths()


def _mutations_for_ids():
    """(name, expected) of _mutations in order, without a real payload (for test ids)."""
    p = {"config": json.dumps({"train": {}, "model": {}, "sample": {}}), "ema": {"module.w": torch.zeros(2, 2)}, "stats": {}}
    return [(name, expect) for name, (_, expect) in _mutations(p).items()]


_DATA_EXPECT = {}  # filled below from _data_files' table without making files


def _data_expect() -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return _data_files(Path(tmp))


_DATA_EXPECT.update(_data_expect())
CASES = _cases()


def test_corpus_is_large_and_covers_every_family():
    families = {c.family for c in CASES}
    assert len(CASES) >= 150, len(CASES)
    assert {"checkpoints", "run folders", "data files", "config files", "output paths", "resource limits",
            "concurrency"} <= families
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case, corpus, tmp_path, monkeypatch, capsys):
    fill = lambda a: a.replace("{root}", str(corpus)).replace("{tmp}", str(tmp_path))  # noqa: E731
    argv = [fill(a) for a in case.argv]
    if argv[0] in ("train", "sample", "calibrate", "inpaint", "train-autoencoder"):
        argv.append("--no-progress")
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(corpus, tmp_path)
    if case.hold:
        with runfolder.hold(fill(case.hold[0]), "test holder", lock_name=case.hold[1]):
            rc = main(argv)
    else:
        rc = main(argv)
    err = capsys.readouterr().err
    _assert_one_error(rc, err, case.expect)
    assert _snapshot(corpus, tmp_path) == before, "a refused command changed files"
    assert not _leftovers(corpus, tmp_path)


# ------------------------------------------------------------------- what a good run must do
def test_stale_lock_is_taken_over_with_a_note(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(corpus / "run", run)
    (run / ".lock").write_text("999999999 dmmd train --out somewhere\n")  # a holder that died without releasing
    assert main(["calibrate", "--checkpoint", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "note: took over the lock" in err and "pid 999999999" in err
    assert not (run / ".lock").exists()


def test_stale_temporary_files_are_removed_on_the_next_start(corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(corpus / "run", run)
    stale = [run / ".config.json.abcd1234.tmp", run / "checkpoints" / ".final.pt.k2j4h5g6.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    staging = tmp_path / ".s.x8y7z6w5.tmp"
    staging.mkdir()
    (staging / "samples.npz").write_bytes(b"half")
    assert main(["train", "--resume", str(run), "--set", "train.steps=13", "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "4", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    assert not any(p.exists() for p in [*stale, staging])
    assert not _leftovers(tmp_path)


def test_calibrate_never_rewrites_the_model(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(corpus / "run", run)
    final = run / "checkpoints" / "final.pt"
    before = final.read_bytes()
    settings = ["--set", "sample.num_levels=4", "--set", "sample.steps_per_level=1"]
    assert main(["calibrate", "--checkpoint", str(run), "--no-progress", *settings]) == 0
    assert final.read_bytes() == before
    assert (run / "checkpoints" / "stats" / "final.pt").is_file()
    from dmmd.methods.build import load_model

    tag = "T=4,Ns=1,eta=0.1,grid=uniform,inject=0.1,renoise=0,loo=0"
    assert tag in load_model(run)[2]["replay"]
    # training moves on: final.pt is rewritten, and the statistics made for its earlier weights are not used
    assert main(["train", "--resume", str(run), "--set", "train.steps=14", "--no-progress"]) == 0
    assert tag not in load_model(run)[2].get("replay", {})


def test_resume_applies_a_new_learning_rate(corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(corpus / "run", run)
    assert main(["train", "--resume", str(run), "--set", "train.lr=0.5", "--set", "train.steps=14",
                 "--no-progress"]) == 0
    payload = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert [g["lr"] for g in payload["optimizer"]["param_groups"]] == [0.5]
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.5
    assert json.loads(payload["config"])["train"]["lr"] == 0.5


def test_file_modes_follow_the_umask(corpus, tmp_path):
    old = os.umask(0o027)
    try:
        run = tmp_path / "run"
        assert main(["train", *RUN_ARGS, "--out", str(run), "--no-progress"]) == 0
        out = tmp_path / "s"
        assert main(["sample", "--checkpoint", str(run), "--num-samples", "8", "--out", str(out), "--no-progress"]) == 0
    finally:
        os.umask(old)
    for path in [run / "config.json", run / "latest", run / "checkpoints" / "final.pt", out / "samples.npz",
                 out / "samples.png", out / "diversity.json"]:
        assert path.stat().st_mode & 0o777 == 0o640, (path, oct(path.stat().st_mode))
    assert out.stat().st_mode & 0o777 == 0o750


def test_sample_outputs_are_replaced_as_a_unit(corpus, tmp_path):
    out = tmp_path / "s"
    for n in (6, 9):
        assert main(["sample", "--checkpoint", str(corpus / "run"), "--num-samples", str(n), "--seed", str(n),
                     "--out", str(out), "--no-progress"]) == 0
        assert len(np.load(out / "samples.npz")["samples"]) == n
        assert json.loads((out / "diversity.json").read_text())["num_samples"] == n
    assert sorted(p.name for p in out.iterdir()) == sorted(runfolder.SAMPLE_FILES)
    assert not _leftovers(tmp_path)


FULL_DISK = [("sample", "OSError"), ("calibrate", "OSError"), ("resume", "OSError"), ("calibrate", "RuntimeError"),
             ("resume", "RuntimeError"), ("resume", "RuntimeError, statvfs")]


@pytest.mark.parametrize("command,form", FULL_DISK, ids=[f"{c} {f}" for c, f in FULL_DISK])
def test_full_disk_gives_one_line_and_keeps_earlier_files(corpus, tmp_path, monkeypatch, capsys, command, form):
    """OSError: a write's fsync fails with ENOSPC. RuntimeError: torch.save's own form of it
    ("[enforce fail at inline_container.cc] ... file write failed"), with the OSError as its context
    or (statvfs) without it, where the folder's file system reports no free blocks."""
    run = tmp_path / "run"
    shutil.copytree(corpus / "run", run)
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "5", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in [*run.rglob("*"), *out.rglob("*")] if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def torch_full(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a zip")
        if form == "RuntimeError":
            try:
                full()
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    if form == "OSError":
        monkeypatch.setattr(os, "fsync", full)
    else:
        monkeypatch.setattr(torch, "save", torch_full)
        real_statvfs = os.statvfs
        no_blocks = lambda path: os.statvfs_result((4096, 4096, 100, 0, 0, 100, 0, 0, 0, 255))  # noqa: E731
        monkeypatch.setattr(os, "statvfs", no_blocks if form.endswith("statvfs") else real_statvfs)
    argv = {"sample": ["sample", "--checkpoint", str(run), "--num-samples", "7", "--out", str(out)],
            "calibrate": ["calibrate", "--checkpoint", str(run), "--set", "sample.num_levels=5"],
            "resume": ["train", "--resume", str(run), "--set", "train.steps=20"]}[command]
    rc = main([*argv, "--no-progress"])
    line = _assert_one_error(rc, capsys.readouterr().err, "no space left on the device")
    assert f" in {tmp_path}" in line and "earlier checkpoints included) are intact" in line, line
    grown = ("log.txt", "metrics.jsonl") + (("config.json",) if form != "OSError" else ())  # a resume records its steps
    for path, content in before.items():
        if path.name not in grown:  # appended logs may grow
            assert path.read_bytes() == content, path
    assert not _leftovers(tmp_path)


def test_file_size_limit_in_training_is_one_line_and_keeps_earlier_checkpoints(corpus, tmp_path):
    """A real `ulimit -f` (RLIMIT_FSIZE, SIGXFSZ ignored: a write then fails with EFBIG, and torch.save
    with a RuntimeError) between the size of a periodic checkpoint and that of the final one, which
    also holds the sampler statistics: the run stops with one line, at its last periodic checkpoint."""
    import resource

    from dmmd.methods.build import load_model

    periodic = (corpus / "run" / "checkpoints" / "step_00000010.pt").stat().st_size
    final = (corpus / "run" / "checkpoints" / "final.pt").stat().st_size
    assert periodic < final
    limit = (periodic + final) // 2

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dmmd", "train", *RUN_ARGS, "--out", str(run), "--no-progress"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=limited, capture_output=True,
                          text=True, timeout=120)
    line = _assert_one_error(proc.returncode, proc.stderr, "the file size limit \\(ulimit -f\\) was reached while "
                                                           "writing (best|final).pt in ")
    assert str(run / "checkpoints") in line and "earlier checkpoints included) are intact" in line, line
    assert (run / "latest").read_text() == "checkpoints/step_00000010.pt\n"
    assert load_model(run)[3]["step"] == 10  # the last periodic checkpoint loads and samples
    assert not _leftovers(tmp_path)


def test_resume_removes_a_killed_samples_temporary_folder_in_checkpoints(corpus, tmp_path, capsys):
    """A sample killed while writing into RUN/checkpoints/s (refused since) left its staging folder
    and lock there: a resume removes them; a folder of the user's own files, or one whose lock a
    live process holds, stays."""
    run = tmp_path / "run"
    shutil.copytree(corpus / "run", run)
    ck = run / "checkpoints"
    killed, mine, live = ck / ".s.ab12cd34.tmp", ck / ".notes.qw12er34.tmp", ck / ".h.zx12cv34.tmp"
    for folder, name in ((killed, "samples.npz"), (mine, "notes.txt"), (live, "samples.npz")):
        folder.mkdir()
        (folder / name).write_bytes(b"half a file")
    (killed / ".diversity.json.x1y2z3w4.tmp").write_bytes(b"")
    (ck / ".s.lock").write_text("999999999 dmmd sample --out s\n")
    with runfolder.hold(ck, "a sample still running", lock_name=".h.lock"):
        assert main(["train", "--resume", str(run), "--set", "train.steps=13", "--no-progress"]) == 0
    assert not killed.exists() and not (ck / ".s.lock").exists()
    assert (mine / "notes.txt").read_bytes() == b"half a file" and (live / "samples.npz").is_file()
    assert "took over the lock" in capsys.readouterr().err


def test_sigint_during_start_up_is_one_line():
    """Ctrl-C 0.3 s after start lands in the imports (torch): `interrupted` and 130, no traceback (it
    was a KeyboardInterrupt traceback, or a RecursionError). Started as the `dmmd` script starts
    (`python -m dmmd` runs the same module); a machine fast enough to be done: exit 0."""
    code = "import sys; from dmmd.__main__ import entry; sys.exit(entry())"
    proc = subprocess.Popen([sys.executable, "-c", code, "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode in (130, 0) and "Traceback" not in err and "RecursionError" not in err, (proc.returncode, err)
    assert err.strip() == ("interrupted" if proc.returncode else ""), err


def test_a_gzip_bomb_is_never_inflated(tmp_path):
    """An MNIST file that claims 100 images and inflates to 256 MiB more: read to one byte past its
    claim (it was inflated whole first)."""
    import tracemalloc

    from dmmd.data.files import DataError, load_mnist

    _gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", struct.pack(">IIII", 0x803, 100, 28, 28) + bytes(78400), 256)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="trailing bytes: header says 100 images of 28x28 = 78416 bytes, found "
                                            "78417 or more"):
            load_mnist(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_calibrate_of_a_bare_checkpoint_adds_only_its_statistics_file(corpus, tmp_path, capsys):
    """A checkpoint outside a run: its statistics go to DIR/stats/NAME beside it, which sampling
    reads; the user's other files there are untouched."""
    from dmmd.methods.build import load_model

    folder = tmp_path / "mine"
    (folder / "stats").mkdir(parents=True)
    shutil.copy(corpus / "run" / "checkpoints" / "final.pt", folder / "model.pt")
    (folder / "notes.txt").write_text("mine\n")
    torch.save({"mine": torch.ones(2)}, folder / "stats" / "other.pt")
    before = _snapshot(tmp_path)
    assert main(["calibrate", "--checkpoint", str(folder / "model.pt"), "--set", "sample.num_levels=4",
                 "--no-progress"]) == 0
    after = _snapshot(tmp_path)
    assert set(after) - set(before) == {folder / "stats" / "model.pt"}
    assert all(after[p] == before[p] for p in before)
    assert any(tag.startswith("T=4,") for tag in load_model(folder / "model.pt")[2]["replay"])


def test_evaluate_three_samples_gives_the_metrics_that_need_fewer(corpus, tmp_path, capsys):
    assert main(["evaluate", "--samples", str(corpus / "few" / "n3.npz"), "--checkpoint", str(corpus / "run"),
                 "--metrics", "fd,kid,mmd,energy,diversity", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_samples"] == 3 and {"fd", "kid", "mmd_rbf", "energy_distance", "diversity"} <= set(report)


# ------------------------------------------------------------------------------------ signals
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run the interrupted ones must match bit for bit."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *SIG_ARGS, "--out", str(out), "--no-progress"]) == 0
    return _weights(out / "checkpoints" / "final.pt")


def _signal_at(monkeypatch, steps: dict):
    """Make training send itself `steps[k]` (a signal) right after step k."""
    import dmmd.training.loop as training

    real = training.train_step

    def step(state, *args, **kwargs):
        record = real(state, *args, **kwargs)
        if state.step in steps:
            os.kill(os.getpid(), steps[state.step])
        return record

    monkeypatch.setattr(training, "train_step", step)


SIGNAL_CASES = [(signal.SIGTERM, 1), (signal.SIGTERM, 7), (signal.SIGTERM, 15), (signal.SIGTERM, SIG_STEPS - 1),
                (signal.SIGINT, 3), (signal.SIGINT, 15), (signal.SIGINT, 22)]


@pytest.mark.parametrize("signum,at", SIGNAL_CASES, ids=[f"{signal.Signals(s).name} after step {k}" for s, k in SIGNAL_CASES])
def test_signal_stops_at_a_step_and_resume_is_bit_identical(reference, tmp_path, monkeypatch, capsys, signum, at):
    run = tmp_path / "run"
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)  # SIGINT is SIG_IGN under nohup/&
    _signal_at(monkeypatch, {at: signum})
    assert main(["train", *SIG_ARGS, "--out", str(run), "--no-progress"]) == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"stopped by {signal.Signals(signum).name} at step {at} "), err
    assert f"dmmd train --resume {run}" in err[0]
    assert (run / "latest").read_text().strip() == f"checkpoints/step_{at:08d}.pt"
    assert not _leftovers(tmp_path)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # the caller's handlers restored
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    mine = _weights(run / "checkpoints" / "final.pt")
    assert mine.keys() == reference.keys()
    assert all(torch.equal(mine[k], reference[k]) for k in mine)


def test_sigterm_during_sampling_leaves_the_earlier_output(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(corpus / "run"), "--num-samples", "5", "--out", str(out),
                 "--no-progress"]) == 0
    before = _snapshot(tmp_path)
    import dmmd.cli.sample as command  # the name the command calls

    real = command.sample

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(command, "sample", interrupted)
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(corpus / "run"), "--num-samples", "7", "--out", str(out),
                 "--no-progress"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted by SIGTERM"), err
    assert _snapshot(tmp_path) == before and not _leftovers(tmp_path)


# -------------------------------------------------------------------- real second processes
def _spawn(*argv):
    return subprocess.Popen([sys.executable, "-m", "dmmd", *argv, "--no-progress"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, seconds=120.0):
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_second_writer_is_refused_while_a_run_trains_then_sigterm(corpus, tmp_path, capsys):
    """A real training process holds its run folder: a second train, a resume and a calibrate are
    refused naming it; a racing second process too. SIGTERM then ends it with a checkpoint."""
    run = tmp_path / "run"
    proc = _spawn("train", *TINY, "--set", "train.steps=100000", "--set", "train.checkpoint_every=5",
                  "--out", str(run))
    _wait_for(lambda: (run / "latest").is_file(), proc)
    for argv in (["train", *RUN_ARGS, "--out", str(run)], ["train", "--resume", str(run)],
                 ["calibrate", "--checkpoint", str(run)], ["calibrate", "--checkpoint", str(run / "latest")]):
        rc = main([*argv, "--no-progress"])
        _assert_one_error(rc, capsys.readouterr().err, f"in use by pid {proc.pid}|already holds a run|not a")
    second = _spawn("train", "--resume", str(run))
    assert second.wait(timeout=120) == 2
    _assert_one_error(2, second.stderr.read(), f"in use by pid {proc.pid}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    err = proc.stderr.read().strip().splitlines()
    assert err[-1].startswith("stopped by SIGTERM at step ") and "--resume" in err[-1], err
    assert not _leftovers(tmp_path)
    step = int(err[-1].split("at step ")[1].split()[0])
    assert torch.load(run / (run / "latest").read_text().strip(), weights_only=True)["step"] == step


def test_two_samples_into_one_out_keep_a_matching_set(corpus, tmp_path):
    out = tmp_path / "s"
    procs = [_spawn("sample", "--checkpoint", str(corpus / "run"), "--num-samples", str(n), "--seed", str(n),
                    "--out", str(out)) for n in (50, 60)]
    codes = [p.wait(timeout=120) for p in procs]
    assert sorted(codes) in ([0, 0], [0, 2]), [p.stderr.read() for p in procs]
    for p, code in zip(procs, codes):
        if code == 2:
            _assert_one_error(2, p.stderr.read(), "in use by pid")
    n = len(np.load(out / "samples.npz")["samples"])
    assert json.loads((out / "diversity.json").read_text())["num_samples"] == n
    assert not _leftovers(tmp_path)
