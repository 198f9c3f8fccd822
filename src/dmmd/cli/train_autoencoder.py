"""`dmmd train-autoencoder`: the autoencoder a latent model works in."""

from __future__ import annotations

from pathlib import Path

from dmmd import config
from dmmd.cli.common import add_config_args, config_source, device_and_dry_run, next_run_dir
from dmmd.data.datasets import load_dataset
from dmmd.runtime.runfolder import check_output_dir, enter, hold, remove_stale_temps
from dmmd.training.autoencoder import train_autoencoder


def add_parser(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train the autoencoder whose latents model.latent names",
                       description="Train a convolutional autoencoder (autoencoder.* keys) on the image data set of "
                       "the config, for latent modelling (docs/latent.md). Writes AE/config.json, AE/log.txt, "
                       "AE/metrics.jsonl, AE/checkpoints/, AE/reconstructions.png and AE/autoencoder.json.")
    add_config_args(p, example="autoencoder.steps=500")
    p.add_argument("--out", metavar="AE", help="autoencoder folder (default: the config's model.latent, else "
                   "runs/NNNNN-<data>-autoencoder)")
    p.add_argument("--resume", metavar="AE", help="continue the autoencoder in AE from its latest checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (sets train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if args.resume:
        out = Path(args.resume)
        if not (out / "config.json").is_file():
            raise config.ConfigError(f"{out} is not an autoencoder folder (no config.json); pass the folder "
                                     "`dmmd train-autoencoder` wrote")
        cfg = config.load(out / "config.json", args.overrides)
    else:
        cfg = config.load(config_source(args), args.overrides)
        default = next_run_dir(cfg)
        out = Path(args.out or cfg.model.latent or default.with_name(default.name.rsplit("-", 1)[0] + "-autoencoder"))
    if device_and_dry_run(args, cfg):
        return 0
    check_output_dir(out, "--resume" if args.resume else "--out")
    enter(hold(out, "dmmd train-autoencoder"))
    if not args.resume and (out / "config.json").exists():
        raise config.ConfigError(f"{out} already holds an autoencoder: pass --resume {out} or choose another --out")
    remove_stale_temps(out)
    data = load_dataset(cfg.data, cfg.seed)
    if data.note:  # an array file: how its values were mapped to the model's range
        print(data.note)
    print(f"autoencoder folder: {out}")
    train_autoencoder(cfg, data, out, resume=bool(args.resume), progress=not args.no_progress, echo=print)
    return 0
