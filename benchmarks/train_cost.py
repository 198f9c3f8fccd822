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
  dmmd_split_*   (--split, on by default) a prototype of the change proposed below, written in
                 this file and not in src/: the same loss with the interpolates u featurised in
                 a second forward pass, so the input-gradient and its double backward run on B
                 rows instead of 3 B. Its loss and parameter gradients are checked against
                 dmmd_loss before timing.
  dmmd_split_gp4_nn1  the split prototype at N_n = 1 with the gradient penalty on B/4 of the
                 interpolates: an estimator change (not a refactor), timed to show what the
                 3x target would take.

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

from dmmd import divergences as dv
from dmmd.config import load
from dmmd.losses import _repeat, dmmd_loss
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


def split_loss(disc, x, x_prime, t_levels, process, lambda_gp, lambda_l2, generator=None, gp_rows=None):
    """dmmd_loss (linear or any kernel, objective mmd, one process) with the interpolates in their
    own forward pass. Same random draws in the same order, hence the same loss.

    gp_rows (an estimator change, not a refactor): the penalty on only the first gp_rows
    interpolates of each level, as StyleGAN2-style cheaper regularisation would; None = all B."""
    num_levels, batch = t_levels.shape[0], x.shape[0]
    t = t_levels.to(device=x.device, dtype=torch.float32).repeat_interleave(batch)
    xs = _repeat(x, num_levels)
    ys = process.corrupt(_repeat(x_prime, num_levels), t.double(), generator=generator)
    r = torch.rand(xs.shape[0], generator=generator, device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))
    u = r * xs + (1 - r) * ys
    a, b = disc.features(torch.cat([xs, ys]), torch.cat([t, t])).view(2, num_levels, batch, -1).unbind(0)
    if gp_rows is not None and gp_rows < batch:
        keep = (torch.arange(num_levels).view(-1, 1) * batch + torch.arange(gp_rows).view(1, -1)).flatten()
        u, t, batch = u[keep], t[keep], gp_rows
    u = u.detach().requires_grad_(True)
    fu = disc.features(u, t).view(num_levels, batch, -1)
    divergence, witness_values = [], []
    for j in range(num_levels):
        if disc.kernel_name == "linear":
            divergence.append(dv.mmd2_linear_unbiased(a[j], b[j]))
            witness_values.append(dv.linear_witness(fu[j], a[j].mean(0), b[j].mean(0)))
        else:
            kernel = disc.kernel(t_levels[j])
            divergence.append(dv.mmd2(kernel, a[j], b[j], unbiased=True))
            witness_values.append(dv.witness(kernel, fu[j], a[j], b[j]))
    divergence, witness_values = torch.stack(divergence), torch.stack(witness_values)
    (grad_u,) = torch.autograd.grad(witness_values.sum(), u, create_graph=True)
    count = num_levels * batch
    gp = (grad_u.flatten(1).norm(dim=1) - 1.0).pow(2).sum() / count
    l2 = (a.pow(2).sum() + b.pow(2).sum()) / (count * a.shape[-1])
    return -divergence.mean() + lambda_gp * gp + lambda_l2 * l2


def _check_split(state, cfg, process, data, num_levels) -> float:
    """Relative difference of the loss and of the parameter gradient (as one vector, 2-norm)
    between dmmd_loss and split_loss on the same batch and draws."""
    model, b = state.model, cfg.train.batch_size
    x, xp = data[:b], data[b:2 * b]
    t_levels = torch.linspace(0.2, 0.8, num_levels, dtype=torch.float64)
    out = []
    for fn in (lambda g: dmmd_loss(model, x, xp, t_levels, process, cfg.train.lambda_gp, cfg.train.lambda_l2, g)[0],
               lambda g: split_loss(model, x, xp, t_levels, process, cfg.train.lambda_gp, cfg.train.lambda_l2, g)):
        model.zero_grad(set_to_none=True)
        loss = fn(torch.Generator().manual_seed(5))
        loss.backward()
        out.append([loss.detach().clone()] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    (loss_a, *grad_a), (loss_b, *grad_b) = out
    flat_a, flat_b = torch.cat([g.flatten() for g in grad_a]), torch.cat([g.flatten() for g in grad_b])
    # the whole gradient vector: per tensor, the biases in front of a GroupNorm have a zero gradient
    # up to round-off, and their relative differences mean nothing
    return max(float((loss_a - loss_b).abs() / loss_a.abs()), float((flat_a - flat_b).norm() / flat_a.norm()))


def _split_step(state, cfg, process, data, gp_rows=None):
    """train_step's work with split_loss in place of dmmd_loss (clip, Adam, EMA as in train_step)."""
    tc, gen = cfg.train, state.generator

    def step():
        idx = torch.randint(0, len(data), (2 * tc.batch_size,), generator=gen)
        batch = data[idx]
        t_levels = process.t_min + (process.t_max - process.t_min) * torch.rand(tc.num_levels, generator=gen, dtype=torch.float64)
        loss = split_loss(state.model, batch[:tc.batch_size], batch[tc.batch_size:], t_levels, process,
                          tc.lambda_gp, tc.lambda_l2, gen, gp_rows)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
        state.optimizer.step()
        state.ema.update_parameters(state.model)

    return step


def run_setup(name, repeats, warmup, min_time, quick, split, profile_dir):
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
    variants, checks = {}, {}
    for label, levels in (("nn1", 1), ("preset", preset_levels)):
        cfg = load(ROOT / "configs" / preset, extra + [f"train.num_levels={levels}"])
        state = new_state(cfg, shape)
        variants[f"dmmd_{label}"] = lambda s=state, c=cfg: train_step(s, data, process, c)
        if split:
            s2 = new_state(cfg, shape)
            checks[f"split_{label}_max_rel_diff"] = _check_split(s2, cfg, process, data, levels)
            variants[f"dmmd_split_{label}"] = _split_step(s2, cfg, process, data)
            if levels == 1:
                s3 = new_state(cfg, shape)
                variants["dmmd_split_gp4_nn1"] = _split_step(s3, cfg, process, data, max(2, cfg.train.batch_size // 4))
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
           "checks": checks, "ddpm_available": HAVE_DDPM, "repeats": repeats}
    if HAVE_DDPM:
        for v in [k for k in times if k.startswith("dmmd")]:
            rec[f"{v}_over_ddpm_bare"] = paired_ratio(times, v, "ddpm_bare")
            rec[f"{v}_over_ddpm_bare_spread"] = ratio_spread(times, v, "ddpm_bare")
            rec[f"{v}_over_ddpm_train"] = paired_ratio(times, v, "ddpm_train")
        rec["verdict_nn1"] = ("not judged (--quick)" if quick else
                              verdict(rec["dmmd_nn1_over_ddpm_bare"], hi=TARGET))
    if split:
        rec["split_speedup_nn1"] = paired_ratio(times, "dmmd_nn1", "dmmd_split_nn1")
        rec["split_speedup_preset"] = paired_ratio(times, "dmmd_preset", "dmmd_split_preset")
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
    parser.add_argument("--no-split", action="store_true", help="skip the split-forward prototype")
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
        records.append(run_setup(name, repeats, warmup, min_time, q, not args.no_split,
                                 out.parent if args.profile else None))
    result = {"benchmark": "train_cost", "quick": q, "environment": environment(),
              "target_dmmd_nn1_over_ddpm_max": TARGET, "setups": records}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")

    print("\n### Training step cost (ms per step; ratios = median of paired per-round ratios)\n")
    keys = ["dmmd_nn1", "dmmd_preset", "ddpm_bare", "ddpm_train", "dmmd_split_nn1", "dmmd_split_preset",
            "dmmd_split_gp4_nn1"]
    rows = []
    for r in records:
        ms = r["median_s"]
        rows.append([r["setup"], r["batch_size"], *[1e3 * ms[k] if k in ms else "-" for k in keys],
                     r.get("dmmd_nn1_over_ddpm_bare", "-"), r.get("dmmd_preset_over_ddpm_bare", "-"),
                     r.get("dmmd_nn1_over_ddpm_train", "-"), r.get("dmmd_split_nn1_over_ddpm_bare", "-"),
                     r.get("dmmd_split_preset_over_ddpm_bare", "-"), r.get("dmmd_split_gp4_nn1_over_ddpm_bare", "-"),
                     r.get("verdict_nn1", "skipped (no ddpm)")])
    print(table(["setup", "B", "dmmd Nn=1 ms", "dmmd Nn=preset ms", "ddpm bare ms", "ddpm train_step ms",
                 "split Nn=1 ms", "split Nn=preset ms", "split+gp/4 Nn=1 ms", "Nn=1 / ddpm", "preset / ddpm",
                 "Nn=1 / ddpm train_step", "split Nn=1 / ddpm", "split preset / ddpm", "split+gp/4 Nn=1 / ddpm",
                 "target Nn=1 <= 3"], rows))
    for r in records:
        if r["checks"]:
            print(f"\n{r['setup']}: split prototype vs dmmd_loss, max relative difference of loss and gradients "
                  + ", ".join(f"{k} {v:.2e}" for k, v in r["checks"].items())
                  + f"; speed-up Nn=1 {r['split_speedup_nn1']:.2f}x, preset {r['split_speedup_preset']:.2f}x")
        if "profile" in r:
            print(f"{r['setup']}: profile in {r['profile']}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
