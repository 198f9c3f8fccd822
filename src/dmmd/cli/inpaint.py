"""`dmmd inpaint`: complete the masked part of images with a trained model."""

from __future__ import annotations

import sys
from pathlib import Path

from dmmd.apps import inpaint as inpainting
from dmmd.cli.common import bar_off, sample_config


def add_parser(sub) -> None:
    p = sub.add_parser("inpaint", help="fill in the masked part of images with a trained model (any method)",
                        description="Complete images: the known pixels are kept exactly, the masked ones generated "
                        "by the checkpoint's sampler, with the known pixels replaced at every noise level by a "
                        "forward-noised copy (docs/inpainting.md). Writes OUT/completions.npz (array 'x', data space, "
                        "the input's layout; 'mask'), OUT/inpaint.png (originals / masked / completed) and "
                        "OUT/metrics.json.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file or run folder")
    p.add_argument("--images", required=True, metavar="FILE.npz", help="array 'x' in data space like user data "
                    "files (digits: values 0..16, shape (n, 64) or (n, 1, 8, 8)); optional integer labels 'y' "
                    "(scored by the shipped classifier for digits and Fashion-MNIST)")
    p.add_argument("--mask", required=True, metavar="MASK", help="top, bottom, left, right or center (that part is "
                    "generated: `top` fills in the top half), or FILE.npy of bools or 0/1 (1 = generated) of one "
                    "image's shape (or broadcastable to it)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (an earlier output there is replaced)")
    p.add_argument("--nfe", type=int, metavar="N", help="network evaluations, as for `dmmd sample --nfe`")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; completion i depends only on (seed, i) "
                    "except with DMMD's exact sampler (default 0)")
    p.add_argument("--sampler", choices=("exact", "approx", "kale", "ddpm", "ddim", "euler", "heun"),
                    help="as for `dmmd sample` (default: the checkpoint's sample.sampler, but exact for DMMD's "
                    "approx: measured better for inpainting, docs/inpainting.md)")
    p.add_argument("--resample", type=int, metavar="U", help="run every level (DMMD) or step (flow matching, DDPM) "
                    "but the last U times, jumping back to its noise level in between (RePaint's resampling; NFE "
                    "grows about U-fold; default 5; 1 turns it off)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a sample.* setting, e.g. --set sample.step_size=0.05")
    p.add_argument("--batch-size", type=int, default=4096, help="images completed together (the exact sampler "
                    "moves all of them as one population)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    report = inpainting.run(args.checkpoint, args.images, args.mask, args.out, args.seed, lambda cfg: sample_config(args, cfg),
                 args.batch_size, args.device, progress=not bar_off(args), sampler=args.sampler,
                 repeats=args.resample)
    shown = {k: report[k] for k in ("known_values_changed", "mse_unknown_model_scale", "accuracy_completed",
                                    "accuracy_original") if k in report}
    print(f"{report['num_images']} completions in {report['seconds']:.1f} s -> {Path(args.out) / 'completions.npz'}; "
          + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    if report.get("nonfinite_completions"):
        print(f"warning: {report['nonfinite_completions']} of {report['num_images']} completions hold NaN or Inf "
              "values (the flow diverged); lower sample.step_size or check the checkpoint", file=sys.stderr)
    if report.get("null_label"):
        print("note: a conditional model inpaints through its null label (the unconditional model it learnt on "
              "train.p_uncond of the rows): an unconditional run of the same data completes more "
              "(digits: 0.77 against 0.67 classifier agreement, docs/inpainting.md)", file=sys.stderr)
    return 0
