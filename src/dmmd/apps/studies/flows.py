"""Adaptive against fixed kernels: the DMMD flow against fixed-bandwidth RBF MMD flows on 2-D toys.

Fixed-width MMD flow (Arbel et al. 2019, "Maximum Mean Discrepancy Gradient Flow"), on raw
coordinates, N particles z_i, data x_1..x_M, RBF kernel k of a fixed width w:

    z_i <- z_i - eta * grad f(z_i + beta u_i),   u_i ~ N(0, I),
    f(z) = mean_l k(z, z_l) - mean_j k(z, x_j)    (witness of the particles against the data),

the population z_l held at the particles' current (not noised) positions; beta = 0 is the plain
flow, beta > 0 their noise injection (constant beta here). With beta = 0 one step is
z - eta * (N/2) * grad_z MMD2_biased(z, x). The gradient is written in closed form,
grad_z k(z, y) = -(z - y) k(z, y) / w^2, so a step costs one N x (N + M) kernel block, no autograd.

DMMD: the eight_gaussians preset (linear kernel on FiLM-MLP features), exact sampler, its own
sampler settings (T x N_s = 10 x 10, eta, injection, re-noising), run one step at a time so that
every step's particles can be scored; the steps are the library's exact_flow, bit for bit.

Scores, against held-out data: a fixed reference metric, the unbiased RBF MMD^2 with the median
heuristic bandwidth of the held-out data (fixed once, so curves are comparable across
iterations), and the energy distance; for 8 Gaussians the mode criteria of dmmd.evaluation.report. The fixed
flows get their best step size from a grid (eta = c w^2, c = 1, 4, 16, 64, the explicit-Euler
stable range; chosen by the final reference MMD^2 of a 250-particle run), so they are compared
at their best, not at DMMD's eta.

``dmmd study flows --out DIR`` writes DIR/flows_<toy>.png (MMD^2 against iteration),
DIR/flows.md (final-score table) and DIR/flows.json (all curves); ``--quick`` is a reduced run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dmmd.apps.studies.kernel_width import echo, preset
from dmmd.config import set_value, to_dict
from dmmd.data.datasets import load_dataset
from dmmd.evaluation.metrics import energy_distance, median_heuristic, mmd_rbf
from dmmd.evaluation.report import eight_gaussians_scores
from dmmd.math import divergences as dv
from dmmd.math.noising import time_grid
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.mmd_flow import FlowSettings, ParticleNoise, approx_flow, exact_flow, level_features
from dmmd.training.loop import train

TOYS = ("eight_gaussians", "two_moons", "checkerboard", "swiss_roll")


# ----------------------------------------------------------------------------- fixed-width flow
def rbf_witness_gradient(z_eval: Tensor, population: Tensor, x: Tensor, width: float) -> Tensor:
    """grad of f(z) = mean_j k(z, x_j) - mean_l k(z, population_l) at z_eval: (N, d) -> (N, d).

    Closed form, grad_z k(z, y) = (y - z) k(z, y) / w^2:
    grad f(z) = [K_zx x / M - z rowmean(K_zx) - K_zp p / N + z rowmean(K_zp)] / w^2."""
    k_zx = dv.rbf_kernel(z_eval, x, width)  # (N, M)
    k_zp = dv.rbf_kernel(z_eval, population, width)  # (N, N)
    data = k_zx @ x / x.shape[0] - z_eval * k_zx.mean(1, keepdim=True)
    particles = k_zp @ population / population.shape[0] - z_eval * k_zp.mean(1, keepdim=True)
    return (data - particles) / (width * width)


def fixed_width_step(z: Tensor, x: Tensor, width: float, step_size: float, noise_level: float = 0.0,
                     generator: torch.Generator | None = None) -> Tensor:
    """One step of the (noisy) fixed-width MMD flow; returns new particles (z is not modified)."""
    z_eval = z
    if noise_level:
        z_eval = z + noise_level * torch.randn(z.shape, generator=generator, dtype=z.dtype)
    return z + step_size * rbf_witness_gradient(z_eval, z, x, width)


def fixed_width_flow(z: Tensor, x: Tensor, width: float, step_size: float, num_steps: int,
                     noise_level: float = 0.0, seed: int = 0,
                     record: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """num_steps steps from z; record(step, particles) is called after each step (step from 1)."""
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, num_steps + 1):
        z = fixed_width_step(z, x, width, step_size, noise_level, gen)
        if record is not None:
            record(step, z)
    return z


# ---------------------------------------------------------------------------- DMMD, step by step
def dmmd_flow_by_step(disc, cfg, stats: dict, process, shape: tuple[int, ...], num_particles: int, seed: int,
                      reference: Tensor | None = None,
                      record: Callable[[int, int, Tensor], None] | None = None) -> Tensor:
    """The sampler of cfg.sample (exact, or approx with any reading), one step at a time;
    record(step, level, particles) after each step (step from 1). Noise is drawn in the order
    run_flow draws it (injection per step, re-noising after each level but the last), so the
    result equals dmmd.methods.sample.sample with the same seed. reference: data for the exact sampler
    with a non-linear kernel (the linear kernel uses stats['data_mean'])."""
    s, settings = cfg.sample, flow_settings(cfg.sample)
    if s.sampler not in ("exact", "approx"):
        raise ValueError(f"step-by-step flows cover the exact and approx samplers, not {s.sampler!r}")
    grid = time_grid(process, settings.num_levels, settings.grid)
    if s.sampler == "exact" and disc.kernel_name != "linear":
        ref = level_features(disc, reference, grid, reduce_mean=False)
    else:
        ref = stats["data_mean"]
    noise = ParticleNoise(seed, num_particles, shape)
    z = noise.prior(process)
    one = FlowSettings(**{**settings.__dict__, "num_levels": 1, "steps_per_level": 1, "renoise": 0.0})
    step = 0
    for k, t in enumerate(grid.tolist()):
        level = grid[k:k + 1]
        for _ in range(settings.steps_per_level):
            if s.sampler == "exact":
                z, _ = exact_flow(disc, z, level, one, process, ref[k:k + 1], noise)
            else:
                term, scales = {"own": None, "data_noised": stats["noised_mean"][k:k + 1]}.get(s.reading), None
                if s.reading == "replay":
                    term = stats["replay"][settings.tag()][step:step + 1]
                    if settings.step_norm == "gradient":  # the replay's step scale of this step
                        scales = stats["replay_scale"][settings.tag()][step:step + 1]
                z = approx_flow(disc, z, level, one, process, ref[k:k + 1], term, per_step=s.reading == "replay",
                                noise=noise, step_scales=scales)
            step += 1
            if record is not None:
                record(step, k, z)
        if settings.renoise and k < len(grid) - 1:
            z = z + settings.renoise * float(process.noise_scale(torch.tensor(t))) * noise.draw()
    return z


def trained_preset(name: str, run_dir: Path, overrides: Sequence[str] = (), checkpoint: str | None = None,
                   log=None):
    """(cfg, EMA discriminator, stats) of configs/<name>.toml: from `checkpoint` if given, from
    run_dir if it already holds a final checkpoint of the same training settings, else trained
    into run_dir. A run_dir trained with other settings (a --quick run, say) is an error."""
    log = log or echo
    wanted = preset(name, overrides)
    cached = checkpoint is None and (Path(run_dir) / "checkpoints" / "final.pt").is_file()
    if checkpoint is None and not cached:
        data = load_dataset(wanted.data, wanted.seed)
        started = time.time()
        train(wanted, data.train, run_dir, progress=False)
        log(f"trained {name} ({wanted.train.steps} steps) in {time.time() - started:.0f} s")
    cfg, disc, stats, _ = load_model(checkpoint or str(run_dir))
    if cached:
        def training_part(c):
            return {k: v for k, v in to_dict(c).items() if k != "sample"}

        if training_part(cfg) != training_part(wanted):
            raise ValueError(f"{run_dir} holds a {name} run trained with other settings than this study's; "
                             "give another --runs folder (or remove that one)")
        log(f"reusing the trained {name} in {run_dir}")
    return cfg, disc, stats


# ------------------------------------------------------------------------------------ the study
@dataclass
class FlowStudySettings:
    widths: tuple[float, ...] = (0.05, 0.1, 0.3, 1.0)
    noise_factors: tuple[float, ...] = (0.0, 1.0)  # Arbel noise beta = factor * width (0 = plain flow)
    step_factors: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0)  # candidate eta = factor * width^2
    num_steps: int = 500  # fixed-width flows (DMMD takes its T x N_s = 100)
    num_particles: int = 1000
    num_data: int = 1000  # training points in the fixed flows' data term
    num_test: int = 2000  # held-out points for the scores
    tune_particles: int = 250  # population of the step-size search
    tune_data: int = 250
    num_records: int = 30  # log-spaced scoring steps of the fixed flows
    dmmd_overrides: list[str] = field(default_factory=lambda: ["sample.sampler=exact"])
    seed: int = 0


FULL = FlowStudySettings()
QUICK = FlowStudySettings(widths=(0.1, 1.0), noise_factors=(0.0, 1.0), step_factors=(1.0, 16.0), num_steps=30,
                          num_particles=200, num_data=300, num_test=300, tune_particles=50, tune_data=100, num_records=5, dmmd_overrides=["sample.sampler=exact", "train.steps=10",
                                                         "sample.replay_particles=50", "data.num_points=2000"])


class Scorer:
    """Reference scores of particles against held-out data: RBF MMD^2 with a bandwidth fixed once
    (median heuristic of the held-out data) and the energy distance."""

    def __init__(self, test: Tensor):
        self.test = test.double()
        self.bandwidth = median_heuristic(self.test, self.test)

    def __call__(self, z: Tensor) -> dict:
        z = z.detach().double()
        if not torch.isfinite(z).all():
            return {"mmd2": math.nan, "energy": math.nan}
        return {"mmd2": mmd_rbf(z, self.test, self.bandwidth), "energy": energy_distance(z, self.test)}


def record_steps(num_steps: int, num_records: int, always: Sequence[int] = (100,)) -> list[int]:
    steps = set(np.unique(np.round(np.geomspace(1, num_steps, num_records))).astype(int).tolist())
    return sorted(steps | {s for s in always if s <= num_steps} | {num_steps})


def best_fixed_flow(z0: Tensor, x: Tensor, scorer: Scorer, width: float, noise: float, st: FlowStudySettings,
                    steps: Sequence[int]) -> dict:
    """The fixed-width flow at its best step size. Each candidate eta = c w^2 (c in st.step_factors)
    runs on a smaller population (st.tune_particles particles, st.tune_data data points); the one
    with the lowest final reference MMD^2 is then run on the full population, scored at `steps`.
    c <= 64 keeps explicit Euler stable wherever the kernel mass near a particle is >= 1/32 (the
    witness Hessian is at most mass / w^2, stability needs eta < 2 w^2 / mass); larger steps make
    particles jump by many kernel widths: a different algorithm. Returns eta, particles, curve and
    every candidate's tuning score."""
    tuning = {}
    for c in sorted(st.step_factors):
        eta = c * width * width
        z = fixed_width_flow(z0[: st.tune_particles], x[: st.tune_data], width, eta, st.num_steps, noise * width, st.seed)
        value = scorer(z)["mmd2"]
        tuning[eta] = value if math.isfinite(value) else math.inf
    eta = min(tuning, key=tuning.get)
    curve: dict[str, list] = {"step": [], "mmd2": [], "energy": []}

    def record(step, z):
        if step in steps:
            for k, v in {"step": step, **scorer(z)}.items():
                curve[k].append(v)

    z = fixed_width_flow(z0, x, width, eta, st.num_steps, noise * width, st.seed, record)
    return {"step_size": eta, "z": z, "curve": curve, "tuning": {f"{e:g}": v for e, v in tuning.items()}}


def _final_row(label: str, z: Tensor, curve: dict, name: str, extra: dict) -> dict:
    row = {"method": label, **extra, "mmd2_at_100": curve["mmd2"][curve["step"].index(100)] if 100 in curve["step"] else None,
           "mmd2_final": curve["mmd2"][-1], "energy_at_100": curve["energy"][curve["step"].index(100)]
           if 100 in curve["step"] else None, "energy_final": curve["energy"][-1], "steps": curve["step"][-1]}
    if name == "eight_gaussians" and torch.isfinite(z).all():
        row["modes"] = eight_gaussians_scores(z.float())
    return row


def run_toy(name: str, out: Path, st: FlowStudySettings, checkpoint: str | None = None, runs: Path | None = None,
            log=None) -> dict:
    """Every curve and the final table for one toy (module docstring)."""
    log = log or echo
    cfg, disc, stats = trained_preset(name, (runs or out / "runs") / name, st.dmmd_overrides, checkpoint, log)
    set_value(cfg, "sample.sampler", "exact")  # a --checkpoint may have been made for another sampler
    data = load_dataset(cfg.data, cfg.seed)
    process = build_process(cfg.process)
    scorer = Scorer(data.test[: st.num_test])
    floor_points = data.train[-st.num_particles:]  # not used by the flows' data term
    result: dict = {"bandwidth": scorer.bandwidth, "floor": scorer(floor_points), "curves": {}, "table": []}
    # DMMD, every step.
    started = time.time()
    curve = {"step": [], "mmd2": [], "energy": []}

    def record_dmmd(step, level, z):
        for k, v in {"step": step, **scorer(z)}.items():
            curve[k].append(v)

    shape = tuple(data.train.shape[1:])
    z_dmmd = dmmd_flow_by_step(disc, cfg, stats, process, shape, st.num_particles, st.seed, record=record_dmmd)
    result["curves"]["DMMD (exact)"] = curve
    s = cfg.sample
    result["table"].append(_final_row("DMMD (exact)", z_dmmd, curve, name, {
        "width": "learned", "noise": f"inject {s.inject:g} sigma_t, renoise {s.renoise:g} sigma_t",
        "step_size": s.step_size, "seconds": round(time.time() - started, 1)}))
    log(f"{name} DMMD: MMD^2 {curve['mmd2'][-1]:.2e} after {curve['step'][-1]} steps")
    # Fixed widths, each at its best step size, from the same initial particles (DMMD's prior draw).
    z0 = ParticleNoise(st.seed, st.num_particles, shape).prior(process).double()
    x = data.train[: st.num_data].double()
    steps = record_steps(st.num_steps, st.num_records)
    for width in st.widths:
        for noise in st.noise_factors:
            started = time.time()
            best = best_fixed_flow(z0, x, scorer, width, noise, st, steps)
            label = f"fixed w={width:g}" + (f", noise {noise:g}w" if noise else "")
            curve = best["curve"]
            result["curves"][label] = curve
            result["table"].append(_final_row(label, best["z"], curve, name, {
                "width": width, "noise": f"beta = {noise * width:g}" if noise else "none",
                "step_size": best["step_size"], "tuning": best["tuning"], "seconds": round(time.time() - started, 1)}))
            log(f"{name} {label}: eta {best['step_size']:g} (of {list(best['tuning'])}), MMD^2 {curve['mmd2'][-1]:.2e} "
                f"({time.time() - started:.0f} s)")
    dmmd_final = result["table"][0]["mmd2_final"]
    fixed = [r for r in result["table"][1:]]
    result["acceptance"] = {
        "dmmd_mmd2": dmmd_final,
        "best_fixed_final": min(r["mmd2_final"] for r in fixed),
        "best_fixed_at_100": min(r["mmd2_at_100"] for r in fixed)
        if all(r["mmd2_at_100"] is not None for r in fixed) else None,
        "dmmd_below_every_fixed_final": all(dmmd_final < r["mmd2_final"] for r in fixed),
        "dmmd_below_every_fixed_at_100": all(dmmd_final < r["mmd2_at_100"] for r in fixed)
        if all(r["mmd2_at_100"] is not None for r in fixed) else None}
    return result


def plot_toy(name: str, r: dict, path: Path) -> None:
    """Reference MMD^2 and energy distance against iteration (log-log), one line per flow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    widths = sorted({row["width"] for row in r["table"] if row["width"] != "learned"})
    colours = dict(zip(widths, plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(widths), 1)))))
    for ax, key, title in ((axes[0], "mmd2", f"unbiased RBF MMD^2, bandwidth {r['bandwidth']:.2f} (median heuristic)"),
                           (axes[1], "energy", "energy distance")):
        for row in r["table"]:
            c = r["curves"][row["method"]]
            y = np.asarray(c[key], dtype=float)
            if row["width"] == "learned":
                ax.plot(c["step"], y, color="tab:red", lw=2.2, label=row["method"])
            else:
                dashed = row["noise"] != "none"
                ax.plot(c["step"], y, "--" if dashed else "-", color=colours[row["width"]], lw=1.3,
                        label=f"{row['method']} (eta {row['step_size']:.3g})")
        ax.axhline(r["floor"][key], color="grey", ls=":", lw=1, label="held-out data (floor)")
        ax.axvline(100, color="grey", lw=0.6)
        ax.set(xscale="log", xlabel="iteration (network or kernel evaluations)", title=title)
        if key == "mmd2":  # unbiased: negative near zero; linear within +-1e-4
            ax.set_yscale("symlog", linthresh=1e-4, linscale=0.5)
        else:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6.5, ncol=2)
    fig.suptitle(f"{name}: adaptive (DMMD, 100 steps) against fixed-width MMD flows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=75)
    plt.close(fig)


def table_markdown(name: str, r: dict) -> str:
    head = ("| flow | eta | MMD^2 @100 | MMD^2 final (steps) | energy final | near | modes min-max | distinct "
            "| std ratio |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for row in r["table"]:
        m = row.get("modes")
        at100 = f"{row['mmd2_at_100']:.2e}" if row["mmd2_at_100"] is not None else "-"
        modes = (f"{m['near']:.2f} | {m['min_mode']:.3f}-{m['max_mode']:.3f} | {m['distinct']:.2f} | {m['std_ratio']:.2f}"
                 if m else "- | - | - | -")
        lines.append(f"| {row['method']} | {row['step_size']:.3g} | {at100} | {row['mmd2_final']:.2e} ({row['steps']}) "
                     f"| {row['energy_final']:.2e} | {modes} |")
    a = r["acceptance"]
    verdict = (f"DMMD after 100 steps: MMD^2 {a['dmmd_mmd2']:.2e}; best fixed width after its final step "
               f"{a['best_fixed_final']:.2e}; DMMD below every fixed width: final {a['dmmd_below_every_fixed_final']}, "
               f"at 100 steps {a['dmmd_below_every_fixed_at_100']}. Held-out floor: MMD^2 {r['floor']['mmd2']:.2e}, "
               f"energy {r['floor']['energy']:.2e}.")
    return f"### {name}\n\n{head}" + "\n".join(lines) + f"\n\n{verdict}\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dmmd study flows", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for flows_<toy>.png, flows.md, flows.json")
    p.add_argument("--quick", action="store_true", help="a reduced run (seconds; for tests)")
    p.add_argument("--toys", nargs="+", choices=TOYS, default=["eight_gaussians"])
    p.add_argument("--checkpoint", help="a trained DMMD run of the (single) toy, instead of training the preset")
    p.add_argument("--runs", help="folder holding (or receiving) the trained presets; default OUT/runs")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.checkpoint and len(args.toys) != 1:
        p.error("--checkpoint needs exactly one toy")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    st = QUICK if args.quick else FULL
    started = time.time()
    results, md = {}, []
    for name in args.toys:
        results[name] = run_toy(name, out, st, args.checkpoint, runs=Path(args.runs) if args.runs else out / "runs")
        plot_toy(name, results[name], out / f"flows_{name}.png")
        md.append(table_markdown(name, results[name]))
    payload = {"settings": asdict(st), "quick": args.quick, "seconds": round(time.time() - started, 1), "results": results}
    (out / "flows.json").write_text(json.dumps(payload, indent=1))
    (out / "flows.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"wrote {out} in {payload['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
