"""The `dmmd` command line: train, sample, calibrate, evaluate, compare. A thin layer over the library.

Mistakes in the user's input end in a one-line `error: ...` on stderr and exit code 2
(pass --debug for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_USAGE = 2
STUDIES = {"kernel-width": "kernel_width", "flows": "flows", "pictures": "pictures", "optimal-width": "optimal_width"}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="TOML or JSON config; defaults are used for keys it "
                        "leaves out")
    source.add_argument("--preset", metavar="NAME", help="a config shipped with dmmd, e.g. digits or "
                        "eight_gaussians (`dmmd presets` lists them; configs/ in a checkout holds the same files)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.steps=500 (repeatable; checked against the "
                        "key's type; run `dmmd train --dry-run` to see every key)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmmd", description="Diffusion MMD gradient flow (DMMD): train a "
                                     "noise-conditional MMD discriminator and generate by its gradient flow.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"dmmd {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="list the shipped presets (use with --preset NAME)",
                   description="List the presets shipped with dmmd, one line each (the first comment of the file).")
    pl = sub.add_parser("plot", help="draw a run's loss curves to RUN/losses.png",
                        description="Read RUN/metrics.jsonl and draw every training loss term and the held-out loss "
                        "against the step into RUN/losses.png (or --out).")
    pl.add_argument("run", metavar="RUN", help="run folder written by `dmmd train`")
    pl.add_argument("--out", metavar="FILE", help="picture to write (default RUN/losses.png)")

    t = sub.add_parser("train", help="train a discriminator (Algorithm 1) into a run folder",
                       description="Train DMMD's discriminator (or, with --set method=ddpm, the DDPM baseline on the "
                       "same backbone). Writes RUN/config.json, RUN/log.txt, "
                       "RUN/metrics.jsonl and RUN/checkpoints/, with RUN/latest naming the newest checkpoint.")
    _add_config_args(t)
    t.add_argument("--out", metavar="DIR", help="run folder (default: runs/NNNNN-<data>-<method>)")
    t.add_argument("--seed", type=int, help="random seed (overrides the config's seed)")
    t.add_argument("--method", choices=("dmmd", "ddpm", "fm"), help="dmmd (default), or a baseline on the same "
                   "backbone: ddpm (epsilon prediction; samplers ddpm, ddim) or fm (flow matching, rectified flow; "
                   "samplers euler, heun)")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint "
                   "(its config.json is used; --set may change train.steps)")
    t.add_argument("--device", help="auto (CUDA when available; the default of train.device), cpu, cuda or "
                   "cuda:N (sets train.device)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (a bar is drawn on a terminal only; "
                   "otherwise a line per logging interval)")
    a = sub.add_parser("train-autoencoder", help="train the autoencoder whose latents model.latent names",
                       description="Train a convolutional autoencoder (autoencoder.* keys) on the image data set of "
                       "the config, for latent modelling (docs/latent.md). Writes AE/config.json, AE/log.txt, "
                       "AE/metrics.jsonl, AE/checkpoints/, AE/reconstructions.png and AE/autoencoder.json.")
    _add_config_args(a)
    a.add_argument("--out", metavar="AE", help="autoencoder folder (default: the config's model.latent, else "
                   "runs/NNNNN-<data>-autoencoder)")
    a.add_argument("--resume", metavar="AE", help="continue the autoencoder in AE from its latest checkpoint")
    a.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    a.add_argument("--device", help="auto, cpu, cuda or cuda:N (sets train.device)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="generate samples (Algorithm 2) from a checkpoint",
                       description="Move particles from noise along the trained MMD gradient flow. Writes "
                       "OUT/samples.npz (array 'samples', in data space), OUT/samples.png (an image grid or a "
                       "scatter plot) and OUT/diversity.json.")
    s.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file or run folder")
    s.add_argument("--sampler", choices=("exact", "approx", "kale", "ddpm", "ddim", "euler", "heun"),
                   help="DMMD: exact (interacting particles, any kernel), approx (independent particles, linear "
                        "kernel), kale (ascend the KALE critic); DDPM baseline: ddpm (ancestral) or ddim; flow "
                        "matching: euler or heun (default: the checkpoint's sample.sampler)")
    s.add_argument("--nfe", type=int, metavar="N", help="network evaluations (sampling steps) for any method. "
                   "DMMD: N picks T x N_s (N levels of one step up to 20, else 10 levels of N/10 steps) and "
                   "scales the step size and re-noise by a measured rule (docs/sampling.md); DDPM/flow matching: "
                   "sample.num_steps = N. --set sample.* keys still override. Default: the checkpoint's settings")
    s.add_argument("--num-samples", type=int, default=100, help="number of samples (default 100)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed; sample i depends only on (seed, i) for the "
                   "approx and kale samplers (default 0)")
    s.add_argument("--batch-size", type=int, default=4096, help="particles moved together by the approx and "
                   "kale samplers (the exact sampler moves all of them as one population)")
    s.add_argument("--out", metavar="DIR", help="output folder (default: RUN/samples-<sampler>-nfe<N>-seed<S>-<hash>, "
                   "the hash of every sample.* setting and the count: other settings never overwrite it)")
    s.add_argument("--png-dir", metavar="DIR", help="also write one PNG per sample into DIR (image data; the "
                   "folder layout FID tools such as clean-fid, pytorch-fid and torch-fidelity read)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sample.* setting, e.g. --set sample.step_size=0.05")
    s.add_argument("--device", default="auto", help="auto (CUDA when available, default), cpu, cuda or cuda:N; "
                   "samples are the same draws on every device (noise is drawn on the CPU)")
    s.add_argument("--compile", action="store_true", help="torch.compile the network first (pays off for long "
                   "runs on a GPU; the first steps are slower while it compiles)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--class", dest="class_", metavar="K", help="a conditional model (model.conditional): samples of "
                   "class K, or 'all' (sample i gets class i mod C: an equal number per class when C divides "
                   "--num-samples); labels are saved as array 'y' in samples.npz. Default: unconditional")
    s.add_argument("--guidance", type=float, metavar="W", help="guidance weight of a conditional model (sets "
                   "sample.guidance; DMMD: mu(t,y) + W (mu(t,y) - mu(t,null)); flow matching and DDPM: "
                   "classifier-free guidance (1 + W) cond - W uncond; docs/conditional.md)")

    ip = sub.add_parser("inpaint", help="fill in the masked part of images with a trained model (any method)",
                        description="Complete images: the known pixels are kept exactly, the masked ones generated "
                        "by the checkpoint's sampler, with the known pixels replaced at every noise level by a "
                        "forward-noised copy (docs/inpainting.md). Writes OUT/completions.npz (array 'x', data space, "
                        "the input's layout; 'mask'), OUT/inpaint.png (originals / masked / completed) and "
                        "OUT/metrics.json.")
    ip.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file or run folder")
    ip.add_argument("--images", required=True, metavar="FILE.npz", help="array 'x' in data space like user data "
                    "files (digits: values 0..16, shape (n, 64) or (n, 1, 8, 8)); optional integer labels 'y' "
                    "(scored by the shipped classifier for digits and Fashion-MNIST)")
    ip.add_argument("--mask", required=True, metavar="MASK", help="top, bottom, left, right or center (that part is "
                    "generated: `top` fills in the top half), or FILE.npy of bools or 0/1 (1 = generated) of one "
                    "image's shape (or broadcastable to it)")
    ip.add_argument("--out", required=True, metavar="DIR", help="output folder (an earlier output there is replaced)")
    ip.add_argument("--nfe", type=int, metavar="N", help="network evaluations, as for `dmmd sample --nfe`")
    ip.add_argument("--seed", type=int, default=0, help="sampling seed; completion i depends only on (seed, i) "
                    "except with DMMD's exact sampler (default 0)")
    ip.add_argument("--sampler", choices=("exact", "approx", "kale", "ddpm", "ddim", "euler", "heun"),
                    help="as for `dmmd sample` (default: the checkpoint's sample.sampler, but exact for DMMD's "
                    "approx: measured better for inpainting, docs/inpainting.md)")
    ip.add_argument("--resample", type=int, metavar="U", help="run every level (DMMD) or step (flow matching, DDPM) "
                    "but the last U times, jumping back to its noise level in between (RePaint's resampling; NFE "
                    "grows about U-fold; default 5; 1 turns it off)")
    ip.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a sample.* setting, e.g. --set sample.step_size=0.05")
    ip.add_argument("--batch-size", type=int, default=4096, help="images completed together (the exact sampler "
                    "moves all of them as one population)")
    ip.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    ip.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = sub.add_parser("calibrate", help="store level statistics and a mean-field replay for sampler settings",
                       description="Compute, from the training data, what the approx sampler needs for the given "
                       "sample.* settings (level mean features; the replay trajectory of reading (c)) and store it "
                       "in the checkpoint.")
    c.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file or run folder")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="sample.* settings to calibrate for, e.g. --set sample.num_levels=20")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    m = sub.add_parser("compare", help="DMMD vs DDPM vs flow matching: same backbone, equal CPU budget, NFE 10-100",
                       description="Train DMMD, a DDPM (epsilon prediction, x0 clipped for bounded data) and flow "
                       "matching (rectified flow) from one config: same backbone, optimiser, batch, EMA and data, "
                       "each for the same CPU-time budget at one thread (wall time reported beside it). At each "
                       "fraction of the budget in --points, every method samples at every NFE with each of its "
                       "sampler settings (the same number per method), chosen on the training split and reported "
                       "on held-out data (FD-digits / FD-fashion in the shipped classifiers' features). Writes "
                       "OUT/compare.md, OUT/compare.json, OUT/metric_vs_nfe.png and labelled sample grids.")
    _add_config_args(m)
    m.add_argument("--out", metavar="DIR", default="runs/compare", help="output folder (default runs/compare)")
    m.add_argument("--nfe", default="10,20,50,100", help="comma-separated NFE values (default 10,20,50,100)")
    m.add_argument("--num-samples", type=int, default=1000, help="samples per cell (default 1000)")
    m.add_argument("--budget", type=float, default=300.0, help="training budget per method in CPU seconds at one "
                   "thread (default 300)")
    m.add_argument("--points", default="0.25,0.5,1", help="fractions of the budget at which every method is "
                   "scored, to show convergence (default 0.25,0.5,1)")
    m.add_argument("--methods", default="dmmd,ddpm,fm", help="comma-separated subset of dmmd, ddpm, fm")
    m.add_argument("--latent", metavar="AE", help="race in the latents of this autoencoder folder (written by "
                   "`dmmd train-autoencoder`; same as --set model.latent=AE): every method trains on the encoded "
                   "data with the MLP, samples are decoded and scored in pixels beside the reconstruction floor")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")

    st = sub.add_parser("study", help="reproduce the paper's studies (kernel-width, flows, pictures, optimal-width)",
                        description="Run a study module; arguments after the name go to it (see `dmmd study NAME "
                        "--help`). docs/studies.md and docs/optimal_width.md describe them.")
    st.add_argument("name", choices=sorted(STUDIES), help="which study")
    st.add_argument("args", nargs=argparse.REMAINDER, help="the study's own arguments, e.g. --out DIR --quick; "
                    "--preset NAME picks the presets it trains (its --data or --toys)")

    e = sub.add_parser("evaluate", help="score a samples file against the held-out data",
                       description="Read samples.npz (array 'samples', in data space) and report diversity and "
                       "distribution metrics against the held-out split of the data set named by --checkpoint's "
                       "config or --config. Prints JSON; --out also writes it to a file.")
    e.add_argument("--samples", required=True, metavar="FILE", help="a samples.npz written by `dmmd sample`")
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH", help="run folder or checkpoint whose data set to compare with")
    source.add_argument("--config", metavar="FILE", help="config naming the data set to compare with")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a data.* key (with --config)")
    e.add_argument("--metrics", default="diversity,fd,kid,mmd,energy,precision_recall",
                   help="comma-separated subset of: diversity, fd, kid, mmd, energy, precision_recall, and, for "
                        "image data, inception_fid and inception_is (FID and IS with the standard Inception "
                        "network; need its weights file, see --inception-weights)")
    e.add_argument("--inception-weights", metavar="PATH",
                   help="the standard Inception network's weights for inception_fid/inception_is: torch-fidelity's "
                        "weights-inception-2015-12-05-6726825d.pth (the file torchmetrics uses), downloaded from "
                        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                        "weights-inception-2015-12-05-6726825d.pth on a machine with internet access; default: that "
                        "file in the torch hub checkpoints folder ($TORCH_HOME/hub/checkpoints, usually "
                        "~/.cache/torch/hub/checkpoints). Nothing is downloaded. Also needs torch-fidelity (and the "
                        "torchvision it imports) installed")
    e.add_argument("--out", metavar="FILE", help="also write the JSON report here")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dmmd")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _config_source(args, default: str | None = None):
    """The --config file, the --preset's file, or the default preset's (None: defaults only)."""
    from . import presets

    if getattr(args, "preset", None):
        return presets.path(args.preset)
    if args.config:
        return args.config
    return presets.path(default) if default else None


def _bar_off(args) -> bool:
    """Progress bars only on a terminal: redirected to a file, their redraws fill it."""
    return args.no_progress or not sys.stderr.isatty()


def cmd_presets(args) -> int:
    from . import presets

    names = presets.names()
    for name in names:
        print(f"{name:<{max(map(len, names))}}  {presets.summary(name)}")
    return 0


def cmd_plot(args) -> int:
    from .config import ConfigError
    from .plotting import save_loss_curves
    from .runlog import read_metrics

    path = Path(args.run) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{args.run} has no metrics.jsonl: pass a run folder written by `dmmd train`")
    records = read_metrics(path)
    if not records:
        raise ConfigError(f"{path} holds no records yet (train.log_every steps have not passed)")
    out = Path(args.out) if args.out else Path(args.run) / "losses.png"
    save_loss_curves(out, records, title=str(args.run))
    print(f"loss curves: {out}")
    return 0


def _next_run_dir(cfg) -> Path:
    root = Path("runs")
    numbers = [int(p.name.split("-")[0]) for p in root.glob("[0-9]" * 5 + "-*")] if root.is_dir() else []
    return root / f"{max(numbers, default=0) + 1:05d}-{cfg.data.name}-{cfg.method}"


def cmd_train(args) -> int:
    from . import config
    from .data.datasets import load_dataset
    from .device import resolve_device
    from .resources import check_data_config, check_training
    from .runfolder import check_output_dir, check_resume, enter, hold, remove_stale_temps
    from .training import train

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file():
            raise config.ConfigError(f"{run_dir} is not a run folder (no config.json); pass the folder `dmmd train` wrote")
        flags = [f"{k}={v}" for k, v in (("method", args.method), ("seed", args.seed)) if v is not None]
        cfg = config.load(run_dir / "config.json", [*args.overrides, *flags])
        check_resume(config.load(run_dir / "config.json"), cfg, f"{run_dir / 'config.json'} holds the run")
    else:
        overrides = list(args.overrides)
        if args.method:
            overrides.insert(0, f"method={args.method}")
        if args.seed is not None:  # validated like --set seed=...
            overrides.append(f"seed={args.seed}")
        cfg = config.load(_config_source(args), overrides)
    if args.device:
        config.set_value(cfg, "train.device", args.device)
        config.validate(cfg)
    if args.dry_run:
        print(config.to_json(cfg))
        return 0
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 checks and prints
    if not args.resume:
        run_dir = Path(args.out) if args.out else _next_run_dir(cfg)
        if main_rank and (run_dir / "config.json").exists():
            raise config.ConfigError(f"{run_dir} already holds a run: pass --resume {run_dir} or choose another --out")
    check_output_dir(run_dir, "--resume" if args.resume else "--out")  # before any compute
    check_data_config(cfg)
    if main_rank:  # one writer per run folder, until the command ends
        enter(hold(run_dir, f"dmmd train{' --resume' if args.resume else ''}"))
        if not args.resume and (run_dir / "config.json").exists():
            raise config.ConfigError(f"{run_dir} already holds a run: pass --resume {run_dir} or choose another --out")
        remove_stale_temps(run_dir)  # left by a process that was killed during a write
    data = load_dataset(cfg.data, cfg.seed)
    if cfg.model.latent:  # train in the autoencoder's latents, encoded once (docs/latent.md)
        from .latent import latent_data

        data = latent_data(cfg, data, progress=not args.no_progress)
    from .conditional import training_labels

    labels, val_labels = training_labels(cfg, data)  # model.conditional: also sets model.num_classes
    check_training(cfg, data.shape, resolve_device(cfg.train.device))
    if main_rank:
        print(f"run folder: {run_dir}")
    train(cfg, data.train, run_dir, resume=bool(args.resume), progress=not args.no_progress, echo=print,
          stream=data.stream, val_data=data.test, labels=labels, val_labels=val_labels)
    return 0


def cmd_train_autoencoder(args) -> int:
    from . import config
    from .data.datasets import load_dataset
    from .latent import train_autoencoder
    from .runfolder import check_output_dir, enter, hold, remove_stale_temps

    if args.resume:
        out = Path(args.resume)
        if not (out / "config.json").is_file():
            raise config.ConfigError(f"{out} is not an autoencoder folder (no config.json); pass the folder "
                                     "`dmmd train-autoencoder` wrote")
        cfg = config.load(out / "config.json", args.overrides)
    else:
        cfg = config.load(_config_source(args), args.overrides)
        default = _next_run_dir(cfg)
        out = Path(args.out or cfg.model.latent or default.with_name(default.name.rsplit("-", 1)[0] + "-autoencoder"))
    if args.device:
        config.set_value(cfg, "train.device", args.device)
        config.validate(cfg)
    if args.dry_run:
        print(config.to_json(cfg))
        return 0
    check_output_dir(out, "--resume" if args.resume else "--out")
    enter(hold(out, "dmmd train-autoencoder"))
    if not args.resume and (out / "config.json").exists():
        raise config.ConfigError(f"{out} already holds an autoencoder: pass --resume {out} or choose another --out")
    remove_stale_temps(out)
    data = load_dataset(cfg.data, cfg.seed)
    print(f"autoencoder folder: {out}")
    train_autoencoder(cfg, data, out, resume=bool(args.resume), progress=not args.no_progress, echo=print)
    return 0


def disc_classes(model) -> int:
    from .conditional import model_classes

    return model_classes(model)


def _sample_config(args, cfg):
    """The checkpoint's config with --sampler, then --nfe's settings, then --set sample.* applied."""
    from . import config
    from .pipeline import settings_for_nfe

    keys = []
    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith("sample."):
            raise config.ConfigError(f"only sample.* keys can be changed at sampling time, got {key!r}")
        keys.append(key)
    if getattr(args, "sampler", None):
        cfg.sample.sampler = args.sampler
    if getattr(args, "guidance", None) is not None:
        config.set_value(cfg, "sample.guidance", args.guidance)
    if getattr(args, "nfe", None) is not None:
        if args.nfe < 1:
            raise config.ConfigError(f"--nfe must be >= 1, got {args.nfe}")
        settings_for_nfe(cfg, args.nfe, keep=keys)
    for item in args.overrides:
        key, _, value = item.partition("=")
        config.set_value(cfg, key.strip(), value.strip())
    config.validate(cfg)
    return cfg


def cmd_sample(args) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .checkpoint import atomic_write_bytes, atomic_write_text
    from .config import ConfigError, check_flag
    from .data.datasets import DataError, load_dataset, to_data_space
    from .device import prepare_model, resolve_device
    from .resources import check_sampling
    from .runfolder import check_output_dir, claim_output, publish
    from .pipeline import (SamplerMismatch, build_process, calibrate, check_sampler, flow_settings, load_model,
                           needs_calibration, sample)
    from .pipeline import nfe as evaluations
    from .api import sample_folder_name
    from .latent import decode, encode_dataset, for_config
    from .plotting import save_png_folder, save_samples_picture
    from .report import sample_report

    if args.num_samples < 1 or args.batch_size < 1:
        raise ConfigError("--num-samples and --batch-size must be >= 1")
    check_flag("seed", args.seed)  # the rule of the config's seed
    device = resolve_device(args.device)
    cfg, disc, stats, payload = load_model(args.checkpoint, device)
    cfg = _sample_config(args, cfg)
    from .conditional import sample_labels

    try:  # --class: checked against the model before any compute
        labels = sample_labels(disc, args.class_, args.num_samples)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.guidance is not None and labels is None and not disc_classes(disc):
        raise ConfigError("--guidance needs a conditional model (trained with model.conditional = true)")
    ae = for_config(cfg, device)  # a latent model's autoencoder; a missing or foreign one is refused
    shape = tuple(payload["data_shape"])
    check_sampling(cfg, shape, args.num_samples, args.num_samples if cfg.sample.sampler == "exact" else args.batch_size,
                   device)
    run = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent.parent
    out = Path(args.out) if args.out else run / (sample_folder_name(cfg, args.seed, args.num_samples)
                                                 + (f"-class{args.class_}" if labels is not None else ""))
    if args.png_dir:
        check_output_dir(args.png_dir, "--png-dir")
    staging = claim_output(out, "dmmd sample")  # checked and locked before any compute; renamed into place at the end
    prepare_model(disc, cfg.train.channels_last, args.compile)
    if cfg.sample.sampler == "exact" and args.num_samples < 2:
        raise ConfigError("the exact sampler moves a population: --num-samples must be >= 2")
    process = build_process(cfg.process)
    data = None
    try:
        data = load_dataset(cfg.data, cfg.seed)
    except DataError as err:
        if cfg.sample.sampler == "exact" and cfg.model.kernel != "linear":
            raise
        print(f"note: training data unavailable ({err}); diversity diagnostics skipped", file=sys.stderr)
    pixels = data
    if ae is not None and data is not None:  # the model moves latents: calibration and references are encoded
        data = encode_dataset(data, ae, cfg.data, progress=not _bar_off(args))
    reference = None
    if data is not None and cfg.sample.sampler == "exact" and cfg.model.kernel != "linear":
        reference = data.train[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[
            : cfg.sample.num_reference]].to(device)
    if needs_calibration(disc, cfg, stats):  # other sampler settings than the stored ones: make them now
        if data is None:
            raise SamplerMismatch(f"the checkpoint holds no statistics for {flow_settings(cfg.sample).tag()} and the "
                                  "training data to make them is unavailable; point data.root at it or use the "
                                  "stored settings")
        print(f"note: making the level statistics and replay for {flow_settings(cfg.sample).tag()} "
              "(`dmmd calibrate` stores them)", file=sys.stderr)
        with tqdm(total=flow_settings(cfg.sample).num_steps, desc="replay", disable=_bar_off(args),
                  dynamic_ncols=True) as bar:
            stats = calibrate(disc, cfg, data.train.to(device), process, stats, flow_settings(cfg.sample), bar,
                              labels=data.labels_train)
    check_sampler(disc, cfg, stats, reference)
    if args.png_dir and len(ae.shape if ae else shape) != 3:
        raise ConfigError(f"--png-dir needs image data; this model's data has shape {shape}")
    started = time.time()
    batch = args.num_samples if cfg.sample.sampler == "exact" else args.batch_size
    chunks = []
    nfe = evaluations(cfg)
    with tqdm(total=nfe * -(-args.num_samples // batch),
              desc="sample", disable=_bar_off(args), dynamic_ncols=True) as bar:
        for start in range(0, args.num_samples, batch):
            n = min(batch, args.num_samples - start)
            chunks.append(sample(disc, cfg, stats, process, shape, n, args.seed, reference, start=start,
                                 device=device, progress=bar,
                                 labels=None if labels is None else labels[start:start + n]).cpu())
    z = torch.cat(chunks)
    if ae is not None:  # decoded: files, picture and diagnostics in pixel space as for any image model
        z, data, shape = decode(z, ae), pixels, ae.shape
    elapsed = time.time() - started
    if not torch.isfinite(z).all():
        print("warning: some samples are not finite; lower sample.step_size", file=sys.stderr)
    samples = to_data_space(cfg.data.name, z).numpy()

    def write_npz(fh):
        np.savez(fh, samples=samples, **({} if labels is None else {"y": labels.numpy()}))

    atomic_write_bytes(staging / "samples.npz", write_npz)
    picture = out / "samples.png"
    kind = data.kind if data is not None else ("image" if len(shape) == 3 else "points")
    save_samples_picture(staging / picture.name, z.numpy(), kind, data.test.numpy() if data is not None and kind == "points" else None,
                         title=f"{cfg.method}, {cfg.sample.sampler} sampler, NFE {evaluations(cfg)}, seed {args.seed}"
                               + (f" (first 100 of {len(z)})" if kind == "image" and len(z) > 100 else ""))
    if args.png_dir:
        save_png_folder(args.png_dir, z.numpy())
        print(f"{len(z)} PNGs: {args.png_dir}")
    report = {"sampler": cfg.sample.sampler, "settings": cfg.sample.__dict__, "num_samples": len(z),
              "seconds": round(elapsed, 3), "nfe": nfe, **({} if labels is None else {"class": args.class_})}
    if data is not None:
        report["diversity"] = sample_report(z, data)
    atomic_write_text(staging / "diversity.json", json.dumps(report, indent=2) + "\n")
    publish(staging)  # the three files replace OUT together
    print(f"{len(z)} samples in {elapsed:.1f} s -> {out / 'samples.npz'}")
    print(f"picture: {picture}")
    return 0


def cmd_inpaint(args) -> int:
    from .inpaint_run import run

    report = run(args.checkpoint, args.images, args.mask, args.out, args.seed, lambda cfg: _sample_config(args, cfg),
                 args.batch_size, args.device, progress=not _bar_off(args), sampler=args.sampler,
                 repeats=args.resample)
    shown = {k: report[k] for k in ("known_values_changed", "mse_unknown_model_scale", "accuracy_completed",
                                    "accuracy_original") if k in report}
    print(f"{report['num_images']} completions in {report['seconds']:.1f} s -> {Path(args.out) / 'completions.npz'}; "
          + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    return 0


def cmd_calibrate(args) -> int:
    from tqdm.auto import tqdm

    from . import checkpoint as ckpt
    from . import statsfile
    from .data.datasets import load_dataset
    from .pipeline import build_process, calibrate, flow_settings, load_model
    from .runfolder import check_output_dir, enter, hold, remove_stale_temps

    path = ckpt.resolve(args.checkpoint)
    check_output_dir(statsfile.stats_path(path).parent, "statistics folder")
    # the run folder's lock: no training step or other calibrate can change this checkpoint meanwhile
    enter(hold(statsfile.lock_folder(path), "dmmd calibrate"))
    remove_stale_temps(statsfile.stats_path(path).parent, subfolders=("",))  # left by a killed calibrate
    cfg, disc, stats, payload = load_model(path)
    if cfg.method != "dmmd":
        from .config import ConfigError

        raise ConfigError(f"calibrate makes the statistics of DMMD's samplers; {path} was trained with method = "
                          f"{cfg.method!r}, whose samplers need none")
    cfg = _sample_config(args, cfg)
    data = load_dataset(cfg.data, cfg.seed)
    if cfg.model.latent:  # a latent model calibrates on the encoded data
        from .latent import encode_dataset, for_config

        data = encode_dataset(data, for_config(cfg), cfg.data, progress=not _bar_off(args))
    settings = flow_settings(cfg.sample)
    with tqdm(total=settings.num_steps, desc="calibrate", disable=_bar_off(args)) as bar:
        stats = calibrate(disc, cfg, data.train, build_process(cfg.process), stats, settings, bar,
                          labels=data.labels_train)
    written = statsfile.save(path, stats)  # beside the checkpoint, which is never rewritten
    print(f"stored statistics for {settings.tag()} in {written}")
    return 0


def cmd_compare(args) -> int:
    from . import config
    from .compare import METHODS, run_compare
    from .data.datasets import load_dataset
    from .runfolder import check_output_dir, enter, hold

    overrides = [*args.overrides, f"model.latent={args.latent}"] if args.latent else args.overrides
    cfg = config.load(_config_source(args, default="digits"), overrides)
    if cfg.method != "dmmd":
        raise config.ConfigError("dmmd compare trains every method from one config: leave method = 'dmmd' in it")
    if cfg.model.conditional:
        raise config.ConfigError("dmmd compare races unconditional models; for conditional ones see "
                                 "benchmarks/conditional.py (docs/conditional.md)")
    if cfg.model.latent and cfg.model.backbone != "mlp":
        raise config.ConfigError("a latent race needs model.backbone = 'mlp' (the latents are vectors)")

    def numbers(text, kind, flag):
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise config.ConfigError(f"{flag} expects comma-separated numbers, got {text!r}") from None

    nfes, points = numbers(args.nfe, int, "--nfe"), numbers(args.points, float, "--points")
    if not nfes or min(nfes) < 1 or args.num_samples < 2:
        raise config.ConfigError("--nfe values must be >= 1 and --num-samples >= 2")
    if not points or not all(0 < p <= 1 for p in points) or not args.budget > 0:
        raise config.ConfigError("--points must be fractions in (0, 1] and --budget > 0 (CPU seconds)")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods or any(m not in METHODS for m in methods):
        raise config.ConfigError(f"--methods must be a subset of {', '.join(METHODS)}, got {args.methods!r}")
    out = Path(args.out)
    check_output_dir(out)  # before any compute
    leftovers = [m for m in methods if (out / m / "config.json").exists()]
    if leftovers:
        raise config.ConfigError(f"{out} already holds a race ({', '.join(leftovers)}): choose another --out")
    data = load_dataset(cfg.data, cfg.seed)
    enter(hold(out, "dmmd compare"))  # one writer per race folder
    run_compare(cfg, data, out, nfes, args.num_samples, args.budget, points, methods,
                progress=not args.no_progress)
    print((Path(args.out) / "compare.md").read_text())
    print(f"wrote {Path(args.out) / 'compare.json'} and pictures")
    return 0


STUDY_PRESETS = {"kernel-width": "--data", "flows": "--toys", "pictures": "--data"}  # each study's own flag


def cmd_study(args) -> int:
    """Runs the study module; --preset NAME [NAME ...] is the study's own preset flag (--data or --toys)."""
    import importlib

    from .config import ConfigError

    argv = list(args.args)
    if any(a == "--preset" or a.startswith("--preset=") for a in argv):
        if args.name not in STUDY_PRESETS:
            raise ConfigError(f"study {args.name} trains no preset; --preset works with {', '.join(STUDY_PRESETS)}")
        flag = STUDY_PRESETS[args.name]
        argv = [flag if a == "--preset" else flag + a[len("--preset"):] if a.startswith("--preset=") else a
                for a in argv]
    module = importlib.import_module(f".studies.{STUDIES[args.name]}", __package__)
    return int(module.main(argv) or 0)


def cmd_evaluate(args) -> int:
    from . import config
    from .checkpoint import atomic_write_text
    from .data.datasets import DataError, from_data_space, load_dataset, read_array
    from .pipeline import load_model
    from .report import METRICS, evaluate_samples

    inception = ("inception_fid", "inception_is")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRICS + inception]
    if unknown or not metrics:
        raise config.ConfigError(f"unknown metrics {unknown or '(none given)'}; "
                                 f"choose from {', '.join(METRICS + inception)}")
    if args.out:
        from .runfolder import check_output_file

        check_output_file(args.out)  # before any compute
    cfg = load_model(args.checkpoint)[0] if args.checkpoint else config.load(args.config, args.overrides)
    data = load_dataset(cfg.data, cfg.seed)
    samples = from_data_space(cfg.data.name, read_array(args.samples, "samples", "samples file"))
    if tuple(samples.shape[1:]) != data.shape:
        raise DataError(f"{args.samples}: samples have shape {tuple(samples.shape[1:])} per item, the data set "
                        f"{cfg.data.name!r} has {data.shape}")
    if len(samples) < 2:
        raise DataError(f"{args.samples}: expected at least 2 samples, found {len(samples)}")
    wanted = [m for m in metrics if m in inception]
    if wanted:
        import torch

        from .evaluation.inception import (inception_fid, inception_score_standard, inception_weights_path,
                                         require_torch_fidelity)

        if data.kind != "image" or len(data.shape) != 3 or data.shape[0] not in (1, 3):
            raise config.ConfigError(f"{', '.join(wanted)}: only for images of shape (1 or 3, H, W); the data "
                                     f"set {cfg.data.name!r} has {data.kind} data of shape {data.shape}")
        if not torch.isfinite(samples).all():
            raise DataError(f"{args.samples}: samples contain NaN or Inf values; the Inception metrics need images")
        weights = inception_weights_path(args.inception_weights)  # fail before any metric is computed
        require_torch_fidelity()
    report = evaluate_samples(samples, data, tuple(m for m in metrics if m in METRICS))
    from .data.datasets import read_labels

    labels = read_labels(args.samples, len(samples))  # `dmmd sample --class`: per-class figures
    if labels is not None and data.labels_train is not None and data.labels_test is not None:
        from .evaluation.classwise import per_class_report

        report["per_class"] = per_class_report(samples, labels, data.train, data.labels_train, data.test,
                                               data.labels_test, cfg.data.name)
    if cfg.model.latent:  # what no latent model can beat: its autoencoder's reconstructions of held-out images
        from .latent import for_config, reconstruction_floor

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
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.datasets import DataError
    from .pipeline import SamplerMismatch
    from .resources import ResourceError
    from .runfolder import Interrupted, RunFolderError, command_scope, describe_os_error, terminate_raises
    from .training import TrainingDiverged

    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "sample": cmd_sample, "calibrate": cmd_calibrate, "evaluate": cmd_evaluate,
                "compare": cmd_compare, "study": cmd_study, "presets": cmd_presets, "plot": cmd_plot,
                "train-autoencoder": cmd_train_autoencoder, "inpaint": cmd_inpaint}
    try:
        # locks and temporary folders a command claims are released however it ends; SIGTERM unwinds like SIGINT
        with terminate_raises(), command_scope():
            return handlers[args.command](args)
    except (ConfigError, DataError, CheckpointError, SamplerMismatch, TrainingDiverged, RunFolderError,
            ResourceError) as err:
        if args.debug:
            raise
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line, whatever the message
        return EXIT_USAGE
    except Interrupted as stop:  # SIGTERM (or SIGINT in training): said where things stand
        print(stop, file=sys.stderr)
        return stop.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a read-only or vanished folder met during the command
        text = describe_os_error(err)
        if args.debug or text is None:
            raise
        print(f"error: {text}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
