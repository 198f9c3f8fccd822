"""Cost of one sampler step (Algorithm 2) against the floor of one network gradient.

    python benchmarks/sampler_cost.py [--quick] [--unet] [--out benchmarks/results/sampler_cost.json]

Network: the digits preset's discriminator (configs/digits.toml: FeatureMLP 64 -> 128 features,
width 256, depth 3, linear kernel), random weights, eval mode with requires_grad_(False) as after
`load_model`. A sampler step costs the same for trained and untrained weights. Statistics
(mu_data, noised means, replay means) are random (D,) vectors: a step only reads them.

What is measured (seconds per call; ratios are paired within one run, see _timing.py):

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
  noise        the per-particle noise of `ParticleNoise` (one torch.Generator per particle, a
               Python loop over particles per draw): cost of one draw, of an approx step with
               inject = 0.1 over the same step with noise off, of building the source, and a
               batched torch.randn of the same size (one generator) as the lower bound.
               No target: a known cost, quantified. Also given: the overhead it implies on a
               whole digits-preset run (renoise = 0.3: T - 1 = 9 draws in T N_s = 100 steps).
  --unet       the same floor / approx / exact-linear ratios for a small U-Net on 3x32x32
               (base_channels 32, channel_mults [1, 2, 2], one res block, attention at 16).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (
    environment,
    interleaved,
    loglog_slope,
    median,
    paired_ratio,
    ratio_spread,
    table,
    verdict,
)

from dmmd.config import load
from dmmd.discriminator import build_discriminator
from dmmd.noising import time_grid
from dmmd.pipeline import build_process
from dmmd.sampling import FlowSettings, ParticleNoise, approx_flow, exact_flow

ROOT = Path(__file__).resolve().parents[1]
APPROX_TARGET, EXACT_TARGET, SLOPE_RANGE = 1.10, 1.15, (0.9, 1.1)


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
        times = interleaved(_variants(disc, process, shape, n, chunk_size, with_exact=n <= chunk_size),
                            repeats, warmup, min_time)
        rec = {"model": label, "n": n, "median_s": {k: median(v) for k, v in times.items()}, "times_s": times,
               "approx_over_floor": paired_ratio(times, "approx_noised", "floor"),
               "approx_over_floor_spread": ratio_spread(times, "approx_noised", "floor"),
               "replay_over_floor": paired_ratio(times, "approx_replay", "floor"),
               "floor_sum_over_floor": paired_ratio(times, "floor_sum", "floor")}
        if "exact_linear" in times:
            rec["exact_over_approx"] = paired_ratio(times, "exact_linear", "approx_noised")
            rec["exact_over_approx_spread"] = ratio_spread(times, "exact_linear", "approx_noised")
        records.append(rec)
        rows.append([label, n, 1e3 * rec["median_s"]["floor"], 1e3 * rec["median_s"]["approx_noised"],
                     1e3 * rec["median_s"].get("exact_linear", float("nan")), rec["approx_over_floor"],
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


def noise_cost(disc, process, shape, sizes, chunk_size, repeats, warmup, min_time, draws_per_run, steps_per_run):
    records = []
    for n in sizes:
        start = time.perf_counter()
        ParticleNoise(0, n, shape)
        build = time.perf_counter() - start
        v = _variants(disc, process, shape, n, chunk_size, with_exact=False, with_noise=True)
        times = interleaved({k: v[k] for k in ("approx_noised", "approx_inject", "noise_draw", "batched_randn")},
                            repeats, warmup, min_time)
        step, draw = median(times["approx_noised"]), median(times["noise_draw"])
        records.append({"n": n, "build_s": build, "median_s": {k: median(x) for k, x in times.items()},
                        "inject_over_off": paired_ratio(times, "approx_inject", "approx_noised"),
                        "draw_over_step": paired_ratio(times, "noise_draw", "approx_noised"),
                        "draw_over_batched_randn": paired_ratio(times, "noise_draw", "batched_randn"),
                        "draw_per_particle_us": 1e6 * draw / n,
                        "preset_run_overhead": draws_per_run * draw / (steps_per_run * step),
                        "times_s": times})
        print(f"  noise N={n}: inject/off {records[-1]['inject_over_off']:.3f}", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds: small sizes, few repeats")
    parser.add_argument("--unet", action="store_true", help="also the small U-Net on 3x32x32")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9; --quick 3)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="FlowSettings.chunk_size (the presets' 1024)")
    parser.add_argument("--num-reference", type=int, default=2000, help="exact RBF: reference features M")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: on a shared 2-core machine two threads stall "
                             "on each other and the timings scatter; 0 keeps torch's default)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampler_cost.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    q = args.quick
    repeats = args.repeats or (3 if q else 9)
    warmup, min_time = (1, 0.005) if q else (2, 0.05)
    step_sizes = [128] if q else [64, 256, 1024]
    scale_sizes = [64, 128, 256] if q else [256, 512, 1024, 2048, 4096, 8192, 16384]
    rbf_sizes = [64, 128] if q else [256, 512, 1024, 2048, 4096, 8192]
    noise_sizes = [128] if q else [256, 1024, 4096]

    cfg, disc = _model([], (64,))
    process = build_process(cfg.process)
    s = cfg.sample
    result = {"benchmark": "sampler_cost", "quick": q, "environment": environment(), "repeats": repeats,
              "chunk_size": args.chunk_size, "model": "digits preset FeatureMLP (64 -> 128, width 256, depth 3)",
              "targets": {"approx_over_floor_max": APPROX_TARGET, "exact_over_approx_max": EXACT_TARGET,
                          "approx_slope_range": SLOPE_RANGE}}

    print("step cost over the floor (MLP)", flush=True)
    steps, rows = step_cost(disc, process, (64,), step_sizes, args.chunk_size, repeats, warmup, min_time, "mlp")
    if args.unet:
        print("step cost over the floor (U-Net)", flush=True)
        _, unet = _model(["model.backbone=unet", "model.base_channels=32", "model.channel_mults=[1,2,2]",
                          "model.num_res_blocks=1", "model.attn_resolutions=[16]", "model.head=flatten"], (3, 32, 32))
        u_steps, u_rows = step_cost(unet, process, (3, 32, 32), [4] if q else [32, 128], args.chunk_size,
                                    max(3, repeats // 2) if not q else 2, 1, min_time, "unet32")
        steps += u_steps
        rows += u_rows
    result["step_cost"] = steps

    print("approx sampler vs N", flush=True)
    result["scaling"] = scaling(disc, process, (64,), scale_sizes, args.chunk_size, repeats, warmup, 2 * min_time)
    print("exact RBF vs N", flush=True)
    result["exact_rbf"] = rbf_cost(process, (64,), rbf_sizes, 200 if q else args.num_reference, args.chunk_size,
                                   max(3, repeats // 2 + 1), 1, min_time)
    print("per-particle noise", flush=True)
    draws = (s.num_levels - 1) * (s.renoise > 0) + s.num_levels * s.steps_per_level * (s.inject > 0)
    result["noise"] = noise_cost(disc, process, (64,), noise_sizes, args.chunk_size, repeats, warmup, min_time,
                                 draws, s.num_levels * s.steps_per_level)
    result["noise_preset"] = {"draws_per_run": draws, "steps_per_run": s.num_levels * s.steps_per_level,
                              "inject": s.inject, "renoise": s.renoise}

    main_rec = next(r for r in steps if r["model"] == "mlp" and r["n"] == max(n for n in step_sizes if n <= args.chunk_size))
    sc = result["scaling"]
    result["verdicts"] = {
        "approx_over_floor": {"n": main_rec["n"], "value": main_rec["approx_over_floor"],
                              "verdict": verdict(main_rec["approx_over_floor"], hi=APPROX_TARGET)},
        "exact_over_approx": {"n": main_rec["n"], "value": main_rec["exact_over_approx"],
                              "verdict": verdict(main_rec["exact_over_approx"], hi=EXACT_TARGET)},
        "approx_slope": {"value": sc["slope"], "verdict": verdict(sc["slope"], *SLOPE_RANGE)},
    }

    if q:  # tiny sizes, where fixed per-call costs dominate: a smoke test, not a measurement
        for v in result["verdicts"].values():
            v["verdict"] = "not judged (--quick)"

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")

    print("\n### Step cost (ms per step; ratios = median of paired per-round ratios)\n")
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
    print("\n### Per-particle noise (ParticleNoise, one generator per particle)\n")
    print(table(["N", "draw ms", "us / particle", "batched randn ms", "draw / batched", "draw / step",
                 "inject step / off step", "build ms", "preset-run overhead"],
                [[r["n"], 1e3 * r["median_s"]["noise_draw"], r["draw_per_particle_us"], 1e3 * r["median_s"]["batched_randn"],
                  r["draw_over_batched_randn"], r["draw_over_step"], r["inject_over_off"], 1e3 * r["build_s"],
                  r["preset_run_overhead"]] for r in result["noise"]]))
    print("\n### Targets\n")
    for name, v in result["verdicts"].items():
        print(f"- {name}: {v['value']:.3f} -> {v['verdict']}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
