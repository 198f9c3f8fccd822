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
    p.add_argument("--config", metavar="FILE", help="TOML or JSON config (presets live in configs/); "
                   "defaults are used for keys it leaves out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.steps=500 (repeatable; checked against the "
                        "key's type; run `dmmd train --dry-run` to see every key)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmmd", description="Diffusion MMD gradient flow (DMMD): train a "
                                     "noise-conditional MMD discriminator and generate by its gradient flow.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a discriminator (Algorithm 1) into a run folder",
                       description="Train DMMD's discriminator (or, with --set method=ddpm, the DDPM baseline on the "
                       "same backbone). Writes RUN/config.json, RUN/log.txt, "
                       "RUN/metrics.jsonl and RUN/checkpoints/, with RUN/latest naming the newest checkpoint.")
    _add_config_args(t)
    t.add_argument("--out", metavar="DIR", help="run folder (default: runs/NNNNN-<data>-<method>)")
    t.add_argument("--seed", type=int, help="random seed (overrides the config's seed)")
    t.add_argument("--method", choices=("dmmd", "ddpm"), help="dmmd (default) or the DDPM baseline on the same "
                   "backbone (epsilon prediction; samples with sample.sampler = ddpm or ddim)")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint "
                   "(its config.json is used; --set may change train.steps)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="generate samples (Algorithm 2) from a checkpoint",
                       description="Move particles from noise along the trained MMD gradient flow. Writes "
                       "OUT/samples.npz (array 'samples', in data space), OUT/samples.png (an image grid or a "
                       "scatter plot) and OUT/diversity.json.")
    s.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file or run folder")
    s.add_argument("--sampler", choices=("exact", "approx", "kale", "ddpm", "ddim"),
                   help="DMMD: exact (interacting particles, any kernel), approx (independent particles, linear "
                        "kernel), kale (ascend the KALE critic); DDPM baseline: ddpm (ancestral) or ddim, with "
                        "sample.num_steps evaluations (default: the checkpoint's sample.sampler)")
    s.add_argument("--num-samples", type=int, default=100, help="number of samples (default 100)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed; sample i depends only on (seed, i) for the "
                   "approx and kale samplers (default 0)")
    s.add_argument("--batch-size", type=int, default=4096, help="particles moved together by the approx and "
                   "kale samplers (the exact sampler moves all of them as one population)")
    s.add_argument("--out", metavar="DIR", help="output folder (default: RUN/samples-<sampler>-seed<seed>)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sample.* setting, e.g. --set sample.step_size=0.05")
    s.add_argument("--device", default="auto", help="auto (CUDA when available, default), cpu, cuda or cuda:N; "
                   "samples are the same draws on every device (noise is drawn on the CPU)")
    s.add_argument("--compile", action="store_true", help="torch.compile the network first (pays off for long "
                   "runs on a GPU; the first steps are slower while it compiles)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = sub.add_parser("calibrate", help="store level statistics and a mean-field replay for sampler settings",
                       description="Compute, from the training data, what the approx sampler needs for the given "
                       "sample.* settings (level mean features; the replay trajectory of reading (c)) and store it "
                       "in the checkpoint.")
    c.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file or run folder")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="sample.* settings to calibrate for, e.g. --set sample.num_levels=20")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    m = sub.add_parser("compare", help="DMMD vs a DDPM on the same backbone and budget, at several NFE",
                       description="Train DMMD and a DDPM baseline (same backbone and batch; same steps or same "
                       "wall-clock), sample both at each NFE, score against held-out data (FD-digits on digits), "
                       "and write OUT/compare.md, OUT/compare.json, OUT/metric_vs_nfe.png and sample pictures; "
                       "plus DMMD sampler ablations. DMMD's sampler settings are also tuned per NFE on the "
                       "training split (rows 'dmmd tuned'); the table reports held-out scores only.")
    _add_config_args(m)
    m.add_argument("--out", metavar="DIR", default="runs/compare", help="output folder (default runs/compare)")
    m.add_argument("--nfe", default="10,20,50,100", help="comma-separated NFE values (default 10,20,50,100)")
    m.add_argument("--num-samples", type=int, default=1000, help="samples per row (default 1000)")
    m.add_argument("--kernels", default="", help="also train DMMD with these base kernels (e.g. rq,rbf) for the "
                   "kernel ablation")
    m.add_argument("--budget", choices=("steps", "time"), default="steps",
                   help="steps: both train for train.steps (default); time: DDPM trains for as many seconds as "
                   "DMMD took")
    m.add_argument("--no-tune", action="store_true", help="skip the per-NFE tuning of DMMD's sampler settings "
                   "(T x N_s split, step size, re-noise; and kernel_step_size for --kernels)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")

    st = sub.add_parser("study", help="reproduce the paper's studies (kernel-width, flows, pictures, optimal-width)",
                        description="Run a study module; arguments after the name go to it (see `dmmd study NAME "
                        "--help`). docs/studies.md and docs/optimal_width.md describe them.")
    st.add_argument("name", choices=sorted(STUDIES), help="which study")
    st.add_argument("args", nargs=argparse.REMAINDER, help="the study's own arguments, e.g. --out DIR --quick")

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


def _next_run_dir(cfg) -> Path:
    root = Path("runs")
    numbers = [int(p.name.split("-")[0]) for p in root.glob("[0-9]" * 5 + "-*")] if root.is_dir() else []
    return root / f"{max(numbers, default=0) + 1:05d}-{cfg.data.name}-{cfg.method}"


def cmd_train(args) -> int:
    from . import config
    from .data.datasets import load_dataset
    from .training import train

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file():
            raise config.ConfigError(f"{run_dir} is not a run folder (no config.json); pass the folder `dmmd train` wrote")
        cfg = config.load(run_dir / "config.json", args.overrides)
    else:
        overrides = list(args.overrides)
        if args.method:
            overrides.insert(0, f"method={args.method}")
            if args.method == "ddpm" and not any(o.strip().startswith("sample.sampler=") for o in overrides):
                overrides.insert(1, "sample.sampler=ddpm")
        cfg = config.load(args.config, overrides)
        if args.seed is not None:
            config.set_value(cfg, "seed", args.seed)
    if args.dry_run:
        print(config.to_json(cfg))
        return 0
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 checks and prints
    if not args.resume:
        run_dir = Path(args.out) if args.out else _next_run_dir(cfg)
        if main_rank and (run_dir / "config.json").exists():
            raise config.ConfigError(f"{run_dir} already holds a run: pass --resume {run_dir} or choose another --out")
    data = load_dataset(cfg.data, cfg.seed)
    if main_rank:
        print(f"run folder: {run_dir}")
    train(cfg, data.train, run_dir, resume=bool(args.resume), progress=not args.no_progress, echo=print,
          stream=data.stream, val_data=data.test)
    return 0


def _sample_config(args, cfg):
    from . import config

    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith("sample."):
            raise config.ConfigError(f"only sample.* keys can be changed at sampling time, got {key!r}")
    for item in args.overrides:
        key, _, value = item.partition("=")
        config.set_value(cfg, key.strip(), value.strip())
    if getattr(args, "sampler", None):
        cfg.sample.sampler = args.sampler
    config.validate(cfg)
    return cfg


def cmd_sample(args) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .checkpoint import atomic_write_bytes, atomic_write_text
    from .config import ConfigError
    from .data.datasets import DataError, load_dataset, to_data_space
    from .device import prepare_model, resolve_device
    from .pipeline import build_process, check_sampler, load_model, sample
    from .plotting import save_samples_picture
    from .report import sample_report

    if args.num_samples < 1 or args.batch_size < 1:
        raise ConfigError("--num-samples and --batch-size must be >= 1")
    device = resolve_device(args.device)
    cfg, disc, stats, payload = load_model(args.checkpoint, device)
    cfg = _sample_config(args, cfg)
    prepare_model(disc, cfg.train.channels_last, args.compile)
    if cfg.sample.sampler == "exact" and args.num_samples < 2:
        raise ConfigError("the exact sampler moves a population: --num-samples must be >= 2")
    shape = tuple(payload["data_shape"])
    process = build_process(cfg.process)
    data = None
    try:
        data = load_dataset(cfg.data, cfg.seed)
    except DataError as err:
        if cfg.sample.sampler == "exact" and cfg.model.kernel != "linear":
            raise
        print(f"note: training data unavailable ({err}); diversity diagnostics skipped", file=sys.stderr)
    reference = None
    if data is not None and cfg.sample.sampler == "exact" and cfg.model.kernel != "linear":
        reference = data.train[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[
            : cfg.sample.num_reference]].to(device)
    check_sampler(disc, cfg, stats, reference)
    run = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent.parent
    out = Path(args.out) if args.out else run / f"samples-{cfg.sample.sampler}-seed{args.seed}"
    started = time.time()
    batch = args.num_samples if cfg.sample.sampler == "exact" else args.batch_size
    chunks = []
    nfe = cfg.sample.num_steps if cfg.method == "ddpm" else cfg.sample.num_levels * cfg.sample.steps_per_level
    with tqdm(total=nfe * -(-args.num_samples // batch),
              desc="sample", disable=args.no_progress, dynamic_ncols=True) as bar:
        for start in range(0, args.num_samples, batch):
            n = min(batch, args.num_samples - start)
            chunks.append(sample(disc, cfg, stats, process, shape, n, args.seed, reference, start=start,
                                 device=device, progress=bar).cpu())
    z = torch.cat(chunks)
    elapsed = time.time() - started
    if not torch.isfinite(z).all():
        print("warning: some samples are not finite; lower sample.step_size", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    samples = to_data_space(cfg.data.name, z).numpy()

    def write_npz(fh):
        np.savez(fh, samples=samples)

    atomic_write_bytes(out / "samples.npz", write_npz)
    picture = out / "samples.png"
    kind = data.kind if data is not None else ("image" if len(shape) == 3 else "points")
    save_samples_picture(picture, z.numpy(), kind, data.test.numpy() if data is not None and kind == "points" else None,
                         title=f"{cfg.sample.sampler} sampler, {len(z)} samples")
    report = {"sampler": cfg.sample.sampler, "settings": cfg.sample.__dict__, "num_samples": len(z),
              "seconds": round(elapsed, 3), "nfe": nfe}
    if data is not None:
        report["diversity"] = sample_report(z, data)
    atomic_write_text(out / "diversity.json", json.dumps(report, indent=2) + "\n")
    print(f"{len(z)} samples in {elapsed:.1f} s -> {out / 'samples.npz'}")
    print(f"picture: {picture}")
    return 0


def cmd_calibrate(args) -> int:
    from tqdm.auto import tqdm

    from . import checkpoint as ckpt
    from .data.datasets import load_dataset
    from .pipeline import build_process, calibrate, flow_settings, load_model

    cfg, disc, stats, payload = load_model(args.checkpoint)
    cfg = _sample_config(args, cfg)
    data = load_dataset(cfg.data, cfg.seed)
    settings = flow_settings(cfg.sample)
    with tqdm(total=settings.num_steps, desc="calibrate", disable=args.no_progress) as bar:
        payload["stats"] = calibrate(disc, cfg, data.train, build_process(cfg.process), stats, settings, bar)
    path = ckpt.resolve(args.checkpoint)
    payload["config"] = json.dumps(payload["config"])
    ckpt.save(path, {k: v for k, v in payload.items() if k not in ("format", "version")})
    print(f"stored statistics for {settings.tag()} in {path}")
    return 0


def cmd_compare(args) -> int:
    from . import config
    from .compare import run_compare
    from .data.datasets import load_dataset

    cfg = config.load(args.config or "configs/digits.toml", args.overrides)
    if cfg.method != "dmmd":
        raise config.ConfigError("dmmd compare trains both methods: leave method = 'dmmd' in the config")
    try:
        nfes = tuple(int(v) for v in args.nfe.split(",") if v.strip())
    except ValueError:
        raise config.ConfigError(f"--nfe expects comma-separated integers, got {args.nfe!r}") from None
    if not nfes or min(nfes) < 1 or args.num_samples < 2:
        raise config.ConfigError("--nfe values must be >= 1 and --num-samples >= 2")
    kernels = tuple(k.strip() for k in args.kernels.split(",") if k.strip())
    bad = [k for k in kernels if k not in config.CHOICES["model.kernel"]]
    if bad:
        raise config.ConfigError(f"unknown kernels {bad}; choose from {', '.join(config.CHOICES['model.kernel'])}")
    data = load_dataset(cfg.data, cfg.seed)
    result = run_compare(cfg, data, Path(args.out), nfes, args.num_samples, kernels, progress=not args.no_progress,
                         budget=args.budget, tune=not args.no_tune)
    print((Path(args.out) / "compare.md").read_text())
    print(f"wrote {Path(args.out) / 'compare.json'} and pictures; training seconds {result['train_seconds']}")
    return 0


def cmd_study(args) -> int:
    import importlib

    module = importlib.import_module(f".studies.{STUDIES[args.name]}", __package__)
    return int(module.main(args.args) or 0)


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
    from .training import TrainingDiverged

    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "sample": cmd_sample, "calibrate": cmd_calibrate, "evaluate": cmd_evaluate,
                "compare": cmd_compare, "study": cmd_study}
    try:
        return handlers[args.command](args)
    except (ConfigError, DataError, CheckpointError, SamplerMismatch, TrainingDiverged) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
