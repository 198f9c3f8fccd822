"""`dmmd compare`: DMMD against a DDPM on the same backbone, data and training budget.

Budget 'steps': both train for the same number of steps with the same batch size, backbone width
and optimizer (DMMD reads 2 B images per step, a clean and a corrupted batch; DDPM reads B).
Budget 'time': DDPM trains for as many seconds as DMMD took (up to 100x its steps), so the cheaper
step buys it more of them. Each is then sampled at every NFE of --nfe (DMMD as T levels x N_s
steps, see `dmmd_grid`, at the preset's step size; DDPM with its ancestral sampler and DDIM), timed
per sample, and scored against held-out data.

Tuning (on by default): per NFE, DMMD's sampler settings (T x N_s split, step size, re-noise) are
chosen from `tuning_grid` by the headline metric against the *training* split (never the held-out
data the table reports), and the chosen row is scored on held-out data like every other row.
Sampler ablations on the same DMMD network follow: exact vs approximate readings, and T x N_s at
fixed NFE; with --kernels, DMMD is also trained with other base kernels (exact sampler).

Writes OUT/compare.json, OUT/compare.md, OUT/metric_vs_nfe.png and OUT/grids.png (image data) or
OUT/scatter.png (2-D data).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import config as config_mod
from .checkpoint import atomic_write_text
from .data.datasets import Dataset
from .pipeline import build_process, calibrate, flow_settings, sample
from .training import train


def dmmd_grid(nfe: int) -> tuple[int, int]:
    """T x N_s for an NFE budget: 10 levels when NFE allows it (the paper's T), else NFE levels."""
    return (10, nfe // 10) if nfe >= 10 and nfe % 10 == 0 else (nfe, 1)


KERNEL_STEP_SIZES = (0.01, 0.1, 0.3, 1.0, 3.0)  # exact sampler, rbf/rq kernels: sample.kernel_step_size tried


def tuning_grid(nfe: int, renoise: float) -> list[dict]:
    """Sampler settings tried at one NFE: T x N_s from `dmmd_grid` (and NFE x 1 for NFE <= 20), a
    per-level travel eta N_s of 0.5, 1, 1.5 or 2 (the preset's 0.1 x 10 is 1), and re-noise of the
    preset or 0.1. Measured on digits (docs/compare.md): eta N_s near 1-2 at every NFE."""
    splits = {dmmd_grid(nfe)} | ({(nfe, 1)} if nfe <= 20 else set())
    return [{"num_levels": levels, "steps_per_level": steps, "step_size": travel / steps, "renoise": re}
            for levels, steps in sorted(splits) for travel in (0.5, 1.0, 1.5, 2.0)
            for re in sorted({renoise, 0.1})]


def score(z: torch.Tensor, data: Dataset) -> dict:
    """The headline metric and its companions: FD-digits for digits, the 8-Gaussian criteria for
    8 Gaussians, otherwise Frechet distance and energy distance on raw coordinates."""
    from .evaluation.diversity import diversity_report
    from .evaluation.metrics import energy_distance, frechet_distance

    flat, test = z.flatten(1).double(), data.test.flatten(1).double()
    if not torch.isfinite(flat).all():
        return {"metric": float("nan"), "metric_name": "non-finite samples"}
    div = diversity_report(flat, data.train.flatten(1).double(), test)
    out = {"near_duplicates": div["near_duplicate_share"], "nn_to_train_ratio": div["nn_to_train_ratio"]}
    if data.name == "digits":
        from .evaluation.digits_net import digits_scores

        d = digits_scores(z, data.test)
        return {"metric_name": "FD-digits", "metric": d["fd_digits"], **d, **out}
    if data.name == "eight_gaussians":
        from .report import eight_gaussians_scores

        out.update(eight_gaussians_scores(z))
    return {"metric_name": "FD (raw)", "metric": frechet_distance(flat, test), "energy": energy_distance(flat, test),
            **out}


def _timed_sample(model, cfg, stats, process, data, n, seed) -> tuple[torch.Tensor, float]:
    started = time.time()
    z = sample(model, cfg, stats, process, data.shape, n, seed)
    return z, (time.time() - started) / n


def _dmmd_row(model, cfg, stats, process, data, n, seed, label, **sample_changes):
    cfg = copy.deepcopy(cfg)
    for k, v in sample_changes.items():
        setattr(cfg.sample, k, v)
    s = cfg.sample
    if s.sampler == "approx" and s.reading == "replay" or (s.sampler == "exact" and cfg.model.kernel == "linear"):
        stats = calibrate(model, cfg, data.train, process, stats, flow_settings(s))
    ref = data.train[:s.num_reference] if cfg.model.kernel != "linear" else None
    started = time.time()
    z = sample(model, cfg, stats, process, data.shape, n, seed, reference=ref)
    per_sample = (time.time() - started) / n
    return {"model": label, "sampler": s.sampler, "reading": s.reading if s.sampler == "approx" else "-",
            "nfe": s.num_levels * s.steps_per_level, "T": s.num_levels, "Ns": s.steps_per_level,
            "eta": (s.kernel_step_size or s.step_size) if cfg.model.kernel != "linear" and s.sampler == "exact"
            else s.step_size, "renoise": s.renoise,
            "seconds_per_sample": per_sample, **score(z, data)}, z, stats


def _tune(model, cfg, stats, process, data, candidates, num_samples, seed) -> tuple[dict, list[dict], dict]:
    """Of `candidates` (sample.* changes), the one with the best headline metric against the
    training split (never the held-out data); returns (chosen change, trials, stats)."""
    selection = Dataset(data.train, data.train[: len(data.test)], data.kind, data.name)
    trials = []
    for change in candidates:
        row, _, stats = _dmmd_row(model, cfg, stats, process, selection, num_samples, seed, "trial", **change)
        trials.append({**change, "train_metric": row["metric"]})
    finite = [t for t in trials if np.isfinite(t["train_metric"])] or trials
    best = min(finite, key=lambda t: t["train_metric"])
    return {k: v for k, v in best.items() if k != "train_metric"}, trials, stats


def run_compare(cfg: config_mod.Config, data: Dataset, out: Path, nfes=(10, 20, 50, 100), num_samples: int = 1000,
                kernels: tuple[str, ...] = (), seed: int = 0, progress: bool = True, echo=print,
                budget: str = "steps", tune: bool = True) -> dict:
    if budget not in ("steps", "time"):
        raise ValueError(f"budget must be 'steps' or 'time', got {budget!r}")
    out.mkdir(parents=True, exist_ok=True)
    process = build_process(cfg.process)
    trained, train_seconds, train_steps = {}, {}, {}
    ddpm_cfg = copy.deepcopy(cfg)
    ddpm_cfg.method, ddpm_cfg.sample.sampler = "ddpm", "ddpm"
    for name, c in [("dmmd", cfg), ("ddpm", ddpm_cfg)]:
        seconds = None
        if name == "ddpm" and budget == "time":
            c.train.steps, seconds = 100 * cfg.train.steps, train_seconds["dmmd"]
        started = time.time()
        echo(f"training {name} for " + (f"{seconds:.0f} s" if seconds else f"{c.train.steps} steps"))
        state = train(c, data.train, out / name, progress=progress, val_data=data.test, max_seconds=seconds)
        train_seconds[name], train_steps[name] = round(time.time() - started, 1), state.step
        trained[name] = (c, state.ema.module.eval().requires_grad_(False), state.stats or {})
    rows, grids, tuning = [], {}, {}
    c, model, stats = trained["dmmd"]
    for nfe in nfes:
        levels, steps = dmmd_grid(nfe)
        row, z, stats = _dmmd_row(model, c, stats, process, data, num_samples, seed, "dmmd",
                                  num_levels=levels, steps_per_level=steps)
        rows.append(row)
        grids[("dmmd", nfe)] = z
        echo(json.dumps({k: row[k] for k in ("model", "nfe", "metric")}))
        if tune:
            best, trials, stats = _tune(model, c, stats, process, data, tuning_grid(nfe, c.sample.renoise),
                                        num_samples, seed)
            echo(f"tuned NFE {nfe}: {best}")
            row, z, stats = _dmmd_row(model, c, stats, process, data, num_samples, seed, "dmmd tuned", **best)
            rows.append(row)
            tuning[nfe] = {"chosen": best, "trials": trials}
            grids[("dmmd tuned", nfe)] = z
            echo(json.dumps({k: row[k] for k in ("model", "nfe", "metric")}))
    dc, dmodel, _ = trained["ddpm"]
    for method in ("ddpm", "ddim"):
        for nfe in nfes:
            dcfg = copy.deepcopy(dc)
            dcfg.sample.sampler, dcfg.sample.num_steps = method, nfe
            z, per_sample = _timed_sample(dmodel, dcfg, {}, process, data, num_samples, seed)
            rows.append({"model": "ddpm", "sampler": method, "reading": "-", "nfe": nfe, "T": "-", "Ns": "-",
                         "seconds_per_sample": per_sample, **score(z, data)})
            grids[(method, nfe)] = z
            echo(json.dumps({k: rows[-1][k] for k in ("model", "sampler", "nfe", "metric")}))
    ablations = []
    for label, change in [("exact", {"sampler": "exact"}), ("approx (a) own", {"sampler": "approx", "reading": "own"}),
                          ("approx (b) data_noised", {"sampler": "approx", "reading": "data_noised"}),
                          ("approx (c) replay", {"sampler": "approx", "reading": "replay"}),
                          ("T x N_s = 20 x 5", {"num_levels": 20, "steps_per_level": 5}),
                          ("T x N_s = 5 x 20", {"num_levels": 5, "steps_per_level": 20}),
                          ("T x N_s = 50 x 2", {"num_levels": 50, "steps_per_level": 2})]:
        row, _, stats = _dmmd_row(model, c, stats, process, data, num_samples, seed, f"dmmd: {label}", **change)
        ablations.append(row)
    for kernel in kernels:
        kc = copy.deepcopy(cfg)
        kc.model.kernel, kc.sample.sampler = kernel, "exact"
        started = time.time()
        state = train(kc, data.train, out / f"dmmd_{kernel}", progress=progress, val_data=data.test)
        train_seconds[f"dmmd_{kernel}"] = round(time.time() - started, 1)
        kmodel = state.ema.module.eval().requires_grad_(False)
        change = {}
        if tune:  # pairwise repulsion needs its own step size (SPEC 8): chosen on the training split
            change, trials, _ = _tune(kmodel, kc, {}, process, data,
                                      [{"kernel_step_size": eta} for eta in KERNEL_STEP_SIZES], num_samples, seed)
            tuning[f"{kernel}_kernel"] = {"chosen": change, "trials": trials}
        row, _, _ = _dmmd_row(kmodel, kc, {}, process, data, num_samples, seed, f"dmmd: {kernel} kernel (exact)", **change)
        ablations.append(row)
    note = ("same steps and batch size; DMMD reads 2 batches per step (clean and corrupted)" if budget == "steps"
            else "same wall-clock: DDPM trained for as long as DMMD took; same batch size")
    result = {"budget": {"kind": budget, "steps": train_steps, "batch_size": cfg.train.batch_size, "note": note},
              "train_seconds": train_seconds, "rows": rows, "ablations": ablations, "num_samples": num_samples,
              "tuning": {"selected_on": "training split (headline metric)", "per_nfe": tuning}}
    atomic_write_text(out / "compare.json", json.dumps(result, indent=2, default=float) + "\n")
    atomic_write_text(out / "compare.md", markdown(result))
    plot_metric(out / "metric_vs_nfe.png", rows)
    save_grids(out, grids, data, max(nfes))
    return result


def markdown(result: dict) -> str:
    def table(rows):
        name = rows[0]["metric_name"]
        lines = [f"| model | sampler | NFE | T x N_s | eta | {name} | near-dup | NN-to-train ratio | s / sample |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            eta = f"{r['eta']:.3g}" if "eta" in r else "-"
            lines.append(f"| {r['model']} | {r['sampler']}{'' if r['reading'] == '-' else ' ' + r['reading']} | "
                         f"{r['nfe']} | {r['T']} x {r['Ns']} | {eta} | {r['metric']:.4g} | "
                         f"{r['near_duplicates']:.3f} | {r['nn_to_train_ratio']:.2f} | {r['seconds_per_sample']:.2e} |")
        return "\n".join(lines)

    b = result["budget"]
    return (f"# DMMD vs DDPM (same backbone)\n\nBudget ({b['kind']}): steps {b['steps']}, batch {b['batch_size']} "
            f"({b['note']}).\n"
            f"Training time (s): {result['train_seconds']}. {result['num_samples']} samples per row.\n\n"
            f"{table(result['rows'])}\n\n## Ablations (DMMD)\n\n{table(result['ablations'])}\n")


def plot_metric(path: Path, rows: list[dict]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for label in sorted({(r["model"], r["sampler"]) for r in rows}):
        pts = sorted((r["nfe"], r["metric"]) for r in rows if (r["model"], r["sampler"]) == label)
        ax.plot(*zip(*pts), marker="o", label=f"{label[0]} ({label[1]})")
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(rows[0]["metric_name"])
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda fh: fh.write(buffer.getvalue()))


def save_grids(out: Path, grids: dict, data: Dataset, nfe: int) -> None:
    """DMMD and DDPM samples at the largest NFE side by side."""
    from .plotting import image_grid, save_samples_picture

    if data.kind == "image":
        from PIL import Image

        tiles = [image_grid(grids[(k, nfe)][:64].numpy(), nrow=8, scale=max(1, 32 // data.shape[-1]))
                 for k in ("dmmd", "ddpm")]
        gap = np.full((tiles[0].shape[0], 8, tiles[0].shape[2]), 255, dtype=np.uint8)
        pixels = np.concatenate([tiles[0], gap, tiles[1]], axis=1)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(out / "grids.png")
    else:
        for k in ("dmmd", "ddpm"):
            save_samples_picture(out / f"scatter_{k}.png", grids[(k, nfe)].numpy(), data.kind,
                                 data.test.numpy(), title=f"{k}, NFE {nfe}")
