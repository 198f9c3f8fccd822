"""`dmmd compare`: DMMD against DDPM and flow matching, fair by construction (docs/compare.md).

- Same backbone, optimiser, batch, EMA and data scaling: every method trains from the one config
  (`method` switched; DDPM and flow matching get an output head of the data's shape).
- Same training budget in CPU seconds (time.process_time at one thread; wall time reported
  beside it): each method trains until its CPU time reaches each point of `points` (e.g. 25, 50
  and 100% of the budget), and is scored at every point, so the table shows who has converged.
  The replay DMMD's default sampler needs is made at the end of training, inside its budget: its
  cost is measured once before training (on the untrained network, the same compute) and training
  stops that much earlier, so every method reaches the same CPU points. Replays for other sampler
  settings are reported apart (replay_cpu_s), like sampling time.
- Two axes of compute: every row carries its sampling CPU seconds per 1000 samples, and the
  table gains a view at equal sampling CPU (each method's best NFE within the cost of DMMD's).
- Same care for every sampler: at each NFE every method tries the same number of sampler
  settings (`candidates`: its default and its natural alternative), each scored on the training
  split (selection) and on held-out data (report); the row chosen on the training split is the
  "tuned" row. Every setting's held-out score is kept in compare.json.
- NFE counts network evaluations (a DMMD step is one forward pass and its input gradient; Heun's
  last step is Euler, so it spends 2 S - 1 <= NFE).

Writes OUT/compare.json, OUT/compare.md, OUT/metric_vs_nfe.png, and OUT/grids_nfe<N>.png (image
data: labelled sample grids) or OUT/scatter_<method>.png (2-D data).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch

from dmmd import config as config_mod
from dmmd.apps.compare_tables import equal_sampling_cpu, markdown, verdict_lines, write_tables  # noqa: F401 (API)
from dmmd.data.datasets import Dataset
from dmmd.evaluation.digits_net import digits_scores
from dmmd.evaluation.diversity import diversity_report
from dmmd.evaluation.fashion_net import fashion_scores
from dmmd.evaluation.metrics import energy_distance, frechet_distance
from dmmd.evaluation.plotting import image_grid, save_samples_picture
from dmmd.evaluation.report import eight_gaussians_scores, reconstruction_floor
from dmmd.methods.build import build_model, build_process, flow_settings
from dmmd.methods.latent import decode, for_config, latent_data
from dmmd.methods.sample import calibrate, dmmd_split, needs_calibration, reference_rows, sample, settings_for_nfe
from dmmd.methods.sample import nfe as evaluations
from dmmd.runtime.checkpoint import atomic_write_bytes
from dmmd.training.loop import UNBOUNDED_STEPS, train

METHODS = ("dmmd", "ddpm", "fm")
DIVERSITY_TRAIN = 10000  # training points of the nearest-training figure (all 60000 in 784-D: minutes a cell)


def dmmd_grid(nfe: int) -> tuple[int, int]:
    """T x N_s for an NFE budget (kept for callers of the old name): `pipeline.dmmd_split`."""
    return dmmd_split(nfe)


def candidates(method: str) -> list[tuple[str, dict]]:
    """The sampler settings every method tries at each NFE, its default first (the same count for
    every method). DMMD: the --nfe rule's step size and twice it; DDPM: ancestral and DDIM (eta 0),
    both with x0 clipped for bounded data; flow matching: Euler and Heun."""
    return {"dmmd": [("default", {}), ("step x2", {"step_size_factor": 2.0})],
            "ddpm": [("ancestral", {"sampler": "ddpm"}), ("ddim", {"sampler": "ddim", "ddim_eta": 0.0})],
            "fm": [("euler", {"sampler": "euler"}), ("heun", {"sampler": "heun"})]}[method]


def method_config(cfg: config_mod.Config, method: str) -> config_mod.Config:
    """cfg with another method on the same backbone and training settings; its default sampler."""
    c = copy.deepcopy(cfg)
    c.method = method
    config_mod.apply_method_defaults(c)
    config_mod.validate(c)
    return c


def score(z: torch.Tensor, data: Dataset, reference: torch.Tensor | None = None, diversity: bool = True) -> dict:
    """The headline metric and its companions against `reference` (default: held-out data):
    FD-digits / FD-fashion in the shipped classifiers' features, the 8-Gaussian criteria, else
    the Frechet distance and energy distance on raw coordinates. diversity=False skips the
    near-duplicate and nearest-training figures (nearest neighbours among all training images:
    the costly part in 784 dimensions), as the selection score on the training split does."""

    reference = data.test if reference is None else reference
    flat, ref = z.flatten(1).double(), reference.flatten(1).double()
    if not torch.isfinite(flat).all():
        return {"metric": float("nan"), "metric_name": "non-finite samples"}
    out = {}
    if diversity:
        # at the samples' size (nearest-neighbour distances depend on it), against at most
        # DIVERSITY_TRAIN training points: the figures are ratios to the held-out ones, which see the same
        n = len(flat)
        div = diversity_report(flat, data.train[:DIVERSITY_TRAIN].flatten(1).double(), data.test[:n].flatten(1).double())
        out = {"near_duplicates": div["near_duplicate_share"], "nn_to_train_ratio": div["nn_to_train_ratio"]}
    if data.name == "digits":
        d = digits_scores(z, reference)
        return {"metric_name": "FD-digits", "metric": d["fd_digits"], **d, **out}
    if data.name == "fashion_mnist":
        d = fashion_scores(z, reference)
        return {"metric_name": "FD-fashion", "metric": d["fd_fashion"], **d, **out}
    if data.name == "eight_gaussians":
        out.update(eight_gaussians_scores(z))
    return {"metric_name": "FD (raw)", "metric": frechet_distance(flat, ref), "energy": energy_distance(flat, ref),
            **out}


def selection_rows(data: Dataset) -> torch.Tensor:
    """The training subset sampler settings are chosen on: as many training rows as held-out ones,
    in a fixed random order (seed 1)."""
    return data.train[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))[: len(data.test)]]


def _sampler_config(cfg: config_mod.Config, nfe: int, change: dict) -> config_mod.Config:
    c = copy.deepcopy(cfg)
    settings_for_nfe(c, nfe)
    change = dict(change)
    c.sample.step_size *= change.pop("step_size_factor", 1.0)
    for k, v in change.items():
        setattr(c.sample, k, v)
    config_mod.validate(c)
    return c


def end_of_training_cpu(cfg: config_mod.Config, model_data: Dataset, process) -> float:
    """CPU seconds the work after the last training step costs: DMMD's calibration (level means and
    the replay), timed on an untrained network of the same shape (the same compute); 0 for the others."""
    if cfg.method != "dmmd":
        return 0.0
    model = build_model(cfg, model_data.shape).eval().requires_grad_(False)
    cpu = time.process_time()
    calibrate(model, cfg, model_data.train, process, None)
    return time.process_time() - cpu


def _sample_rows(method, cfg, model, stats, process, data, nfes, num_samples, seed, point, selection_ref,
                 model_data: Dataset | None = None, to_pixels=None):
    """Every candidate at every NFE: held-out and training-split scores; the chosen (tuned) row per NFE.
    A latent race passes the latents as `model_data` (calibration, sample shape) and the decoder as
    `to_pixels`; scores are always on `data`, in pixels."""
    model_data = data if model_data is None else model_data
    rows, grids, extra_cpu = [], {}, 0.0
    for nfe in nfes:
        trials = []
        for label, change in candidates(method):
            c = _sampler_config(cfg, nfe, change)
            if needs_calibration(model, c, stats):
                cpu = time.process_time()
                stats = calibrate(model, c, model_data.train, process, stats, flow_settings(c.sample))
                extra_cpu += time.process_time() - cpu
            cpu, wall = time.process_time(), time.time()
            z = sample(model, c, stats, process, model_data.shape, num_samples, seed,
                       reference=reference_rows(c, model_data.train))
            if to_pixels is not None:
                z = to_pixels(z)
            cpu, wall = time.process_time() - cpu, time.time() - wall
            held = score(z, data)
            train_metric = score(z, data, selection_ref, diversity=False)["metric"]
            s = c.sample
            trials.append({"method": method, "budget_point": point, "nfe": nfe, "nfe_used": evaluations(c),
                           "setting": label, "sampler": s.sampler,
                           "T": s.num_levels if method == "dmmd" else "-",
                           "Ns": s.steps_per_level if method == "dmmd" else "-",
                           "eta": s.step_size if method == "dmmd" else (s.ddim_eta if s.sampler == "ddim" else "-"),
                           "train_metric": train_metric, "cpu_seconds_per_sample": cpu / num_samples,
                           "sampling_cpu_s_per_1000": 1000 * cpu / num_samples,
                           "wall_seconds_per_sample": wall / num_samples, **held})
            grids[(label, nfe)] = z
        finite = [t for t in trials if np.isfinite(t["train_metric"])] or trials
        best = min(finite, key=lambda t: t["train_metric"])
        for t in trials:
            t["default"], t["chosen"] = t is trials[0], t is best
        rows += trials
    return rows, grids, stats, extra_cpu


def run_compare(cfg: config_mod.Config, data: Dataset, out: Path, nfes=(10, 20, 50, 100), num_samples: int = 1000,
                budget: float = 300.0, points=(0.25, 0.5, 1.0), methods=METHODS, seed: int = 0,
                progress: bool = True, echo=print) -> dict:
    """Train each method to CPU-time `budget` (seconds, one thread), scoring every sampler candidate
    at every NFE at each fraction in `points` of the budget; write the tables and pictures.
    With cfg.model.latent every method trains and samples in that autoencoder's latents (encoded
    once, outside the budgets, like the autoencoder's own training); samples are decoded and scored
    in pixels beside the reconstruction floor."""
    if budget <= 0 or not points or any(not 0 < p <= 1 for p in points):
        raise ValueError("budget must be > 0 and every point in (0, 1]")
    out.mkdir(parents=True, exist_ok=True)
    process = build_process(cfg.process)
    selection_ref = selection_rows(data)
    model_data, to_pixels, floor = data, None, None
    if cfg.model.latent:
        cfg = copy.deepcopy(cfg)
        model_data = latent_data(cfg, data, progress=progress)  # records the autoencoder's path and identity
        ae = for_config(cfg)
        floor = reconstruction_floor(ae, data, num_samples)
        to_pixels = lambda z: decode(z, ae)  # noqa: E731
        echo(f"latent race: {model_data.shape[0]} latents of {cfg.model.latent}; reconstruction floor {floor}")
    rows, runs, final_grids = [], {}, {}
    methods = tuple(methods)
    facts = {"data": data.name, "budget_cpu_s": budget, "points": list(points), "num_samples": num_samples,
             "nfes": list(nfes), "backbone": {k: v for k, v in config_mod.to_dict(cfg)["model"].items()},
             "batch_size": cfg.train.batch_size,
             "selection": "each method's candidates scored against a training subset the size of the held-out set; "
                          "the best is the 'tuned' row, reported on held-out data",
             "candidates": {m: [label for label, _ in candidates(m)] for m in methods},
             "latent": cfg.model.latent or None, "reconstruction_floor": floor}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time at one thread: the unit of the budget
    try:
        for method in methods:
            c = method_config(cfg, method)
            c.train.steps, c.train.threads, c.train.best_by = UNBOUNDED_STEPS, 1, "none"  # the budget stops training
            spent_cpu, spent_wall, steps = 0.0, 0.0, []
            reserve = end_of_training_cpu(c, model_data, process)  # counted in the budget at every point
            for point in sorted(points):
                target = point * budget
                cpu, wall = time.process_time(), time.time()
                echo(f"training {method} to {target:.0f} CPU-s" + (f" ({reserve:.1f} of them for the end-of-"
                                                                   "training calibration)" if reserve else ""))
                state = train(c, model_data.train, out / method, resume=spent_cpu > 0, progress=progress,
                              max_seconds=max(0.0, target - spent_cpu - reserve), clock=time.process_time)
                spent_cpu += time.process_time() - cpu
                spent_wall += time.time() - wall
                model = state.ema.module.eval().requires_grad_(False)
                new, grids, _, calibration_cpu = _sample_rows(method, c, model, state.stats or {}, process, data,
                                                              nfes, num_samples, seed, point, selection_ref,
                                                              model_data, to_pixels)
                steps.append({"point": point, "step": state.step, "train_cpu_s": round(spent_cpu, 1),
                              "train_wall_s": round(spent_wall, 1), "replay_cpu_s": round(calibration_cpu, 1),
                              "end_of_training_cpu_s": round(reserve, 4)})
                for r in new:
                    r.update(train_cpu_s=round(spent_cpu, 1), train_step=state.step)
                rows += new
                final_grids[method] = grids
                best = {r["nfe"]: round(r["metric"], 3) for r in new if r["chosen"]}
                echo(f"{method} at {spent_cpu:.0f} CPU-s (step {state.step}): tuned {best}")
                runs[method] = steps
                if (method, point) != (methods[-1], max(points)):  # a long race's results as they come
                    write_tables(out, {**facts, "runs": runs, "rows": rows, "partial": True})
    finally:
        torch.set_num_threads(threads)
    result = write_tables(out, {**facts, "runs": runs, "rows": rows})
    final = [r for r in rows if r["budget_point"] == max(points)]
    plot_metric(out / "metric_vs_nfe.png", final, title=f"{data.name}: {final[0]['metric_name'] if final else 'metric'} "
                f"against NFE after {budget:g} CPU-s of training per method")
    save_grids(out, final_grids, data, nfes)
    return result


def plot_metric(path: Path, rows: list[dict], title: str = "") -> None:
    """Each method's metric against NFE; the y axis spans at most 30x the best value (points above
    it sit on the top edge, marked ^), so one diverged cell cannot squash the others."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    for label in sorted({(r["method"], r["setting"]) for r in rows}):
        pts = sorted((r["nfe"], r["metric"]) for r in rows if (r["method"], r["setting"]) == label)
        ax.plot(*zip(*pts), marker="o", label=f"{label[0]} ({label[1]})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    values = [r["metric"] for r in rows if r["metric"] > 0 and math.isfinite(r["metric"])]
    if values:
        top = min(max(values) * 1.3, min(values) * 30)
        ax.set_ylim(min(values) / 1.3, top)
        clipped = [(r["nfe"], top) for r in rows if r["metric"] > top or not math.isfinite(r["metric"])]
        if clipped:
            ax.plot(*zip(*clipped), linestyle="none", marker="^", color="black", label="above the axis")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("NFE")
    ax.set_ylabel(rows[0]["metric_name"] if rows else "metric")
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda fh: fh.write(buffer.getvalue()))


def save_grids(out: Path, grids: dict, data: Dataset, nfes) -> None:
    """Each method's default-setting samples at the smallest and largest NFE, labelled."""

    for nfe in sorted({min(nfes), max(nfes)}):
        if data.kind == "image":
            _labelled_grids(out / f"grids_nfe{nfe}.png",
                            [(f"{m} ({candidates(m)[0][0]}), NFE {nfe}", g[(candidates(m)[0][0], nfe)])
                             for m, g in grids.items()])
        elif data.shape == (2,):
            for m, g in grids.items():
                save_samples_picture(out / f"scatter_{m}_nfe{nfe}.png", g[(candidates(m)[0][0], nfe)].numpy(),
                                     data.kind, data.test.numpy(), title=f"{m}, NFE {nfe}")


def _labelled_grids(path: Path, panels: list[tuple[str, torch.Tensor]]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=100, squeeze=False)
    for ax, (title, z) in zip(axes[0], panels):
        tile = image_grid(z[:64].numpy(), nrow=8, scale=1)
        ax.imshow(tile[..., 0] if tile.shape[-1] == 1 else tile, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda fh: fh.write(buffer.getvalue()))
