"""`dmmd evaluate`: score a samples file against held-out data."""

from __future__ import annotations

import json

from dmmd import config
from dmmd.data.datasets import DataError, load_dataset, read_array, read_labels
from dmmd.data.scaling import from_data_space
from dmmd.evaluation.classwise import per_class_report
from dmmd.evaluation.inception import (
    inception_fid,
    inception_score_standard,
    inception_weights_path,
    require_torch_fidelity,
)
from dmmd.evaluation.report import METRICS, evaluate_samples, reconstruction_floor, summary_lines
from dmmd.methods.build import load_model
from dmmd.methods.latent import for_config
from dmmd.runtime.checkpoint import atomic_write_text
from dmmd.runtime.runfolder import check_output_file

PR_NEIGHBOURS = 3  # evaluate_samples' precision_recall: k = 3 nearest neighbours within each set


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a samples file against the held-out data",
                       description="Read samples.npz (array 'samples', in data space) and report diversity and "
                       "distribution metrics against the held-out split of the data set named by --checkpoint's "
                       "config or --config. Prints a short summary (--json: the whole report); --out also writes the JSON report to a file.")
    p.add_argument("--samples", required=True, metavar="FILE", help="a samples.npz written by `dmmd sample`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH", help="run folder or checkpoint whose data set to compare with")
    source.add_argument("--config", metavar="FILE", help="config naming the data set to compare with")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a data.* key (with --config)")
    p.add_argument("--metrics", default="diversity,fd,kid,mmd,energy,precision_recall",
                   help="comma-separated subset of: diversity, fd, kid, mmd, energy, precision_recall, and, for "
                        "image data, inception_fid and inception_is (FID and IS with the standard Inception "
                        "network; need its weights file, see --inception-weights)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="the standard Inception network's weights for inception_fid/inception_is: torch-fidelity's "
                        "weights-inception-2015-12-05-6726825d.pth (the file torchmetrics uses), downloaded from "
                        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                        "weights-inception-2015-12-05-6726825d.pth on a machine with internet access; default: that "
                        "file in the torch hub checkpoints folder ($TORCH_HOME/hub/checkpoints, usually "
                        "~/.cache/torch/hub/checkpoints). Nothing is downloaded. Also needs torch-fidelity (and the "
                        "torchvision it imports) installed")
    p.add_argument("--out", metavar="FILE", help="also write the JSON report here")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON instead of a short summary")


def run(args) -> int:
    inception = ("inception_fid", "inception_is")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRICS + inception]
    if unknown or not metrics:
        raise config.ConfigError(f"unknown metrics {unknown or '(none given)'}; "
                                 f"choose from {', '.join(METRICS + inception)}")
    if args.out:
        check_output_file(args.out, inputs=(args.samples, args.checkpoint, args.config))  # before any compute
    cfg = load_model(args.checkpoint)[0] if args.checkpoint else config.load(args.config, args.overrides)
    data = load_dataset(cfg.data, cfg.seed)
    samples = from_data_space(cfg.data, read_array(args.samples, "samples", "samples file"))
    if tuple(samples.shape[1:]) != data.shape:
        raise DataError(f"{args.samples}: samples have shape {tuple(samples.shape[1:])} per item, the data set "
                        f"{cfg.data.name!r} has {data.shape}")
    if len(samples) < 2:
        raise DataError(f"{args.samples}: expected at least 2 samples, found {len(samples)}")
    if "precision_recall" in metrics and min(len(samples), len(data.test)) <= PR_NEIGHBOURS:
        raise DataError(f"precision_recall needs at least {PR_NEIGHBOURS + 1} samples and {PR_NEIGHBOURS + 1} held-out "
                        f"rows (each one's {PR_NEIGHBOURS}rd nearest neighbour in its set), found {len(samples)} and "
                        f"{len(data.test)}; leave it out of --metrics")
    wanted = [m for m in metrics if m in inception]
    if wanted:
        import torch


        if data.kind != "image" or len(data.shape) != 3 or data.shape[0] not in (1, 3):
            raise config.ConfigError(f"{', '.join(wanted)}: only for images of shape (1 or 3, H, W); the data "
                                     f"set {cfg.data.name!r} has {data.kind} data of shape {data.shape}")
        if not torch.isfinite(samples).all():
            raise DataError(f"{args.samples}: samples contain NaN or Inf values; the Inception metrics need images")
        weights = inception_weights_path(args.inception_weights)  # fail before any metric is computed
        require_torch_fidelity()
    report = evaluate_samples(samples, data, tuple(m for m in metrics if m in METRICS))

    labels = read_labels(args.samples, len(samples))  # `dmmd sample --class`: per-class figures
    if labels is not None and data.labels_train is not None and data.labels_test is not None:
        report["per_class"] = per_class_report(samples, labels, data.train, data.labels_train, data.test,
                                               data.labels_test, cfg.data.name)
    if cfg.model.latent:  # what no latent model can beat: its autoencoder's reconstructions of held-out images
        report["reconstruction_floor"] = reconstruction_floor(for_config(cfg), data, len(samples))
    if "inception_fid" in metrics:
        report["inception_fid"] = inception_fid(data.test, samples, weights)
    if "inception_is" in metrics:
        splits = min(10, len(samples))
        mean, std = inception_score_standard(samples, weights, splits=splits)
        report["inception_is"] = {"mean": mean, "std": std, "splits": splits}
    text = json.dumps(report, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else "\n".join(summary_lines(report) + ([f"report: {args.out}"] if args.out else [])))
    return 0
