"""Inpainting on Fashion-MNIST: DMMD, flow matching and DDPM in pixel space, bottom- and top-half
masks, each at the defaults of `dmmd inpaint` (issue 14, acceptance: "... and on Fashion-MNIST").

Pixel-space runs of the `fashion_mnist` preset (latent models are refused by `dmmd inpaint`): DMMD
`dmmd train --preset fashion_mnist` (the preset's 4000 steps), flow matching and DDPM the same with
`--method fm|ddpm --set train.steps=2000`; trained into WORK/<method> when --runs does not name
them. The first N images of the test split (default 500) are written to WORK/heldout.npz (`x`:
uint8 0..255, shape (N, 1, 28, 28); `y`: labels) and completed through the CLI,

    dmmd inpaint --checkpoint RUN --images WORK/heldout.npz --mask bottom|top --seed S --out DIR

once per method, mask and seed. Reported from each metrics.json: the shipped Fashion-MNIST
classifier's accuracy on the completions against the original labels, beside its accuracy on the
full originals and on the masked inputs (unknown pixels at 0, the background), the MSE of the
unknown pixels (model scale [-1, 1]), the count of known values changed (must be 0), NFE, and the
wall and CPU seconds of each command (its own process, model loading included).

    python benchmarks/inpaint_fashion.py [--runs dmmd=RUN fm=RUN ddpm=RUN] [--seeds 0] [--work DIR]

Writes benchmarks/results/inpaint_fashion.json and .md, and docs/img/inpainting_fashion.png
(bottom half generated: originals, masked inputs, then one row per method, seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("dmmd", "fm", "ddpm")
MASKS = ("bottom", "top")
SHAPE = (1, 28, 28)
TRAIN = {"dmmd": [], "fm": ["--method", "fm", "--set", "train.steps=2000"],
         "ddpm": ["--method", "ddpm", "--set", "train.steps=2000"]}


def dmmd(*args: str) -> tuple[float, float]:
    """Run `python -m dmmd ARGS` on one thread; (wall seconds, CPU seconds of the child)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    subprocess.run([sys.executable, "-m", "dmmd", *args], check=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.time() - started, cpu


def ensure_run(method: str, given: dict, work: Path) -> Path:
    if method in given:
        return Path(given[method])
    run = work / method
    if not (run / "latest").is_file():
        dmmd("train", "--preset", "fashion_mnist", *TRAIN[method], "--out", str(run), "--no-progress")
    return run


def heldout_file(work: Path, n: int) -> Path:
    """The first n test images (uint8, data space 0..255) and their labels."""
    from dmmd.data.datasets import load_fashion_mnist_dataset
    from dmmd.data.scaling import to_data_space

    data = load_fashion_mnist_dataset()
    x = to_data_space("fashion_mnist", data.test[:n]).round().numpy()
    path = work / "heldout.npz"
    np.savez(path, x=x.reshape(n, *SHAPE).astype(np.uint8), y=data.labels_test[:n].numpy().astype(np.int64))
    return path


def summarise(reports: list[dict]) -> dict:
    acc = [r["accuracy_completed"] for r in reports]
    first = reports[0]
    return {"accuracy_completed": statistics.mean(acc), "accuracy_completed_per_seed": acc,
            "accuracy_original": first["accuracy_original"], "accuracy_masked_input": first["accuracy_masked_input"],
            "agreement_with_original": statistics.mean(r["classifier_agreement_with_original"] for r in reports),
            "mse_unknown": statistics.mean(r["mse_unknown_model_scale"] for r in reports),
            "known_values_changed": sum(r["known_values_changed"] for r in reports),
            "known_values_checked": sum(r["known_values_checked"] for r in reports),
            "known_bit_equal": all(r["known_bit_equal"] for r in reports),
            "sampler": first["sampler"], "resample": first["resample"], "nfe": first["nfe"],
            "wall_seconds": [r["wall_seconds"] for r in reports], "cpu_seconds": [r["cpu_seconds"] for r in reports]}


def picture(path: Path, x: np.ndarray, rows: dict) -> None:
    from inpaint import picture as grid  # benchmarks/inpaint.py: the digits benchmark's grid, for any data set

    grid(path, x, rows, "fashion_mnist", SHAPE, title="Fashion-MNIST, ")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=[], metavar="METHOD=RUN", help="trained pixel runs to use")
    parser.add_argument("--seeds", default="0", help="sampling seeds (comma-separated)")
    parser.add_argument("--images", type=int, default=500, help="held-out images (the first of the test split)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_inpaint_fashion"),
                        help="folder for runs trained here, the image file and the inpaint outputs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    given = dict(item.split("=", 1) for item in args.runs)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    images = heldout_file(work, args.images)
    x = np.load(images)["x"]
    results = {"heldout_images": len(x), "seeds": seeds, "images_file": str(images)}
    pictures = {}
    for method in METHODS:
        run = ensure_run(method, given, work)
        entry = {"run": str(run)}
        for mask in MASKS:
            reports = []
            for seed in seeds:
                out = work / f"inpaint_{method}_{mask}_s{seed}"
                wall, cpu = dmmd("inpaint", "--checkpoint", str(run), "--images", str(images), "--mask", mask,
                                 "--seed", str(seed), "--out", str(out), "--no-progress")
                report = json.loads((out / "metrics.json").read_text())
                report.update(wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1))
                reports.append(report)
                if mask == "bottom" and seed == seeds[0]:
                    pictures[method] = np.load(out / "completions.npz")["x"]
                print(method, mask, seed, round(report["accuracy_completed"], 3), f"{wall:.0f} s", flush=True)
            entry[mask] = summarise(reports)
        results[method] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inpaint_fashion.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "inpaint_fashion.md").write_text(table(results))
    picture(ROOT / "docs" / "img" / "inpainting_fashion.png", x, pictures)
    print(table(results))
    return 0


def table(results: dict) -> str:
    lines = [f"Held-out Fashion-MNIST (the first {results['heldout_images']} test images, seeds {results['seeds']}), "
             "`dmmd inpaint` defaults; accuracy of the shipped Fashion-MNIST classifier against the original labels.",
             "", "| method | sampler / resample | NFE | mask | completed | per seed | original | masked input "
             "| MSE unknown | known values changed | wall / CPU s per command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for mask in MASKS:
            r = results[method][mask]
            seeds = ", ".join(f"{a:.3f}" for a in r["accuracy_completed_per_seed"])
            times = ", ".join(f"{w:.0f} / {c:.0f}" for w, c in zip(r["wall_seconds"], r["cpu_seconds"]))
            lines.append(f"| {method} | {r['sampler']} / U={r['resample']} | {r['nfe']} | {mask} | "
                         f"{r['accuracy_completed']:.3f} | {seeds} | {r['accuracy_original']:.3f} | "
                         f"{r['accuracy_masked_input']:.3f} | {r['mse_unknown']:.3f} | "
                         f"{r['known_values_changed']} of {r['known_values_checked']} | {times} |")
    lines += ["", "Runs: " + ", ".join(f"{m} {results[m]['run']}" for m in METHODS)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
