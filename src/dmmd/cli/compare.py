"""`dmmd compare`: DMMD against DDPM and flow matching on one backbone at an equal CPU budget."""

from __future__ import annotations

from pathlib import Path

from dmmd import config
from dmmd.apps.compare import METHODS, run_compare
from dmmd.cli.common import add_config_args, config_source
from dmmd.data.datasets import load_dataset
from dmmd.runtime.runfolder import check_output_dir, enter, hold


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="DMMD vs DDPM vs flow matching: same backbone, equal CPU budget, NFE 10-100",
                       description="Train DMMD, a DDPM (epsilon prediction, x0 clipped for bounded data) and flow "
                       "matching (rectified flow) from one config: same backbone, optimiser, batch, EMA and data, "
                       "each for the same CPU-time budget at one thread (wall time reported beside it). At each "
                       "fraction of the budget in --points, every method samples at every NFE with each of its "
                       "sampler settings (the same number per method), chosen on the training split and reported "
                       "on held-out data (FD-digits / FD-fashion in the shipped classifiers' features). Writes "
                       "OUT/compare.md, OUT/compare.json, OUT/metric_vs_nfe.png and labelled sample grids.")
    add_config_args(p)
    p.add_argument("--out", metavar="DIR", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--nfe", default="10,20,50,100", help="comma-separated NFE values (default 10,20,50,100)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per cell (default 1000)")
    p.add_argument("--budget", type=float, default=300.0, help="training budget per method in CPU seconds at one "
                   "thread (default 300)")
    p.add_argument("--points", default="0.25,0.5,1", help="fractions of the budget at which every method is "
                   "scored, to show convergence (default 0.25,0.5,1)")
    p.add_argument("--methods", default="dmmd,ddpm,fm", help="comma-separated subset of dmmd, ddpm, fm")
    p.add_argument("--latent", metavar="AE", help="race in the latents of this autoencoder folder (written by "
                   "`dmmd train-autoencoder`; same as --set model.latent=AE): every method trains on the encoded "
                   "data with the MLP, samples are decoded and scored in pixels beside the reconstruction floor")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    overrides = [*args.overrides, f"model.latent={args.latent}"] if args.latent else args.overrides
    cfg = config.load(config_source(args, default="digits"), overrides)
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
    result = run_compare(cfg, data, out, nfes, args.num_samples, args.budget, points, methods,
                         progress=not args.no_progress)
    print((Path(args.out) / "compare.md").read_text())
    for line in result["verdict"]:  # the table's verdict again, last, where a reader looks
        print(line)
    print(f"wrote {Path(args.out) / 'compare.json'} and pictures")
    return 0
