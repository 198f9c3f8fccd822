"""Pictures of the DMMD flow, and whether particles follow the forward marginals (docs/studies.md).

- flow_eight_gaussians.gif: 2-D particles flowing from noise to data, one frame per step of the
  sampler, each particle coloured by the mode nearest to its final position (grey: not within 3
  data standard deviations of any mode at the end);
- digits_levels.png: digit particles after each level of the sampler (columns t_max .. t_min),
  above real digits noised to the same levels by the forward process;
- marginals.png / marginals.json: per level k, (a) the unbiased RBF MMD^2 of the particles to data
  noised to t_k (bandwidth: median heuristic of that noised data), beside the same MMD^2 between two
  independent noised data sets (the floor a perfect match would reach); (b) t*_k, the level whose
  forward marginal is closest to the particles in energy distance (searched on a fine grid);
  t*_k = t_k means the particles sit on the forward marginal of their level.

Particles per level come from dmmd.apps.studies.flows.dmmd_flow_by_step (the library's flows one step
at a time, bit-identical to dmmd.methods.sample.sample). Models: the eight_gaussians and digits presets,
trained into RUNS/<name> unless a final checkpoint is already there (RUNS defaults to OUT/runs;
point it at the flows study's runs folder to reuse its model).

``dmmd study pictures --out DIR``; ``--quick`` for a reduced run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dmmd.apps.studies.flows import dmmd_flow_by_step, trained_preset
from dmmd.apps.studies.kernel_width import echo, preset
from dmmd.config import set_value
from dmmd.data.datasets import load_dataset
from dmmd.data.toys import EIGHT_GAUSSIANS_STD, eight_gaussians_centres
from dmmd.evaluation.metrics import energy_distance, median_heuristic, mmd_rbf
from dmmd.evaluation.plotting import image_grid
from dmmd.math.noising import time_grid
from dmmd.methods.build import build_process, flow_settings
from dmmd.methods.mmd_flow import ParticleNoise

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34)]


@dataclass
class PictureSettings:
    particles: dict = field(default_factory=lambda: {"eight_gaussians": 1000, "digits": 500})
    reference_points: dict = field(default_factory=lambda: {"eight_gaussians": 2000, "digits": 1500})
    digit_rows: int = 10
    search_levels: int = 40  # fine log-sigma grid for t*
    overrides: dict = field(default_factory=dict)  # data set -> extra config overrides (quick runs)
    seed: int = 0


FULL = PictureSettings()
QUICK = PictureSettings(particles={"eight_gaussians": 120, "digits": 40},
                        reference_points={"eight_gaussians": 200, "digits": 100}, digit_rows=4, search_levels=6,
                        overrides={"eight_gaussians": ["train.steps=10", "sample.replay_particles=50",
                                                       "data.num_points=2000"],  # = the flows quick run
                                   "digits": ["train.steps=3", "sample.replay_particles=20"]})


def level_trajectory(disc, cfg, stats, process, shape, num_particles: int, seed: int) -> dict:
    """Particles after every step and at the end of every level, with the level times."""
    grid = time_grid(process, cfg.sample.num_levels, cfg.sample.grid)
    steps, levels = [], []

    def record(step, level, z):
        steps.append((level, z.detach().clone()))
        if step % cfg.sample.steps_per_level == 0:
            levels.append(z.detach().clone())

    prior = ParticleNoise(seed, num_particles, shape).prior(process)
    dmmd_flow_by_step(disc, cfg, stats, process, shape, num_particles, seed, record=record)
    return {"grid": grid, "prior": prior, "steps": steps, "levels": levels}


@torch.no_grad()
def marginal_scores(levels: list[Tensor], data: Tensor, process, grid: Tensor, search: Tensor, seed: int = 0) -> dict:
    """Per level: MMD^2 to data noised to t_k, its floor, and t* by energy distance (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    flat = data.flatten(1).double()
    half = flat.shape[0] // 2
    a, b = flat[:half], flat[half:2 * half]
    search_sets = [process.corrupt(a, t, generator=gen) for t in search.tolist()]
    out = {"t": grid.tolist(), "mmd2": [], "floor": [], "bandwidth": [], "t_star": [], "energy_to_own_level": []}
    for z, t in zip(levels, grid.tolist()):
        z = z.flatten(1).double()
        ref, other = process.corrupt(a, t, generator=gen), process.corrupt(b, t, generator=gen)
        h = median_heuristic(ref, ref)
        out["bandwidth"].append(h)
        out["mmd2"].append(mmd_rbf(z, ref, h))
        out["floor"].append(mmd_rbf(other[: z.shape[0]], ref, h))
        energies = [energy_distance(z, s) for s in search_sets]
        out["t_star"].append(float(search[int(np.argmin(energies))]))
        out["energy_to_own_level"].append(energy_distance(z, ref))
    return out


def gif_eight_gaussians(traj: dict, data: Tensor, grid: Tensor, path: Path, size: int = 320, extent: float = 3.0) -> int:
    """Animated GIF (Pillow): one frame per step; returns its size in bytes."""
    from PIL import Image, ImageDraw

    centres = eight_gaussians_centres().double()
    final = traj["steps"][-1][1].double()
    dist = torch.cdist(final, centres)
    mode = dist.argmin(1)
    near = dist.min(1).values <= 3 * EIGHT_GAUSSIANS_STD
    colours = [PALETTE[int(m)] if ok else (110, 110, 110) for m, ok in zip(mode, near)]

    def pixels(z: Tensor) -> np.ndarray:
        return np.clip(((z.double().numpy() + extent) / (2 * extent) * (size - 1)).round(), 0, size - 1).astype(int)

    background = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(background)
    for px, py in pixels(data[:1000]):
        draw.point((px, size - 1 - py), fill=(215, 215, 215))
    frames = []
    sequence = [(-1, traj["prior"])] + traj["steps"]
    for i, (level, z) in enumerate(sequence):
        frame = background.copy()
        d = ImageDraw.Draw(frame)
        for (px, py), c in zip(pixels(z), colours):
            d.rectangle((px - 1, size - 2 - py, px, size - 1 - py), fill=c)
        label = "prior N(0, I)" if level < 0 else f"step {i}/{len(sequence) - 1}  level {level + 1}/{len(grid)}  t={float(grid[level]):.3f}"
        d.text((6, 4), label, fill=(0, 0, 0))
        frames.append(frame.convert("P", palette=Image.ADAPTIVE, colors=32))
    durations = [400] + [70] * (len(frames) - 2) + [2000]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations[: len(frames)], loop=0,
                   optimize=True)
    return path.stat().st_size


def digits_levels_png(traj: dict, data: Tensor, process, grid: Tensor, rows: int, path: Path, seed: int = 0) -> None:
    """Particles after each level (top) above real digits noised to the same levels (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(seed)
    cols = [traj["prior"][:rows]] + [z[:rows] for z in traj["levels"]]
    real = data[:rows]
    fwd = [torch.randn(real.shape, generator=gen)] + [process.corrupt(real, t, generator=gen) for t in grid.tolist()]
    fig, axes = plt.subplots(2, 1, figsize=(0.62 * len(cols) + 0.6, 0.62 * rows * 2 + 1.2))
    labels = ["prior"] + [f"{t:.2f}" for t in grid.tolist()]
    for ax, columns, title in ((axes[0], cols, "DMMD particles after each level (columns: t of the level)"),
                               (axes[1], fwd, "forward process: real digits noised to the same t")):
        images = torch.stack(columns, 1).reshape(-1, *columns[0].shape[1:]).clamp(-1, 1).numpy()  # row-major
        tile = image_grid(images, nrow=len(columns), scale=1, pad=1)[..., 0]
        ax.imshow(tile, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        h = columns[0].shape[-1] + 1
        ax.set_xticks([1 + h * i + h / 2 - 1 for i in range(len(columns))], labels, fontsize=7)
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def marginals_png(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.8 * len(results)), squeeze=False)
    for row, (name, r) in zip(axes, results.items()):
        t = np.asarray(r["t"])
        row[0].plot(t, r["mmd2"], "o-", label="particles vs data noised to t_k")
        row[0].plot(t, r["floor"], "s--", color="grey", label="noised data vs independent noised data (floor)")
        row[0].set(xlabel="level t_k (the sampler runs right to left)", ylabel="unbiased MMD^2",
                   title=f"{name}: MMD^2 to the forward marginal of each level")
        row[0].set_yscale("symlog", linthresh=1e-4, linscale=0.5)
        row[1].plot(t, r["t_star"], "o-", label="t*: closest forward marginal (energy distance)")
        row[1].plot(t, t, ":", color="grey", label="t* = t_k: on the forward marginal")
        row[1].set(xlabel="level t_k", ylabel="t*", xscale="log", yscale="log",
                   title=f"{name}: which marginal do the particles match?")
        for ax in row:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=75)
    plt.close(fig)


def run(name: str, out: Path, runs: Path, st: PictureSettings, sampler: str | None, log=None) -> tuple[dict, dict]:
    """Trajectory, pictures and marginal scores of one preset."""
    log = log or echo
    overrides = st.overrides.get(name, [])
    cfg, disc, stats = trained_preset(name, runs / name, overrides, None, log)
    default = preset(name, overrides).sample
    set_value(cfg, "sample.sampler", sampler or default.sampler)
    set_value(cfg, "sample.reading", default.reading)
    data = load_dataset(cfg.data, cfg.seed)
    process = build_process(cfg.process)
    started = time.time()
    traj = level_trajectory(disc, cfg, stats, process, tuple(data.train.shape[1:]), st.particles[name], st.seed)
    grid = traj["grid"]
    search = time_grid(process, st.search_levels, "log_sigma").flip(0)
    ref = data.train[: st.reference_points[name]]
    scores = marginal_scores(traj["levels"], ref, process, grid, search, st.seed)
    settings = flow_settings(cfg.sample)
    scores["sampler"] = f"{cfg.sample.sampler} ({cfg.sample.reading})" if cfg.sample.sampler == "approx" else "exact"
    scores["settings"] = settings.tag()
    files = {}
    if name == "eight_gaussians":
        path = out / "flow_eight_gaussians.gif"
        files["gif_bytes"] = gif_eight_gaussians(traj, data.train, grid, path)
    if name == "digits":
        digits_levels_png(traj, data.test, process, grid, st.digit_rows, out / "digits_levels.png", st.seed)
    log(f"{name}: {scores['sampler']}, {time.time() - started:.0f} s; per-level MMD^2 "
        f"{[f'{v:.1e}' for v in scores['mmd2']]}; t* {[round(v, 3) for v in scores['t_star']]}")
    return scores, files


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dmmd study pictures", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the GIF, the PNGs and marginals.json")
    p.add_argument("--quick", action="store_true", help="a reduced run (seconds; for tests)")
    p.add_argument("--runs", help="folder holding (or receiving) the trained presets; default OUT/runs")
    p.add_argument("--sampler", choices=("exact", "approx"), help="default: each preset's own sampler")
    p.add_argument("--data", nargs="+", choices=("eight_gaussians", "digits"), default=["eight_gaussians", "digits"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs) if args.runs else out / "runs"
    st = QUICK if args.quick else FULL
    started = time.time()
    results, files = {}, {}
    for name in args.data:
        results[name], files[name] = run(name, out, runs, st, args.sampler)
    marginals_png(results, out / "marginals.png")
    payload = {"settings": asdict(st), "quick": args.quick, "seconds": round(time.time() - started, 1),
               "results": results, "files": files}
    (out / "marginals.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {out} in {payload['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
