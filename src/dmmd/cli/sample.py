"""`dmmd sample`: samples from a checkpoint (Algorithm 2 for DMMD), with a picture and diagnostics."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dmmd.apps.pipeline import sample_folder_name
from dmmd.cli.common import bar_off, sample_config
from dmmd.config import ConfigError, check_flag
from dmmd.data.datasets import DataError, load_dataset
from dmmd.data.scaling import to_data_space
from dmmd.evaluation.plotting import save_png_folder, save_samples_picture
from dmmd.evaluation.report import (
    MAX_DIAGNOSED,
    REFERENCE_HELDOUT,
    REFERENCE_TRAIN,
    REPORT_STAGES,
    collapse_warning,
    sample_report,
)
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.conditional import model_classes, sample_labels
from dmmd.methods.latent import decode, encode_dataset, for_config
from dmmd.methods.resources import check_sampling
from dmmd.methods.sample import SamplerMismatch, calibrate, check_sampler, needs_calibration, sample
from dmmd.methods.sample import nfe as evaluations
from dmmd.runtime.checkpoint import atomic_write_bytes, atomic_write_text
from dmmd.runtime.device import prepare_model, resolve_device
from dmmd.runtime.runfolder import check_output_dir, check_outside_checkpoints, claim_output, publish


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate samples (Algorithm 2) from a checkpoint",
                       description="Move particles from noise along the trained MMD gradient flow. Writes "
                       "OUT/samples.npz (array 'samples', in data space), OUT/samples.png (an image grid or a "
                       "scatter plot) and OUT/diversity.json.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file or run folder")
    p.add_argument("--sampler", choices=("exact", "approx", "kale", "ddpm", "ddim", "euler", "heun"),
                   help="DMMD: exact (interacting particles, any kernel), approx (independent particles, linear "
                        "kernel), kale (ascend the KALE critic); DDPM baseline: ddpm (ancestral) or ddim; flow "
                        "matching: euler or heun (default: the checkpoint's sample.sampler)")
    p.add_argument("--nfe", type=int, metavar="N", help="network evaluations (sampling steps) for any method. "
                   "DMMD: N picks T x N_s (N levels of one step up to 20, else 10 levels of N/10 steps) and "
                   "scales the step size and re-noise by a measured rule (docs/sampling.md); DDPM/flow matching: "
                   "sample.num_steps = N. --set sample.* keys still override. Default: the checkpoint's settings")
    p.add_argument("--num-samples", type=int, default=100, help="number of samples (default 100)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; sample i depends only on (seed, i) for the "
                   "approx and kale samplers (default 0)")
    p.add_argument("--batch-size", type=int, default=4096, help="particles moved together by the approx and "
                   "kale samplers (the exact sampler moves all of them as one population)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN/samples-<sampler>-nfe<N>-seed<S>-<hash>, "
                   "the hash of every sample.* setting and the count: other settings never overwrite it)")
    p.add_argument("--png-dir", metavar="DIR", help="also write one PNG per sample into DIR (image data; the "
                   "folder layout FID tools such as clean-fid, pytorch-fid and torch-fidelity read)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sample.* setting, e.g. --set sample.step_size=0.05")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, default), cpu, cuda or cuda:N; "
                   "samples are the same draws on every device (noise is drawn on the CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network first (pays off for long "
                   "runs on a GPU; the first steps are slower while it compiles)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--class", dest="class_", metavar="K", help="a conditional model (model.conditional): samples of "
                   "class K, or 'all' (sample i gets class i mod C: an equal number per class when C divides "
                   "--num-samples); labels are saved as array 'y' in samples.npz. Default: unconditional")
    p.add_argument("--guidance", type=float, metavar="W", help="guidance weight of a conditional model (sets "
                   "sample.guidance; DMMD: mu(t,y) + W (mu(t,y) - mu(t,null)); flow matching and DDPM: "
                   "classifier-free guidance (1 + W) cond - W uncond; docs/conditional.md). Measured on "
                   "conditional digits, the largest weight without harm: DMMD 0.5 (near-copies from 1 up), flow "
                   "matching 1, DDPM 2; the command warns when the samples collapse")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the diversity figures of diversity.json "
                   "(nearest-neighbour distances against at most 5000 training and 2000 held-out rows; the held-out "
                   "side is cached in RUN/diagnostics/) and the collapse warning")


def run(args) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm


    if args.num_samples < 1 or args.batch_size < 1:
        raise ConfigError("--num-samples and --batch-size must be >= 1")
    check_flag("seed", args.seed)  # the rule of the config's seed
    device = resolve_device(args.device)
    cfg, disc, stats, payload = load_model(args.checkpoint, device)
    cfg = sample_config(args, cfg)

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
        check_outside_checkpoints(args.png_dir, "--png-dir")
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
        data = encode_dataset(data, ae, cfg.data, progress=not bar_off(args))
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
        with tqdm(total=flow_settings(cfg.sample).num_steps, desc="replay", disable=bar_off(args),
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
              desc="sample", disable=bar_off(args), dynamic_ncols=True) as bar:
        for start in range(0, args.num_samples, batch):
            n = min(batch, args.num_samples - start)
            chunks.append(sample(disc, cfg, stats, process, shape, n, args.seed, reference, start=start,
                                 device=device, progress=bar,
                                 labels=None if labels is None else labels[start:start + n]).cpu())
    z = torch.cat(chunks)
    if ae is not None:  # decoded: files, picture and diagnostics in pixel space as for any image model
        z, data, shape = decode(z, ae), pixels, ae.shape
    elapsed = time.time() - started
    bad = int((~torch.isfinite(z.flatten(1))).any(1).sum())
    if bad:
        print(f"warning: {bad} of {len(z)} samples hold NaN or Inf values (the flow diverged); lower "
              "sample.step_size", file=sys.stderr)
    samples = to_data_space(cfg.data, z).numpy()

    def write_npz(fh):
        np.savez(fh, samples=samples, **({} if labels is None else {"y": labels.numpy()}))

    atomic_write_bytes(staging / "samples.npz", write_npz)
    picture = out / "samples.png"
    kind = data.kind if data is not None else ("image" if len(shape) == 3 else "points")
    conditional = "" if labels is None else f", class {args.class_}, guidance {cfg.sample.guidance:g}"
    save_samples_picture(staging / picture.name, z.numpy(), kind, data.test.numpy() if data is not None and kind == "points" else None,
                         title=f"{cfg.method}, {cfg.sample.sampler} sampler, NFE {evaluations(cfg)}, seed {args.seed}"
                               + conditional + (f" (first 100 of {len(z)})" if kind == "image" and len(z) > 100 else ""))
    if args.png_dir:
        save_png_folder(args.png_dir, z.numpy())
        print(f"{len(z)} PNGs: {args.png_dir}")
    report = {"sampler": cfg.sample.sampler, "settings": cfg.sample.__dict__, "num_samples": len(z),
              "seconds": round(elapsed, 3), "nfe": nfe, **({} if labels is None else {"class": args.class_})}
    warning = None
    if data is not None and not args.no_diagnostics:
        print(f"diagnostics: nearest neighbours of {min(len(z), MAX_DIAGNOSED)} samples against at most "
              f"{REFERENCE_TRAIN} training and {REFERENCE_HELDOUT} held-out rows (--no-diagnostics skips them)",
              file=sys.stderr, flush=True)
        began, cpu = time.time(), time.process_time()
        cache = run / "diagnostics" if (run / "config.json").is_file() else None  # the held-out side, once per run
        with tqdm(total=REPORT_STAGES, desc="diagnostics", disable=bar_off(args), dynamic_ncols=True) as bar:
            report["diversity"] = sample_report(z, data, cache, bar)
        report["diagnostics_seconds"] = round(time.time() - began, 3)
        report["diagnostics_cpu_seconds"] = round(time.process_time() - cpu, 3)
        warning = collapse_warning(report["diversity"], cfg.method, nfe, None if labels is None else
                                   cfg.sample.guidance, one_class=labels is not None and args.class_ != "all")
    report["command_cpu_seconds"] = round(time.process_time(), 3)  # this process so far, imports included
    atomic_write_text(staging / "diversity.json", json.dumps(report, indent=2) + "\n")
    publish(staging)  # the three files replace OUT together
    print(f"{len(z)} samples in {elapsed:.1f} s -> {out / 'samples.npz'}")
    print(f"picture: {picture}")
    if warning:
        print(warning, file=sys.stderr)
    return 0


def disc_classes(model) -> int:
    return model_classes(model)
