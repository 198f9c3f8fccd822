"""Cost of one sampler step (Algorithm 2) against the floor of one network gradient.

    python benchmarks/sampler_cost.py [--quick] [--unet] [--out benchmarks/results/sampler_cost.json]

The measure is CPU time (time.process_time) at one thread; wall-clock seconds are recorded beside
(see _timing.py). Every variant runs at least 5 rounds; tables give median (min-max) and verdicts
are taken on medians.

Network: the digits preset's discriminator (configs/digits.toml: FeatureMLP 64 -> 128 features,
width 256, depth 3, linear kernel), random weights, eval mode with requires_grad_(False) as after
`load_model`. A sampler step costs the same for trained and untrained weights. Statistics
(mu_data, noised means, replay means) are random (D,) vectors: a step only reads them.

What is measured (CPU seconds per call; ratios are paired within one run, see _timing.py):

  floor        one forward plus one input-gradient backward of phi at the same batch and level:
               torch.autograd.grad(<phi(z, t), v>.sum(), z) (also with phi(z, t).sum()).
  approx       one step of `approx_flow` (one level, one step, noise off: inject = renoise = 0),
               reading (b) data_noised and reading (c) replay.
               Target: approx step <= 1.10 x floor.
  exact lin    one step of `exact_flow` with the linear kernel, N <= chunk_size (one pass).
               Target: exact linear step <= 1.15 x approx step (same batch).
  exact rbf    one step of `exact_flow` with the RBF kernel against M reference features, as N
               grows: O(N^2 D) kernel work, plus a no-grad population pass once N > chunk_size.
               Reported as a table (no target).
  scaling      approx step (reading (b)) for N = 256 ... 16384: least-squares slope of log time
               on log N. Target: 0.9 <= slope <= 1.1.
  noise        one draw of `ParticleNoise` (batched: one generator per aligned block of
               indices) against the per-particle scheme it replaced (one torch.Generator per
               particle, a Python loop; kept below as PerParticleNoise), a batched torch.randn
               of the same size (one generator) as the lower bound, and an approx step with
               inject = 0.1 over the same step with noise off. No target.
  ddpm 10k     the whole DDPM sampler of the digits preset's baseline (method = ddpm, its
               epsilon MLP, random weights) for 10,000 samples at NFE 100 through
               dmmd.methods.sample.sample, the per-step noise included: with ParticleNoise against the
               same call with the old per-particle noise swapped in. Target: at least 20% less
               CPU time (1 - new / old >= 0.20). Whole runs of many seconds: no warm-up call.
               Flow matching's Euler sampler (method = fm, noise only in the prior) on the same
               MLP is timed beside at NFE 10 and compared per NFE (no target).
  exact 10k    exact linear sampler against the approximate one (reading (c) replay) at 10,000
               particles, chunk_size 1024, one level of 3 steps: the exact sampler keeps every
               chunk's graph (one forward per particle per step); the two-pass path it replaced
               (graph_budget_mb = 0: a no-grad population pass first) is timed beside.
               Target: exact / approx <= 1.10. Also: the digits preset's whole DMMD run per NFE
               (approx step at 10k plus its 9 re-noising draws per 100 steps) against DDPM's.
  --unet       the same floor / approx / exact-linear ratios for a small U-Net on 3x32x32
               (base_channels 32, channel_mults [1, 2, 2], one res block, attention at 16).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (
    MIN_ROUNDS,
    environment,
    fmt_spread,
    interleaved,
    loglog_slope,
    median,
    paired,
    paired_ratio,
    ratio_spread,
    single_thread,
    spread,
    table,
    verdict,
)

from dmmd.config import load
from dmmd.math.noising import time_grid
from dmmd.methods import sample as pipeline
from dmmd.methods.build import build_model, build_process
from dmmd.methods.discriminator import build_discriminator
from dmmd.methods.mmd_flow import FlowSettings, ParticleNoise, approx_flow, exact_flow
from dmmd.runtime.checkpoint import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
APPROX_TARGET, EXACT_TARGET, SLOPE_RANGE = 1.10, 1.15, (0.9, 1.1)
EXACT_10K_TARGET, DDPM_SAVING_TARGET = 1.10, 0.20


class PerParticleNoise:
    """The per-particle noise that ParticleNoise replaced (verbatim but for the name): particle
    start + i draws from its own generator, a Python loop over particles per draw. Kept here
    for the before / after ratio of the DDPM sampler."""

    _SEED_STRIDE = 1_000_003

    def __init__(self, seed, num, shape, start=0, device="cpu", dtype=torch.float32):
        self.shape, self.device, self.dtype = tuple(shape), device, dtype
        self.generators = [torch.Generator().manual_seed(seed * self._SEED_STRIDE + start + i) for i in range(num)]

    def draw(self):
        out = torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
        return out.to(device=self.device, dtype=self.dtype)

    def prior(self, process):
        out = torch.cat([process.prior((1, *self.shape), generator=g) for g in self.generators])
        return out.to(device=self.device, dtype=self.dtype)


def _model(overrides: list[str], shape: tuple[int, ...]):
    cfg = load(ROOT / "configs" / "digits.toml", overrides)
    disc = build_discriminator(cfg.model, shape)
    disc.eval().requires_grad_(False)
    return cfg, disc


def _stats(disc, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = disc.feature_dim
    data_mean, noised, replay = (0.1 * torch.randn(1, d, generator=g) for _ in range(3))
    return data_mean, noised, replay


def _variants(disc, process, shape, n, chunk_size, with_exact=True, with_noise=False):
    """Closures of one step each, at batch n, on the single level t_max."""
    grid = time_grid(process, 1)
    t = float(grid[0])
    data_mean, noised, replay = _stats(disc)
    v = data_mean[0] - noised[0]
    z = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))
    off = FlowSettings(num_levels=1, steps_per_level=1, step_size=0.1, inject=0.0, renoise=0.0,
                       chunk_size=chunk_size)

    def floor_dot():
        zc = z.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad((disc.features(zc, t) @ v).sum(), zc)[0]

    def floor_sum():
        zc = z.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(disc.features(zc, t).sum(), zc)[0]

    out = {
        "floor": floor_dot,
        "floor_sum": floor_sum,
        "approx_noised": lambda: approx_flow(disc, z, grid, off, process, data_mean, noised),
        "approx_replay": lambda: approx_flow(disc, z, grid, off, process, data_mean, replay, per_step=True),
    }
    if with_exact:
        out["exact_linear"] = lambda: exact_flow(disc, z, grid, off, process, data_mean)[0]
    if with_noise:
        noise = ParticleNoise(0, n, shape)
        on = replace(off, inject=0.1)
        out["approx_inject"] = lambda: approx_flow(disc, z, grid, on, process, data_mean, noised, noise=noise)
        out["noise_draw"] = noise.draw
        gen = torch.Generator().manual_seed(0)
        out["batched_randn"] = lambda: torch.randn(n, *shape, generator=gen)
    return out


def step_cost(disc, process, shape, sizes, chunk_size, repeats, warmup, min_time, label):
    rows, records = [], []
    for n in sizes:
        wall: dict = {}
        times = interleaved(_variants(disc, process, shape, n, chunk_size, with_exact=n <= chunk_size),
                            repeats, warmup, min_time, wall=wall)
        rec = {"model": label, "n": n, "median_s": {k: median(v) for k, v in times.items()}, "times_s": times,
               "spread_s": {k: spread(v) for k, v in times.items()}, "wall_median_s": {k: median(v) for k, v in wall.items()},
               "approx_over_floor": paired_ratio(times, "approx_noised", "floor"),
               "approx_over_floor_spread": ratio_spread(times, "approx_noised", "floor"),
               "replay_over_floor": paired_ratio(times, "approx_replay", "floor"),
               "floor_sum_over_floor": paired_ratio(times, "floor_sum", "floor")}
        if "exact_linear" in times:
            rec["exact_over_approx"] = paired_ratio(times, "exact_linear", "approx_noised")
            rec["exact_over_approx_spread"] = ratio_spread(times, "exact_linear", "approx_noised")
        records.append(rec)
        sp = rec["spread_s"]
        rows.append([label, n, fmt_spread(sp["floor"], 1e3), fmt_spread(sp["approx_noised"], 1e3),
                     fmt_spread(sp["exact_linear"], 1e3) if "exact_linear" in sp else "-", rec["approx_over_floor"],
                     rec["replay_over_floor"], rec.get("exact_over_approx", float("nan"))])
        print(f"  {label} N={n}: approx/floor {rec['approx_over_floor']:.3f}", flush=True)
    return records, rows


def scaling(disc, process, shape, sizes, chunk_size, repeats, warmup, min_time):
    variants = {}
    for n in sizes:
        v = _variants(disc, process, shape, n, chunk_size, with_exact=False)
        variants[f"approx_{n}"] = v["approx_noised"]
    times = interleaved(variants, repeats, warmup, min_time)
    med = [median(times[f"approx_{n}"]) for n in sizes]
    slope = loglog_slope(sizes, med)
    # per-round slopes: how much the load moved the estimate
    per_round = [loglog_slope(sizes, [times[f"approx_{n}"][r] for n in sizes]) for r in range(repeats)]
    return {"sizes": sizes, "median_s": med, "slope": slope, "slope_per_round_min": min(per_round),
            "slope_per_round_max": max(per_round), "slope_upper_half": loglog_slope(sizes[len(sizes) // 2:], med[len(sizes) // 2:]),
            "times_s": times}


def rbf_cost(process, shape, sizes, num_reference, chunk_size, repeats, warmup, min_time):
    _, disc = _model(["model.kernel=rbf", "sample.sampler=exact"], shape)
    _, lin = _model([], shape)
    grid = time_grid(process, 1)
    g = torch.Generator().manual_seed(2)
    ref = 0.1 * torch.randn(1, num_reference, disc.feature_dim, generator=g)
    data_mean = ref.mean(1)
    off = FlowSettings(num_levels=1, steps_per_level=1, step_size=0.1, chunk_size=chunk_size)
    variants = {}
    for n in sizes:
        z = torch.randn(n, *shape, generator=g)
        variants[f"rbf_{n}"] = lambda z=z: exact_flow(disc, z, grid, off, process, ref)[0]
        variants[f"linear_{n}"] = lambda z=z: exact_flow(lin, z, grid, off, process, data_mean)[0]
    times = interleaved(variants, repeats, warmup, min_time)
    rbf = [median(times[f"rbf_{n}"]) for n in sizes]
    linear = [median(times[f"linear_{n}"]) for n in sizes]
    return {"sizes": sizes, "num_reference": num_reference, "rbf_median_s": rbf, "linear_median_s": linear,
            "rbf_slope": loglog_slope(sizes, rbf), "rbf_slope_upper_half": loglog_slope(sizes[len(sizes) // 2:], rbf[len(sizes) // 2:]),
            "linear_slope": loglog_slope(sizes, linear), "times_s": times}


def noise_cost(disc, process, shape, sizes, chunk_size, repeats, warmup, min_time):
    records = []
    for n in sizes:
        v = _variants(disc, process, shape, n, chunk_size, with_exact=False, with_noise=True)
        old = PerParticleNoise(0, n, shape)
        v["old_draw"] = old.draw
        v["build_new"] = lambda n=n: ParticleNoise(0, n, shape)
        v["build_old"] = lambda n=n: PerParticleNoise(0, n, shape)
        keys = ("approx_noised", "approx_inject", "noise_draw", "old_draw", "batched_randn", "build_new", "build_old")
        times = interleaved({k: v[k] for k in keys}, repeats, warmup, min_time)
        draw = median(times["noise_draw"])
        records.append({"n": n, "median_s": {k: median(x) for k, x in times.items()},
                        "spread_s": {k: spread(x) for k, x in times.items()},
                        "inject_over_off": paired_ratio(times, "approx_inject", "approx_noised"),
                        "draw_over_step": paired_ratio(times, "noise_draw", "approx_noised"),
                        "draw_over_batched_randn": paired_ratio(times, "noise_draw", "batched_randn"),
                        "old_draw_over_new": paired_ratio(times, "old_draw", "noise_draw"),
                        "draw_per_particle_us": 1e6 * draw / n, "times_s": times})
        print(f"  noise N={n}: old draw / new draw {records[-1]['old_draw_over_new']:.1f}", flush=True)
    return records


def ddpm_sampling(num, nfe, fm_nfe, repeats, warmup, quick):
    """DDPM (and flow matching) sampling of `num` digits-preset samples through dmmd.methods.sample.sample:
    the batched ParticleNoise against the per-particle one swapped in (CPU s per whole run). Flow
    matching runs fm_nfe evaluations (its cost per NFE is what is compared: noise only in its prior)."""
    shape = (64,)
    variants = {}
    for method, sampler, steps in (("ddpm", "ddpm", nfe), ("fm", "euler", fm_nfe)):
        extra = [f"method={method}", f"sample.sampler={sampler}", f"sample.num_steps={steps}"]
        if quick:
            extra.append("model.width=64")
        cfg = load(ROOT / "configs" / "digits.toml", extra)
        torch.manual_seed(0)
        net = build_model(cfg, shape).eval().requires_grad_(False)
        process = build_process(cfg.process)

        def run(cfg=cfg, net=net, process=process):
            return pipeline.sample(net, cfg, {}, process, shape, num, seed=0)

        def run_old(run=run):
            pipeline.ParticleNoise = PerParticleNoise
            try:
                return run()
            finally:
                pipeline.ParticleNoise = ParticleNoise

        variants[f"{method}_new"] = run
        if method == "ddpm":
            variants["ddpm_old"] = run_old
    wall: dict = {}
    times = interleaved(variants, repeats, warmup, min_time=0.0, wall=wall)
    saving = [1 - a / b for a, b in zip(times["ddpm_new"], times["ddpm_old"])]
    out = {"num_samples": num, "nfe": nfe, "fm_nfe": fm_nfe, "spread_s": {k: spread(v) for k, v in times.items()},
           "wall_spread_s": {k: spread(v) for k, v in wall.items()}, "times_s": times, "wall_s": wall,
           "ddpm_saving": spread(saving), "ddpm_old_over_new": paired(times, "ddpm_old", "ddpm_new"),
           "fm_over_ddpm_per_nfe": spread([a / fm_nfe / (b / nfe) for a, b in zip(times["fm_new"], times["ddpm_new"])])}
    print(f"  ddpm {num} samples NFE {nfe}: CPU saving {out['ddpm_saving']['median']:.3f}", flush=True)
    return out


def exact_vs_approx(disc, process, shape, n, chunk_size, steps, repeats, warmup, draw_s=None):
    """Exact linear (one pass), exact two-pass and approx (replay) samplers at n particles."""
    grid = time_grid(process, 1)
    data_mean, _, _ = _stats(disc)
    replay = 0.1 * torch.randn(steps, disc.feature_dim, generator=torch.Generator().manual_seed(3))
    z = torch.randn(n, *shape, generator=torch.Generator().manual_seed(4))
    one = FlowSettings(num_levels=1, steps_per_level=steps, step_size=0.1, chunk_size=chunk_size)
    two = replace(one, graph_budget_mb=0.0)
    variants = {"approx_replay": lambda: approx_flow(disc, z, grid, one, process, data_mean, replay, per_step=True),
                "exact_linear": lambda: exact_flow(disc, z, grid, one, process, data_mean)[0],
                "exact_two_pass": lambda: exact_flow(disc, z, grid, two, process, data_mean)[0]}
    wall: dict = {}
    times = interleaved(variants, repeats, warmup, min_time=0.0, wall=wall)
    out = {"n": n, "chunk_size": chunk_size, "steps": steps,
           "spread_s": {k: spread(v) for k, v in times.items()}, "wall_spread_s": {k: spread(v) for k, v in wall.items()},
           "exact_over_approx": paired(times, "exact_linear", "approx_replay"),
           "two_pass_over_approx": paired(times, "exact_two_pass", "approx_replay"),
           "wall_exact_over_approx": paired(wall, "exact_linear", "approx_replay"), "times_s": times, "wall_s": wall}
    print(f"  exact / approx at N={n}: {out['exact_over_approx']['median']:.3f} "
          f"(two-pass {out['two_pass_over_approx']['median']:.3f})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds: small sizes, few repeats")
    parser.add_argument("--unet", action="store_true", help="also the small U-Net on 3x32x32")
    parser.add_argument("--repeats", type=int, default=None, help=f"timed rounds (default {MIN_ROUNDS}; --quick 3)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="FlowSettings.chunk_size (the presets' 1024)")
    parser.add_argument("--num-reference", type=int, default=2000, help="exact RBF: reference features M")
    parser.add_argument("--particles", type=int, default=10_000, help="DDPM sampling and exact vs approx: samples")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: CPU time then measures the computation; "
                             "0 keeps torch's default)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampler_cost.json"))
    args = parser.parse_args()
    if args.threads == 1:
        single_thread()
    elif args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    q = args.quick
    repeats = args.repeats or (3 if q else MIN_ROUNDS)
    if not q and repeats < MIN_ROUNDS:
        parser.error(f"--repeats must be at least {MIN_ROUNDS} for a judged run")
    warmup, min_time = (1, 0.005) if q else (2, 0.05)
    step_sizes = [128] if q else [64, 256, 1024]
    scale_sizes = [64, 128, 256] if q else [256, 512, 1024, 2048, 4096, 8192, 16384]
    rbf_sizes = [64, 128] if q else [256, 512, 1024, 2048, 4096, 8192]
    particles = 300 if q else args.particles
    noise_sizes = [128] if q else [256, 1024, 4096, particles]

    cfg, disc = _model([], (64,))
    process = build_process(cfg.process)
    s = cfg.sample
    result = {"benchmark": "sampler_cost", "quick": q, "environment": environment(), "repeats": repeats,
              "measure": "CPU seconds (time.process_time) at one thread; wall seconds beside",
              "chunk_size": args.chunk_size, "model": "digits preset FeatureMLP (64 -> 128, width 256, depth 3)",
              "targets": {"approx_over_floor_max": APPROX_TARGET, "exact_over_approx_max": EXACT_TARGET,
                          "approx_slope_range": SLOPE_RANGE, "exact_over_approx_10k_max": EXACT_10K_TARGET,
                          "ddpm_noise_saving_min": DDPM_SAVING_TARGET}}

    print("step cost over the floor (MLP)", flush=True)
    # milliseconds a call, ratios near 1 judged against 1.10-1.15, per-round CPU-time noise of
    # +-15% on the shared machine: 31 rounds (seconds) steady the medians (5 rounds flipped verdicts)
    steps, rows = step_cost(disc, process, (64,), step_sizes, args.chunk_size, repeats if q else max(repeats, 31),
                            warmup, min_time if q else 0.1, "mlp")
    if args.unet:
        print("step cost over the floor (U-Net)", flush=True)
        _, unet = _model(["model.backbone=unet", "model.base_channels=32", "model.channel_mults=[1,2,2]",
                          "model.num_res_blocks=1", "model.attn_resolutions=[16]", "model.head=flatten"], (3, 32, 32))
        u_steps, u_rows = step_cost(unet, process, (3, 32, 32), [4] if q else [32, 128], args.chunk_size,
                                    repeats, 1, min_time, "unet32")
        steps += u_steps
        rows += u_rows
    result["step_cost"] = steps

    print("approx sampler vs N", flush=True)
    result["scaling"] = scaling(disc, process, (64,), scale_sizes, args.chunk_size, repeats, warmup, 2 * min_time)
    print("exact RBF vs N", flush=True)
    result["exact_rbf"] = rbf_cost(process, (64,), rbf_sizes, 200 if q else args.num_reference, args.chunk_size,
                                   repeats, 1, min_time)
    print(f"exact vs approx at N = {particles}", flush=True)
    result["exact_10k"] = exact_vs_approx(disc, process, (64,), particles, args.chunk_size if not q else 128,
                                          2 if q else 3, repeats if q else max(repeats, 7), 1)
    print("per-particle noise", flush=True)
    result["noise"] = noise_cost(disc, process, (64,), noise_sizes, args.chunk_size, repeats, warmup, min_time)
    print(f"DDPM sampling of {particles} digits", flush=True)
    nfe = 10 if q else 100
    result["ddpm_sampling"] = ddpm_sampling(particles, nfe, 5 if q else 10, repeats, 0 if not q else 1, q)

    # the digits preset's whole DMMD run per NFE: approx step + its noise draws, against DDPM's
    draws = (s.num_levels - 1) * (s.renoise > 0) + s.num_levels * s.steps_per_level * (s.inject > 0)
    nsteps = s.num_levels * s.steps_per_level
    ex, big_noise = result["exact_10k"], result["noise"][-1]
    approx_step = ex["spread_s"]["approx_replay"]["median"] / ex["steps"]
    dmmd_per_nfe = approx_step + draws / nsteps * big_noise["median_s"]["noise_draw"]
    ddpm_per_nfe = result["ddpm_sampling"]["spread_s"]["ddpm_new"]["median"] / nfe
    fm_per_nfe = result["ddpm_sampling"]["spread_s"]["fm_new"]["median"] / result["ddpm_sampling"]["fm_nfe"]
    result["per_nfe"] = {"n": particles, "draws_per_run": draws, "steps_per_run": nsteps, "inject": s.inject,
                         "renoise": s.renoise, "dmmd_approx_s": dmmd_per_nfe, "ddpm_s": ddpm_per_nfe, "fm_s": fm_per_nfe,
                         "dmmd_over_ddpm": dmmd_per_nfe / ddpm_per_nfe}

    main_rec = next(r for r in steps if r["model"] == "mlp" and r["n"] == max(n for n in step_sizes if n <= args.chunk_size))
    sc = result["scaling"]
    saving = result["ddpm_sampling"]["ddpm_saving"]["median"]
    result["verdicts"] = {
        "approx_over_floor": {"n": main_rec["n"], "value": main_rec["approx_over_floor"],
                              "verdict": verdict(main_rec["approx_over_floor"], hi=APPROX_TARGET)},
        "exact_over_approx": {"n": main_rec["n"], "value": main_rec["exact_over_approx"],
                              "verdict": verdict(main_rec["exact_over_approx"], hi=EXACT_TARGET)},
        "approx_slope": {"value": sc["slope"], "verdict": verdict(sc["slope"], *SLOPE_RANGE)},
        "exact_over_approx_10k": {"n": particles, "value": ex["exact_over_approx"]["median"],
                                  "min": ex["exact_over_approx"]["min"], "max": ex["exact_over_approx"]["max"],
                                  "verdict": verdict(ex["exact_over_approx"]["median"], hi=EXACT_10K_TARGET)},
        "ddpm_noise_saving": {"n": particles, "nfe": nfe, "value": saving,
                              "min": result["ddpm_sampling"]["ddpm_saving"]["min"],
                              "max": result["ddpm_sampling"]["ddpm_saving"]["max"],
                              "verdict": verdict(saving, lo=DDPM_SAVING_TARGET)},
    }

    if q:  # tiny sizes, where fixed per-call costs dominate: a smoke test, not a measurement
        for v in result["verdicts"].values():
            v["verdict"] = "not judged (--quick)"

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")

    print("\n### Step cost (CPU ms per step, median (min-max); ratios = median of paired per-round ratios)\n")
    print(table(["model", "N", "floor ms", "approx ms", "exact lin ms", "approx/floor", "replay/floor",
                 "exact/approx"], rows))
    print("\n### Approximate sampler vs N (reading (b), noise off)\n")
    print(table(["N", "ms", "us / particle"], [[n, 1e3 * t, 1e6 * t / n] for n, t in zip(sc["sizes"], sc["median_s"])]))
    print(f"\nlog-log slope {sc['slope']:.3f} (per-round {sc['slope_per_round_min']:.3f}..{sc['slope_per_round_max']:.3f}; "
          f"upper half {sc['slope_upper_half']:.3f})")
    rb = result["exact_rbf"]
    print(f"\n### Exact sampler vs N (M = {rb['num_reference']} reference features, chunk {args.chunk_size})\n")
    print(table(["N", "rbf ms", "linear ms", "rbf / linear"],
                [[n, 1e3 * a, 1e3 * b, a / b] for n, a, b in zip(rb["sizes"], rb["rbf_median_s"], rb["linear_median_s"])]))
    print(f"\nslopes: rbf {rb['rbf_slope']:.3f} (upper half {rb['rbf_slope_upper_half']:.3f}), linear {rb['linear_slope']:.3f}")
    print(f"\n### Exact vs approximate sampler at N = {particles} (chunk {ex['chunk_size']}, {ex['steps']} steps; "
          "CPU s per call, median (min-max))\n")
    print(table(["variant", "CPU s", "wall s (median)", "/ approx (paired)"],
                [[k, fmt_spread(ex["spread_s"][k]), ex["wall_spread_s"][k]["median"],
                  "-" if k == "approx_replay" else fmt_spread(paired(ex["times_s"], k, "approx_replay"))]
                 for k in ex["spread_s"]]))
    print("\n### Per-particle noise (one draw; CPU ms, median (min-max))\n")
    print(table(["N", "batched draw ms", "per-particle draw ms", "old / new", "batched randn ms", "new / randn",
                 "build new ms", "build old ms", "inject step / off step"],
                [[r["n"], fmt_spread(r["spread_s"]["noise_draw"], 1e3), fmt_spread(r["spread_s"]["old_draw"], 1e3),
                  r["old_draw_over_new"], 1e3 * r["median_s"]["batched_randn"], r["draw_over_batched_randn"],
                  1e3 * r["median_s"]["build_new"], 1e3 * r["median_s"]["build_old"], r["inject_over_off"]]
                 for r in result["noise"]]))
    dd = result["ddpm_sampling"]
    print(f"\n### Sampling {particles} digits at NFE {nfe} (flow matching: NFE {dd['fm_nfe']}) (dmmd.methods.sample.sample; "
          "CPU s per run, median (min-max))\n")
    print(table(["sampler", "CPU s", "wall s (median)"],
                [[k, fmt_spread(dd["spread_s"][k]), dd["wall_spread_s"][k]["median"]] for k in dd["spread_s"]]))
    print(f"\nDDPM CPU saving 1 - new / old: {fmt_spread(dd['ddpm_saving'])}; old / new {fmt_spread(dd['ddpm_old_over_new'])}")
    pn = result["per_nfe"]
    print(f"per NFE at N = {particles}: DMMD approx (preset noise) {1e3 * pn['dmmd_approx_s']:.1f} ms, "
          f"DDPM {1e3 * pn['ddpm_s']:.1f} ms, flow matching {1e3 * pn['fm_s']:.1f} ms; DMMD / DDPM {pn['dmmd_over_ddpm']:.2f}")
    print("\n### Targets (verdicts on medians)\n")
    for name, v in result["verdicts"].items():
        extra = f" (rounds {v['min']:.3f}..{v['max']:.3f})" if "min" in v else ""
        print(f"- {name}: {v['value']:.3f}{extra} -> {v['verdict']}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
