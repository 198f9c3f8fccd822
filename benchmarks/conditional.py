"""Class-conditional sampling: a guidance sweep per method (docs/conditional.md).

    python benchmarks/conditional.py --run dmmd=RUN_A --run fm=RUN_B --run ddpm=RUN_C \
        [--guidance 0,0.5,1,2,4] [--num-samples 1000] [--out benchmarks/results/conditional_digits]

Each RUN is a conditional run folder (`dmmd train --preset digits_conditional [--method fm|ddpm]`).
For every guidance weight w, num-samples samples with labels i mod C (`dmmd sample --class all`),
seed 0, the checkpoint's sampler otherwise (DMMD: its replay is made for each w in memory). Figures:
agreement of the shipped classifier with the requested class (digits_net / fashion_net), the
worst class's agreement, per-class near-duplicate share (max over classes) and nearest-training
ratio (range over classes), FD in the classifier's features against the training split (what a
choice of w may look at) and against held-out images (what is reported). Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from dmmd.data.datasets import load_dataset
from dmmd.evaluation.classwise import acceptance, per_class_report
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.conditional import sample_labels
from dmmd.methods.latent import decode, encode_dataset, for_config
from dmmd.methods.sample import calibrate, needs_calibration, sample


def feature_fd(name: str, samples: torch.Tensor, reference: torch.Tensor) -> float:
    from dmmd.evaluation.metrics import frechet_distance

    if name == "digits":
        from dmmd.evaluation.digits_net import load_classifier

        with torch.no_grad():
            fs, fr = load_classifier().features(samples.float()), load_classifier().features(reference.float())
    else:
        from dmmd.evaluation.fashion_net import features_and_logits

        fs, fr = features_and_logits(samples)[0], features_and_logits(reference)[0]
    return frechet_distance(fs.double(), fr.double())


def sweep(method: str, run: str, weights: list[float], num: int, min_agreement: float) -> list[dict]:
    base, model, stats, payload = load_model(run)
    pixels = load_dataset(base.data, base.seed)
    ae = for_config(base)
    data = encode_dataset(pixels, ae, base.data, progress=False) if ae is not None else pixels
    process, shape = build_process(base.process), tuple(payload["data_shape"])
    labels = sample_labels(model, "all", num)
    rows = []
    for w in weights:
        cfg = copy.deepcopy(base)
        cfg.sample.guidance = w
        started = time.time()
        if needs_calibration(model, cfg, stats):
            stats = calibrate(model, cfg, data.train, process, stats, flow_settings(cfg.sample), labels=data.labels_train)
        z = sample(model, cfg, stats, process, shape, num, 0, labels=labels)
        if ae is not None:
            z = decode(z, ae)
        seconds = time.time() - started
        rep = per_class_report(z, labels, pixels.train, pixels.labels_train, pixels.test, pixels.labels_test,
                               base.data.name)
        row = {"method": method, "sampler": cfg.sample.sampler, "guidance": w, "agreement": rep["agreement"],
               "min_class_agreement": rep["min_class_agreement"],
               "max_near_duplicates": rep["max_near_duplicate_share"],
               "nn_to_train_ratio_range": rep["nn_to_train_ratio_range"],
               "fd_train": feature_fd(base.data.name, z, pixels.train),
               "fd_heldout": feature_fd(base.data.name, z, pixels.test),
               "classifier_accuracy_heldout": rep["classifier_accuracy_heldout"],
               "seconds": round(seconds, 1)}
        row["pass"] = acceptance(rep, min_agreement)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| method | sampler | w | agreement | worst class | max near-dup | nn-to-train ratio | FD train | FD held-out | pass |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["nn_to_train_ratio_range"]
        lines.append(f"| {r['method']} | {r['sampler']} | {r['guidance']:g} | {r['agreement']:.3f} | "
                     f"{r['min_class_agreement']:.2f} | {r['max_near_duplicates']:.3f} | {lo:.2f}-{hi:.2f} | "
                     f"{r['fd_train']:.1f} | {r['fd_heldout']:.1f} | {'yes' if r['pass'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="METHOD=RUN")
    parser.add_argument("--guidance", default="0,0.5,1,2,4")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--min-agreement", type=float, default=0.9)
    parser.add_argument("--out", default="benchmarks/results/conditional_digits")
    args = parser.parse_args()
    weights = [float(w) for w in args.guidance.split(",")]
    rows = []
    for item in args.run:
        method, _, run = item.partition("=")
        rows += sweep(method, run, weights, args.num_samples, args.min_agreement)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"num_samples": args.num_samples, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
