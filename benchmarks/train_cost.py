"""Cost of one DMMD training step (Algorithm 1) against one DDPM training step on the same backbone.

    python benchmarks/train_cost.py [--quick] [--out benchmarks/results/train_cost.json]

Setups (random data of the right shape: a step costs the same on real data):
  digits   configs/digits.toml: FeatureMLP on 64-D vectors (width 256, depth 3), batch 128.
           DDPM: the same FeatureMLP with 64 outputs (dmmd.ddpm.build_eps_net).
  cifar32  configs/cifar10.toml reduced: U-Net base_channels 32 (channel_mults [1, 2, 2, 2],
           attention at 16, flatten head), batch 32, on 3x32x32. DDPM: the same U-Net with the
           epsilon head.

Timed variants, round-robin within one run (ratios are medians of per-round paired ratios):
  dmmd_nn1       dmmd.training.train_step with train.num_levels = 1 (x, x' of batch B each: one
                 forward of 3 B inputs, the gradient penalty's double backward, Adam, EMA).
  dmmd_preset    the same with the preset's train.num_levels (N_n = 2 in both presets).
  ddpm_bare      ddpm_loss + backward + Adam step on a batch of B (the denominator of the target).
  ddpm_train     dmmd.training.train_step with method = 'ddpm' (the same bookkeeping as DMMD:
                 batch indexing, gradient clipping, EMA update).
  dmmd_gp25_nn1  N_n = 1 with train.gp_fraction = 0.25: the gradient penalty on a quarter of the
                 interpolates (an estimator change, not a refactor; the default stays 1.0).

dmmd.losses featurises the interpolates in their own forward pass (the input gradient and its
double backward then run over B rows, not 3 B); until 2026-11-23 it ran one pass of 3 B rows,
which measured 5.1x (digits) and 9.4x (cifar32) DDPM's step at N_n = 1.

Target (the project's issue): DMMD step at N_n = 1 <= 3 x DDPM step (ddpm_bare).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (
    environment,
    interleaved,
    median,
    paired_ratio,
    ratio_spread,
    table,
    verdict,
)

from dmmd.config import load
from dmmd.pipeline import build_process
from dmmd.training import new_state, train_step

try:
    from dmmd.ddpm import build_eps_net, ddpm_loss  # noqa: F401
    HAVE_DDPM = True
except ImportError:  # the baseline is written separately; without it the DDPM rows are skipped
    HAVE_DDPM = False

ROOT = Path(__file__).resolve().parents[1]
TARGET = 3.0

SETUPS = {
    "digits": ("digits.toml", (64,), []),
    "cifar32": ("cifar10.toml", (3, 32, 32), ["model.base_channels=32", "train.batch_size=32"]),
}


def run_setup(name, repeats, warmup, min_time, quick, profile_dir):
    preset, shape, extra = SETUPS[name]
    if quick:  # tiny nets; the U-Net on 3x16x16
        extra = extra + (["model.width=64", "train.batch_size=16"] if name == "digits" else
                         ["model.base_channels=8", "model.channel_mults=[1,2]", "model.attn_resolutions=[8]",
                          "train.batch_size=4"])
        shape = shape if name == "digits" else (3, 16, 16)
    base = load(ROOT / "configs" / preset, extra)
    preset_levels = base.train.num_levels
    data = torch.randn(max(1024, 4 * base.train.batch_size), *shape, generator=torch.Generator().manual_seed(0))
    process = build_process(base.process)
    variants = {}
    for label, changes in (("nn1", ["train.num_levels=1"]), ("preset", []),
                           ("gp25_nn1", ["train.num_levels=1", "train.gp_fraction=0.25"])):
        cfg = load(ROOT / "configs" / preset, extra + changes)
        state = new_state(cfg, shape)
        variants[f"dmmd_{label}"] = lambda s=state, c=cfg: train_step(s, data, process, c)
    if HAVE_DDPM:
        dcfg = load(ROOT / "configs" / preset, extra + ["method=ddpm", "sample.sampler=ddpm"])
        dstate = new_state(dcfg, shape)
        variants["ddpm_train"] = lambda: train_step(dstate, data, process, dcfg)
        bstate = new_state(dcfg, shape)
        x0 = data[: dcfg.train.batch_size]
        gen = torch.Generator().manual_seed(1)

        def ddpm_bare():
            loss, _ = ddpm_loss(bstate.model, x0, process, gen)
            bstate.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bstate.optimizer.step()

        variants["ddpm_bare"] = ddpm_bare
    times = interleaved(variants, repeats, warmup, min_time)
    rec = {"setup": name, "preset": preset, "overrides": extra, "shape": list(shape), "batch_size": base.train.batch_size,
           "preset_num_levels": preset_levels, "median_s": {k: median(v) for k, v in times.items()}, "times_s": times,
           "ddpm_available": HAVE_DDPM, "repeats": repeats}
    if HAVE_DDPM:
        for v in [k for k in times if k.startswith("dmmd")]:
            rec[f"{v}_over_ddpm_bare"] = paired_ratio(times, v, "ddpm_bare")
            rec[f"{v}_over_ddpm_bare_spread"] = ratio_spread(times, v, "ddpm_bare")
            rec[f"{v}_over_ddpm_train"] = paired_ratio(times, v, "ddpm_train")
        rec["verdict_nn1"] = ("not judged (--quick)" if quick else
                              verdict(rec["dmmd_nn1_over_ddpm_bare"], hi=TARGET))
    if profile_dir is not None:
        rec["profile"] = _profile(variants, profile_dir / f"train_cost_{name}_profile.txt")
    return rec


def _profile(variants, path: Path) -> str:
    from torch.profiler import ProfilerActivity, profile

    lines = []
    for key in ("dmmd_nn1", "ddpm_bare"):
        if key not in variants:
            continue
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                variants[key]()
        lines.append(f"== {key} (2 steps) ==\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(lines))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny nets and batches")
    parser.add_argument("--setups", default="digits,cifar32", help="comma-separated: digits, cifar32")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds (default 7 for digits, 3 for cifar32 whose steps take seconds; --quick 3)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of dmmd_nn1 and ddpm_bare")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: on a shared 2-core machine two threads stall "
                             "on each other and the timings scatter; 0 keeps torch's default)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_cost.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    warmup, min_time = (1, 0.005) if q else (1, 0.2)
    out = Path(args.out)
    if not HAVE_DDPM:
        print("dmmd.ddpm (build_eps_net, ddpm_loss) not importable: DDPM rows skipped")
    records = []
    for name in args.setups.split(","):
        print(f"timing {name}", flush=True)
        repeats = args.repeats or (3 if q or name == "cifar32" else 7)
        records.append(run_setup(name, repeats, warmup, min_time, q,
                                 out.parent if args.profile else None))
    result = {"benchmark": "train_cost", "quick": q, "environment": environment(),
              "target_dmmd_nn1_over_ddpm_max": TARGET, "setups": records}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")

    print("\n### Training step cost (ms per step; ratios = median of paired per-round ratios)\n")
    keys = ["dmmd_nn1", "dmmd_preset", "dmmd_gp25_nn1", "ddpm_bare", "ddpm_train"]
    rows = []
    for r in records:
        ms = r["median_s"]
        rows.append([r["setup"], r["batch_size"], *[1e3 * ms[k] if k in ms else "-" for k in keys],
                     r.get("dmmd_nn1_over_ddpm_bare", "-"), r.get("dmmd_preset_over_ddpm_bare", "-"),
                     r.get("dmmd_nn1_over_ddpm_train", "-"), r.get("dmmd_gp25_nn1_over_ddpm_bare", "-"),
                     r.get("verdict_nn1", "skipped (no ddpm)")])
    print(table(["setup", "B", "dmmd Nn=1 ms", "dmmd Nn=preset ms", "gp 0.25 Nn=1 ms", "ddpm bare ms",
                 "ddpm train_step ms", "Nn=1 / ddpm", "preset / ddpm", "Nn=1 / ddpm train_step",
                 "gp 0.25 Nn=1 / ddpm", "target Nn=1 <= 3"], rows))
    for r in records:
        if "profile" in r:
            print(f"{r['setup']}: profile in {r['profile']}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
