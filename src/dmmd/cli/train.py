"""`dmmd train`: train DMMD (Algorithm 1) or a baseline into a run folder."""

from __future__ import annotations

import os
from pathlib import Path

from dmmd import config
from dmmd.cli.common import add_config_args, config_source, device_and_dry_run, next_run_dir
from dmmd.data.datasets import load_dataset
from dmmd.evaluation.report import REFERENCE_HELDOUT, cached_reference_figures
from dmmd.methods.conditional import training_labels
from dmmd.methods.latent import latent_data
from dmmd.methods.resources import check_data_config, check_training
from dmmd.runtime.device import resolve_device
from dmmd.runtime.resume import check_resume
from dmmd.runtime.runfolder import (
    LOCK_NAME,
    check_output_dir,
    check_outside_checkpoints,
    enter,
    hold,
    remove_stale_temps,
)
from dmmd.training.loop import train


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a discriminator (Algorithm 1) into a run folder",
                       description="Train DMMD's discriminator (or, with --set method=ddpm, the DDPM baseline on the "
                       "same backbone). Writes RUN/config.json, RUN/log.txt, "
                       "RUN/metrics.jsonl and RUN/checkpoints/, with RUN/latest naming the newest checkpoint.")
    add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/NNNNN-<data>-<method>)")
    p.add_argument("--seed", type=int, help="random seed (overrides the config's seed)")
    p.add_argument("--method", choices=("dmmd", "ddpm", "fm"), help="dmmd (default), or a baseline on the same "
                   "backbone: ddpm (epsilon prediction; samplers ddpm, ddim) or fm (flow matching, rectified flow; "
                   "samplers euler, heun)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint "
                   "(its config.json is used; --set may change only train.steps, train.checkpoint_every, "
                   "train.log_every, train.keep_checkpoints, train.threads, train.device and train.lr)")
    p.add_argument("--device", help="auto (CUDA when available; the default of train.device), cpu, cuda or "
                   "cuda:N (sets train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a bar is drawn on a terminal only; "
                   "otherwise a line per logging interval)")


def run(args) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file():
            raise config.ConfigError(f"{run_dir} is not a run folder (no config.json); pass the folder `dmmd train` wrote")
        flags = [f"{k}={v}" for k, v in (("method", args.method), ("seed", args.seed)) if v is not None]
        cfg = config.stored_run(config.load(run_dir / "config.json", [*args.overrides, *flags]))
        check_resume(config.stored_run(config.load(run_dir / "config.json")), cfg,
                     f"{run_dir / 'config.json'} holds the run")
    else:
        overrides = list(args.overrides)
        if args.method:
            overrides.insert(0, f"method={args.method}")
        if args.seed is not None:  # validated like --set seed=...
            overrides.append(f"seed={args.seed}")
        cfg = config.load(config_source(args), overrides)
    if device_and_dry_run(args, cfg):
        return 0
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 checks and prints
    if not args.resume:
        run_dir = Path(args.out) if args.out else next_run_dir(cfg)
        if main_rank and (run_dir / "config.json").exists():
            raise config.ConfigError(f"{run_dir} already holds a run: pass --resume {run_dir} or choose another --out")
    check_output_dir(run_dir, "--resume" if args.resume else "--out")  # before any compute
    if not args.resume:  # a run inside another run's checkpoints/ (which only its training writes)
        check_outside_checkpoints(run_dir)
    if not args.resume and main_rank and run_dir.is_dir() and not (run_dir / "config.json").exists():
        others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
        if others:  # the user's own files: training would append to a log.txt or metrics.jsonl of theirs
            raise config.ConfigError(f"--out {run_dir} is a folder holding files that are not a dmmd run "
                                     f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); choose a new "
                                     "or empty folder")
    check_data_config(cfg)
    if main_rank:  # one writer per run folder, until the command ends
        enter(hold(run_dir, f"dmmd train{' --resume' if args.resume else ''}"))
        if not args.resume and (run_dir / "config.json").exists():
            raise config.ConfigError(f"{run_dir} already holds a run: pass --resume {run_dir} or choose another --out")
        remove_stale_temps(run_dir)  # left by a process that was killed during a write
    data = pixels = load_dataset(cfg.data, cfg.seed)
    if data.note and main_rank:  # an array file: how its values were mapped to the model's range
        print(data.note)
    if cfg.model.latent:  # train in the autoencoder's latents, encoded once (docs/latent.md)
        data = latent_data(cfg, data, progress=not args.no_progress)
    labels, val_labels = training_labels(cfg, data)  # model.conditional: also sets model.num_classes
    check_training(cfg, data.shape, resolve_device(cfg.train.device))
    if main_rank:
        print(f"run folder: {run_dir}")
    train(cfg, data.train, run_dir, resume=bool(args.resume), progress=not args.no_progress, echo=print,
          stream=data.stream, val_data=data.test, labels=labels, val_labels=val_labels)
    if main_rank and pixels.stream is None and len(pixels.test) >= 2:
        # the held-out side of `dmmd sample`'s diagnostics for 2000 samples and more, made once here
        cached_reference_figures(pixels, REFERENCE_HELDOUT, run_dir / "diagnostics")
    return 0
