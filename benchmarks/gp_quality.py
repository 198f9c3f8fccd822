"""Quality at equal CPU time of the cheaper gradient penalties (issue 17): does a cheaper DMMD step
buy as much sample quality per CPU second as the penalty as shipped?

    python benchmarks/gp_quality.py [--preset digits] [--budget 150] [--seeds 0,1]
                                    [--variants plain,lazy4,gp25_lazy4,nn1_lazy4] [--out benchmarks/results/gp_quality]

Each variant trains the preset (one thread) until its CPU time (time.process_time) reaches the
budget; the end-of-training calibration (level statistics and the replay of the default sampler)
runs inside that budget, as `dmmd compare` does. Then 1000 samples per NFE (20 and 100, the
preset's default sampler with the --nfe rule) are scored against held-out data: FD-digits /
FD-fashion in the shipped classifiers' features, near-duplicate share and nearest-training ratio.
Seeds give the run-to-run spread; the verdict compares each variant's mean FD with the reference's
(--reference, default plain) mean FD plus the larger of the two seed spreads ("equal quality beyond the run-to-run spread").
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dmmd import config as C
from dmmd.apps.compare import _sampler_config, score
from dmmd.data.datasets import load_dataset
from dmmd.methods.build import build_process, flow_settings
from dmmd.methods.sample import calibrate, needs_calibration, sample

VARIANTS = {
    "plain": {},
    "lazy4": {"train.gp_every": 4},
    "lazy16": {"train.gp_every": 16},
    "gp25_lazy4": {"train.gp_fraction": 0.25, "train.gp_every": 4},
    "nn1_lazy4": {"train.num_levels": 1, "train.gp_every": 4},
    "nn1": {"train.num_levels": 1},
    "gp25": {"train.gp_fraction": 0.25},
    "nn1_gp25": {"train.num_levels": 1, "train.gp_fraction": 0.25},
    **{f"nn1_reuse{k}": {"train.num_levels": 1, "train.gp_every": k, "train.gp_lazy": "reuse"} for k in (3, 4, 6, 8)},
}


def run(preset: str, variant: str, seed: int, budget: float, data, model_data, to_pixels, workdir: Path,
        extra: list[str], steps: int | None = None) -> list[dict]:
    """Train one variant until `budget` CPU seconds (or for exactly `steps` steps when given), then score."""
    from dmmd.training.loop import TrainingDiverged, train

    overrides = [f"{k}={v}" for k, v in VARIANTS[variant].items()]
    cfg = C.load(preset, [*extra, *overrides, f"seed={seed}", "train.threads=1", "train.best_by=none",
                          f"train.steps={steps or 10**9}"])
    cpu, wall = time.process_time(), time.time()
    try:
        state = train(cfg, model_data.train, workdir / f"{variant}-{seed}", progress=False,
                      max_seconds=None if steps else budget, clock=time.process_time)
    except TrainingDiverged as err:  # a finding, not a crash: recorded as an infinite FD
        print(f"{variant} seed {seed}: {err}", flush=True)
        return [{"variant": variant, "seed": seed, "nfe": nfe, "steps": -1, "train_cpu_s": round(time.process_time() - cpu, 1),
                 "train_wall_s": round(time.time() - wall, 1), "metric_name": "diverged", "metric": float("inf"),
                 "near_duplicates": float("nan"), "nn_to_train_ratio": float("nan"), "diverged": str(err)}
                for nfe in (20, 100)]
    cpu, wall = time.process_time() - cpu, time.time() - wall
    model = state.ema.module.eval().requires_grad_(False)
    process = build_process(cfg.process)
    rows, stats = [], state.stats or {}
    for nfe in (20, 100):
        c = _sampler_config(cfg, nfe, {})
        if needs_calibration(model, c, stats):  # another NFE's replay: outside the budget, as in compare
            stats = calibrate(model, c, model_data.train, process, stats, flow_settings(c.sample))
        z = sample(model, c, stats, process, model_data.shape, 1000, 0)
        s = score(to_pixels(z), data)
        rows.append({"variant": variant, "seed": seed, "nfe": nfe, "steps": state.step, "train_cpu_s": round(cpu, 1),
                     "train_wall_s": round(wall, 1), "metric_name": s["metric_name"], "metric": s["metric"],
                     "near_duplicates": s["near_duplicates"], "nn_to_train_ratio": s["nn_to_train_ratio"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def verdicts(rows: list[dict], variants: list[str], reference: str = "plain") -> list[dict]:
    out = []
    for nfe in (20, 100):
        by = {v: [r["metric"] for r in rows if r["variant"] == v and r["nfe"] == nfe] for v in variants}
        base = by[reference]
        spread = lambda xs: max(xs) - min(xs) if len(xs) > 1 else float("nan")  # noqa: E731
        for v in variants:
            xs = by[v]
            allowed = statistics.mean(base) + max(spread(base), spread(xs))
            out.append({"variant": v, "nfe": nfe, "mean": statistics.mean(xs), "min": min(xs), "max": max(xs),
                        "steps": statistics.mean(r["steps"] for r in rows if r["variant"] == v and r["nfe"] == nfe),
                        "reference_mean": statistics.mean(base), "allowed": allowed,
                        "verdict": "equal or better" if statistics.mean(xs) <= allowed else "worse"})
    return out


def markdown(result: dict) -> str:
    if result.get("reference_steps"):
        costs = ", ".join(f"{k} {v:g}" for k, v in result["costs"].items())
        budget = (f"{result['reference_steps']} steps of {result['reference']}, the others scaled by the step costs "
                  f"({costs}: equal CPU time where those costs hold)")
    else:
        budget = f"{result['budget_cpu_s']:.0f} CPU-s per run"
    lines = [f"# Quality at equal CPU time: {result['preset']}, {budget}, seeds {result['seeds']}", "",
             f"{next((r['metric_name'] for r in result['rows'] if r['steps'] >= 0), 'FD')} of 1000 samples (default sampler, --nfe rule) against held-out data; "
             f"'allowed' = the reference's ({result.get('reference', 'plain')}) mean + the larger seed spread of the two.", "",
             "| variant | NFE | steps in budget | mean (min-max) | reference mean | allowed | verdict |",
             "|---|---|---|---|---|---|---|"]
    for v in result["verdicts"]:
        lines.append(f"| {v['variant']} | {v['nfe']} | {v['steps']:.0f} | {v['mean']:.3g} ({v['min']:.3g}-{v['max']:.3g}) "
                     f"| {v.get('reference_mean', v.get('plain_mean')):.3g} | {v['allowed']:.3g} | {v['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--budget", type=float, default=150.0, help="CPU seconds of training per run (one thread)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--variants", default="plain,lazy4,gp25_lazy4,nn1_lazy4")
    p.add_argument("--out", default="benchmarks/results/gp_quality")
    p.add_argument("--steps", type=int, default=0,
                   help="instead of a CPU budget on this net: the reference trains this many steps and every "
                        "other variant steps x cost(reference) / cost(variant), the costs given by --cost "
                        "(e.g. the mnist U-Net's step costs from make bench): quality at equal CPU time on "
                        "the net the costs come from, with this net as the model of quality per step")
    p.add_argument("--cost", default="", help="variant=step cost, comma-separated (with --steps)")
    p.add_argument("--reference", default="plain", choices=sorted(VARIANTS),
                   help="the variant every other one is judged against (run too, if not listed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (e.g. model.latent=AE for a latent preset)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from dmmd.presets import path as preset_path

    preset = str(preset_path(args.preset))
    variants = [v for v in args.variants.split(",") if v]
    if args.reference not in variants:
        variants.insert(0, args.reference)
    seeds = [int(s) for s in args.seeds.split(",")]
    costs = {k: float(v) for k, v in (item.split("=") for item in args.cost.split(",") if item)}
    if args.steps and not set(variants) <= set(costs):
        p.error(f"--steps needs a --cost for every variant: missing {sorted(set(variants) - set(costs))}")
    cfg = C.load(preset, args.overrides)
    data = load_dataset(cfg.data, cfg.seed)
    model_data, to_pixels = data, (lambda z: z)
    if cfg.model.latent:
        from dmmd.methods.latent import decode, for_config, latent_data

        model_data = latent_data(cfg, data, progress=False)
        ae = for_config(cfg)
        to_pixels = lambda z: decode(z, ae)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # seeds outermost: an interrupted run still has every variant at seed 0
            for v in variants:
                steps = round(args.steps * costs[args.reference] / costs[v]) if args.steps else None
                rows += run(preset, v, seed, args.budget, data, model_data, to_pixels, Path(tmp), args.overrides, steps)
    result = {"preset": args.preset, "budget_cpu_s": None if args.steps else args.budget, "seeds": seeds, "rows": rows,
              "reference": args.reference, "reference_steps": args.steps or None, "costs": costs or None,
              "verdicts": verdicts(rows, variants, args.reference), "torch": torch.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
