"""Cost of one DMMD training step (Algorithm 1) against one DDPM training step on the same backbone,
for the options that make the gradient penalty cheaper.

    python benchmarks/train_cost.py [--quick] [--setups digits,fashion,mnist] [--out benchmarks/results/train_cost.json]

The measure is CPU time (time.process_time) at one thread, at least 5 rounds (15 on the MLPs,
whose steps take milliseconds), variants timed round-robin; tables give median (min-max) and
verdicts are taken on medians (see _timing.py).

Setups, at the presets' settings (random data of the right shape: a step costs the same on real data):
  digits   configs/digits.toml: FeatureMLP on 64-D vectors (width 256, depth 3), batch 128, N_n = 1.
  fashion  configs/fashion_mnist_latent.toml: the FeatureMLP (width 256, depth 3) on the autoencoder's
           32-D latents, batch 128, N_n = 2 (the quality studies' Fashion-MNIST MLP; no target).
  mnist    configs/mnist.toml: U-Net base_channels 32, channel_mults [1, 2, 2], one res block,
           attention at 14, flatten head, on 1x28x28, batch 64, N_n = 1 (train.device = cpu).
  cifar32  configs/cifar10.toml reduced to base_channels 32 and batch 32 (not run by default).
DDPM uses the same backbone with its epsilon head (dmmd.methods.ddpm.build_eps_net).

Timed variants (dmmd.training.loop.train_step: batch indexing, loss, backward, clipping, Adam, EMA):
  ddpm           method = ddpm: the denominator of every ratio (the same bookkeeping as DMMD).
  ddpm_bare      ddpm_loss + backward + Adam step only (ratios to it are reported beside).
  shipped        the preset as shipped (its N_n, gp_fraction and gp_every; a lazy preset is timed as
                 one step with the penalty and k - 1 without, like the rows below).
  plain          the paper's penalty: every step, all rows, N_n = 2 (the presets' setting before
                 issue 17); every other variant changes this one.
  nogp           a step without the penalty: the cost of a non-penalty step of lazy
                 regularisation (train.gp_every = 10^6 here, so that no timed step carries it).
  gp25           train.gp_fraction = 0.25.
  nn1, nn1_nogp  train.num_levels = 1, with and without the penalty.
  nn1_gp25       train.num_levels = 1 and train.gp_fraction = 0.25.
  bf16, bf16_nogp  train.precision = bf16 (autocast), with and without the penalty. Timed only where
                 the CPU computes bf16 at a float32-like speed (--bf16 auto, the default: a 256x256
                 matmul under autocast at most BF16_MAX_SLOWDOWN times float32's); an AVX2-only CPU
                 emulates it at 30-90x a float32 step, which tells nothing about a GPU and took
                 about 28 of the 51 minutes of make bench. --bf16 on times it anyway.
  nn1_reuse_fresh, nn1_reuse_held  N_n = 1 under train.gp_lazy = reuse: a step that computes the
                 penalty and keeps its gradient (the work of an nn1 step), and a step that adds the
                 kept gradient instead (the work of an nn1_nogp step).
Lazy regularisation (train.gp_every = k) runs one penalty step (the cost of the variant with
the penalty: gp_scale k changes no work) and k - 1 steps without, so its cost per step is
(with + (k - 1) without) / k, formed per round from the two variants timed in that round. On
digits, `lazy4_run` times four consecutive train_steps of a gp_every = 4 run as a check of that
arithmetic (reported as lazy4_run / derived); `nn1_reuse4_run` likewise times four consecutive
steps of an N_n = 1, gp_every = 4, gp_lazy = reuse run (reported as nn1_reuse4_run / derived).

Targets (the project's issue 17), DMMD step / DDPM step at the preset's settings: digits <= 2.5,
mnist U-Net <= 3.0, judged on the 'as shipped' row only (the target is about the presets); the
other rows are the options the presets were chosen from, by quality at equal CPU time
(benchmarks/gp_quality.py), and carry no verdict. bf16 rows compare to DDPM in float32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (
    MIN_ROUNDS,
    environment,
    fmt_spread,
    interleaved,
    median,
    single_thread,
    spread,
    table,
    verdict,
)

from dmmd.config import load
from dmmd.methods.build import build_process
from dmmd.methods.ddpm import ddpm_loss
from dmmd.runtime.checkpoint import atomic_write_text
from dmmd.training.loop import train_step
from dmmd.training.state import new_state

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"digits": 2.5, "mnist": 3.0, "cifar32": 3.0}  # fashion: none (the issue sets none)
NEVER = "train.gp_every=1000000"  # no timed step reaches a multiple of it: steps without the penalty
LAZY = (4, 16)
REUSE = (3, 4, 6, 8)
BF16 = ("bf16", "bf16_nogp")
BF16_MAX_SLOWDOWN = 4.0  # --bf16 auto: above this, the CPU has no native bf16 and the bf16 rows are left out

SETUPS = {
    "digits": ("digits.toml", (64,), []),
    "fashion": ("fashion_mnist_latent.toml", (32,), ["model.latent="]),
    "mnist": ("mnist.toml", (1, 28, 28), ["train.device=cpu"]),
    "cifar32": ("cifar10.toml", (3, 32, 32), ["model.base_channels=32", "train.batch_size=32", "train.device=cpu"]),
}
PAPER = ["train.num_levels=2", "train.gp_fraction=1.0", "train.gp_every=1"]  # the reference the variants change
VARIANTS = {  # name: overrides on PAPER; each *_nogp pairs with the variant of its prefix for lazy regularisation
    "plain": [], "nogp": [NEVER], "gp25": ["train.gp_fraction=0.25"],
    "nn1": ["train.num_levels=1"], "nn1_nogp": ["train.num_levels=1", NEVER],
    "nn1_gp25": ["train.num_levels=1", "train.gp_fraction=0.25"],
    "bf16": ["train.precision=bf16"], "bf16_nogp": ["train.precision=bf16", NEVER],
    "nn1_reuse_fresh": ["train.num_levels=1", NEVER, "train.gp_lazy=reuse"],
    "nn1_reuse_held": ["train.num_levels=1", NEVER, "train.gp_lazy=reuse"],
}
FRESH = ("nn1_reuse_fresh",)  # the kept penalty gradient is dropped before each timed step (and a reusing preset's "shipped")
# (row, with-penalty variant, without-penalty variant or None)
ROWS = [("as shipped", "shipped", "shipped_nogp"), ("plain (N_n = 2, penalty every step)", "plain", None),
        ("no penalty at all", "nogp", None)]
for _base, _without in (("plain", "nogp"), ("gp25", "nogp"), ("nn1", "nn1_nogp"), ("nn1_gp25", "nn1_nogp"),
                        ("bf16", "bf16_nogp")):
    if _base != "plain":
        ROWS.append((_base, _base, None))
    ROWS += [(f"{_base} + gp_every {k}", _base, _without, k) for k in LAZY]
ROWS += [(f"nn1 + gp_every {k}, gp_lazy reuse", "nn1_reuse_fresh", "nn1_reuse_held", k) for k in REUSE]
ROWS = [r if len(r) == 4 else (*r, 1) for r in ROWS]


def per_round(times: dict, with_gp: str, without: str | None, k: int) -> list[float]:
    """CPU seconds per step of each round: (with + (k - 1) without) / k (k = 1: with)."""
    if without is None or k == 1:
        return list(times[with_gp])
    return [(a + (k - 1) * b) / k for a, b in zip(times[with_gp], times[without])]


def bf16_slowdown() -> float:
    """CPU seconds of a 256x256 matmul under bf16 autocast over the same matmul in float32 (median of
    3 paired rounds): about 1 or below on a CPU with native bf16 (AVX512-BF16, AMX), 46-52 on an AVX2 one."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=gen), torch.randn(256, 256, generator=gen)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return a @ b

    times = interleaved({"float32": lambda: a @ b, "bf16": bf16}, 3, 1, 0.02)
    return median([x / y for x, y in zip(times["bf16"], times["float32"])])


def run_setup(name, repeats, warmup, min_time, quick, profile_dir, only=None, skip=frozenset()):
    preset, shape, extra = SETUPS[name]
    if quick:  # tiny nets; the U-Nets on 16x16
        mlp = len(shape) == 1
        extra = extra + (["model.width=64", "train.batch_size=16"] if mlp else
                         ["model.base_channels=8", "model.channel_mults=[1,2]", "model.attn_resolutions=[8]",
                          "train.batch_size=4"])
        shape = shape if mlp else (shape[0], 16, 16)
    base = load(ROOT / "configs" / preset, extra)
    data = torch.randn(max(1024, 4 * base.train.batch_size), *shape, generator=torch.Generator().manual_seed(0))
    process = build_process(base.process)
    variants = {}
    dcfg = load(ROOT / "configs" / preset, extra + ["method=ddpm", "sample.sampler=ddpm"])
    dstate = new_state(dcfg, shape)
    variants["ddpm"] = lambda: train_step(dstate, data, process, dcfg)
    bstate = new_state(dcfg, shape)
    x0 = data[: dcfg.train.batch_size]
    gen = torch.Generator().manual_seed(1)

    def ddpm_bare():
        loss, _ = ddpm_loss(bstate.model, x0, process, gen)
        bstate.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bstate.optimizer.step()

    variants["ddpm_bare"] = ddpm_bare
    shipped_every = base.train.gp_every
    if shipped_every > 1 and base.train.gp_lazy == "reuse":  # a reusing preset: fresh and held steps
        shipped = {"shipped": [NEVER], "shipped_nogp": [NEVER]}
    else:
        shipped = {"shipped": ["train.gp_every=1"], **({"shipped_nogp": [NEVER]} if shipped_every > 1 else {})}
    for label, changes in {**shipped, **{k: PAPER + v for k, v in VARIANTS.items()}}.items():
        if (only and label not in only) or label in skip:
            continue
        cfg = load(ROOT / "configs" / preset, extra + changes)
        state = new_state(cfg, shape)
        fresh = label in FRESH or (label == "shipped" and cfg.train.gp_lazy == "reuse")

        def step(s=state, c=cfg, fresh=fresh):
            if fresh:
                s.gp_cache = None
            train_step(s, data, process, c)

        variants[label] = step
    runs = {"nn1_reuse4_run": ["train.num_levels=1", "train.gp_every=4", "train.gp_lazy=reuse"]}
    if name == "digits":
        runs["lazy4_run"] = ["train.gp_every=4"]
    for label, changes in runs.items():  # four consecutive steps: one with the penalty, three without
        if not only or label in only:
            variants[label] = _four_steps(load(ROOT / "configs" / preset, extra + PAPER + changes), shape, data, process)
    wall: dict = {}
    times = interleaved(variants, repeats, warmup, min_time, wall=wall)
    for run in ("lazy4_run", "nn1_reuse4_run"):
        if run in times:
            times[run] = [t / 4 for t in times[run]]
            wall[run] = [t / 4 for t in wall[run]]
    target = TARGETS.get(name)
    rows = []
    for row, with_gp, without, k in ROWS:
        if with_gp not in times or (without is not None and without not in times and without != "shipped_nogp"):
            continue  # left out by --variants
        k = shipped_every if with_gp == "shipped" else k
        without = without if without in times else None  # shipped_nogp is timed only for a lazy preset
        steps = per_round(times, with_gp, without, k)
        walls = per_round(wall, with_gp, without, k)
        ratio = spread([a / b for a, b in zip(steps, times["ddpm"])])
        rows.append({"row": row, "variant": with_gp, "without": without, "gp_every": k, "cpu_s": spread(steps),
                     "wall_median_s": median(walls), "over_ddpm": ratio,
                     "over_ddpm_bare": spread([a / b for a, b in zip(steps, times["ddpm_bare"])]),
                     "wall_over_ddpm": median([a / b for a, b in zip(walls, wall["ddpm"])]),
                     "verdict": "not judged (--quick)" if quick else
                     "- (no target)" if target is None else
                     verdict(ratio["median"], hi=target) if with_gp == "shipped" else "- (option)"})
    rec = {"setup": name, "preset": preset, "overrides": extra, "shape": list(shape), "batch_size": base.train.batch_size,
           "preset_num_levels": base.train.num_levels, "preset_gp_fraction": base.train.gp_fraction,
           "preset_gp_every": shipped_every, "preset_gp_lazy": base.train.gp_lazy, "target_over_ddpm_max": target, "repeats": repeats,
           "cpu_s": {k: spread(v) for k, v in times.items()}, "wall_median_s": {k: median(v) for k, v in wall.items()},
           "rows": rows, "times_s": times, "wall_s": wall}
    if {"lazy4_run", "plain", "nogp"} <= set(times):
        derived = per_round(times, "plain", "nogp", 4)
        rec["lazy4_run_over_derived"] = spread([a / b for a, b in zip(times["lazy4_run"], derived)])
    if {"nn1_reuse4_run", "nn1_reuse_fresh", "nn1_reuse_held"} <= set(times):
        derived = per_round(times, "nn1_reuse_fresh", "nn1_reuse_held", 4)
        rec["nn1_reuse4_run_over_derived"] = spread([a / b for a, b in zip(times["nn1_reuse4_run"], derived)])
    if profile_dir is not None:
        rec["profile"] = _profile(variants, profile_dir / f"train_cost_{name}_profile.txt")
    return rec


def _four_steps(cfg, shape, data, process):
    state = new_state(cfg, shape)

    def run():
        for _ in range(4):
            train_step(state, data, process, cfg)

    return run


def _profile(variants, path: Path) -> str:
    from torch.profiler import ProfilerActivity, profile

    lines = []
    for key in ("plain", "ddpm"):
        if key not in variants:
            continue
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                variants[key]()
        lines.append(f"== {key} (2 steps) ==\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n\n".join(lines))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny nets and batches")
    parser.add_argument("--setups", default="digits,fashion,mnist", help="comma-separated: digits, fashion, mnist, cifar32")
    parser.add_argument("--repeats", type=int, default=None, help=f"timed rounds (default {MIN_ROUNDS}; --quick 3)")
    parser.add_argument("--variants", default="",
                        help="comma-separated variants to time (ddpm and ddpm_bare always are; rows that need "
                             "another variant are left out); default all")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of plain and ddpm")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: CPU time then measures the computation; "
                             "0 keeps torch's default)")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="time the bf16 autocast variants: auto (default) only if this CPU runs a bf16 matmul "
                             f"at most {BF16_MAX_SLOWDOWN:g}x as slow as float32 (native bf16), on, off")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_cost.json"))
    args = parser.parse_args()
    if args.threads == 1:
        single_thread()
    elif args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    repeats = args.repeats or (3 if q else MIN_ROUNDS)
    if not q and repeats < MIN_ROUNDS:
        parser.error(f"--repeats must be at least {MIN_ROUNDS} for a judged run")
    warmup, min_time = (1, 0.005) if q else (1, 0.2)
    out = Path(args.out)
    env = environment()
    bf16 = {"mode": args.bf16}
    if args.bf16 == "auto":
        bf16["matmul_slowdown"] = bf16_slowdown()
        bf16["timed"] = bf16["matmul_slowdown"] <= BF16_MAX_SLOWDOWN
    else:
        bf16["timed"] = args.bf16 == "on"
    if not bf16["timed"]:
        bf16["why_not"] = ("--bf16 off" if args.bf16 == "off" else
                           f"this CPU ({env['cpu']}, {env['cpu_capability']}) runs a bf16 matmul at "
                           f"{bf16['matmul_slowdown']:.0f}x float32's: no native bf16, so the bf16 rows would time an "
                           "emulation (--bf16 on times them anyway)")
        print(f"bf16 variants left out: {bf16['why_not']}", flush=True)
    skip = frozenset() if bf16["timed"] else frozenset(BF16)
    records = []
    for name in args.setups.split(","):
        print(f"timing {name}", flush=True)
        rounds = repeats if q or name not in ("digits", "fashion") else max(repeats, 15)  # MLPs: steps of milliseconds
        only = set(args.variants.split(",")) - {""}
        records.append(run_setup(name, rounds, warmup, min_time, q, out.parent if args.profile else None, only, skip))
    result = {"benchmark": "train_cost", "quick": q, "environment": env, "bf16": bf16,
              "measure": "CPU seconds (time.process_time) at one thread; wall seconds beside",
              "targets_over_ddpm_max": {r["setup"]: r["target_over_ddpm_max"] for r in records}, "setups": records}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")

    for r in records:
        print(f"\n### {r['setup']} ({r['preset']}, batch {r['batch_size']}, N_n = {r['preset_num_levels']}): "
              f"CPU s per step, median (min-max) over {r['repeats']} rounds\n")
        print(table(["variant", "CPU s", "wall s (median)"],
                    [[k, fmt_spread(v), r["wall_median_s"][k]] for k, v in r["cpu_s"].items()]))
        print()
        print(table(["setting", "CPU s / step", "/ DDPM step", "/ DDPM bare", "wall / DDPM",
                     "target" if r["target_over_ddpm_max"] is None else f"target <= {r['target_over_ddpm_max']}"],
                    [[x["row"], fmt_spread(x["cpu_s"]), fmt_spread(x["over_ddpm"]), x["over_ddpm_bare"]["median"],
                      x["wall_over_ddpm"], x["verdict"]] for x in r["rows"]]))
        if "lazy4_run_over_derived" in r:
            print(f"\nlazy gp_every = 4 timed as a run / derived from plain and nogp: {fmt_spread(r['lazy4_run_over_derived'])}")
        if "nn1_reuse4_run_over_derived" in r:
            print("N_n = 1, gp_every = 4, gp_lazy reuse timed as a run / derived from its fresh and held steps: "
                  f"{fmt_spread(r['nn1_reuse4_run_over_derived'])}")
        if "profile" in r:
            print(f"{r['setup']}: profile in {r['profile']}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
