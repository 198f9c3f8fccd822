"""Figure 2 of the paper: learned RBF widths and MMD^2(P_t, P; t), DMMD against MMD-GAN (docs/studies.md).

DMMD's width sigma(t) and MMD^2(P_t, P; t) are read against the noise level t, an MMD-GAN's single
learned width against training iteration.

DMMD side. Algorithm 1 (dmmd.training.loop.train) with model.kernel = 'rbf': the discriminator is
k_t(x, y) = exp(-||phi(x, t) - phi(y, t)||^2 / (2 sigma(t)^2)), phi a FiLM MLP, sigma(t) a small MLP of
t (dmmd.methods.discriminator.LevelWidth). After training we read

    sigma(t)                    the learned width, in feature units (disc.width(t));
    sigma_in(t) = sigma(t) / g(t),  g(t) = median_u ||J_phi(u, t)||_F / sqrt(d)
                                the same width in input units: g is phi's RMS stretch of a small input
                                step, over u = clean data and data noised to t (a scale-free reading:
                                phi can rescale its features and sigma(t) with them, sigma_in cannot);
    MMD^2(P_t, P; t)            unbiased, with the kernel of level t, clean data against data noised to t.

Two references for the width. (1) Raw inputs: phi = identity, so only sigma(t) is learned, by the same
Algorithm 1 (train_step of the library) with lambda_gp = lambda_l2 = 0 (with phi fixed the gradient
penalty would pick the width, not the MMD). (2) Direct optimisation: per t, the width
maximising the unbiased MMD^2 of raw clean against raw noised points, by golden-section search
over log-width. Both only on 2-D data.

MMD-GAN side (Li et al. 2017, with the gradient penalty of Binkowski et al. 2018): a generator
G(z) (MLP), features psi(x) (MLP, no t), one RBF width w = exp(log_w). Each iteration: `critic_steps`
steps of the critic (psi, log_w) on -MMD2_unbiased(psi(x), psi(G(z))) + lambda_gp GP + lambda_l2 L2
(the same penalties as Algorithm 1, GP on the witness at interpolates), then one step of G on
MMD2_unbiased. We record w per iteration and, for the final critic, MMD^2(P_t, P) with its kernel
on psi (clean data against data noised to t).

``dmmd study kernel-width --out DIR`` writes DIR/kernel_width_<data>.png, DIR/kernel_width.json
and DIR/kernel_width.md (acceptance figures); ``--quick`` is a reduced run for tests.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from dmmd import config as config_mod
from dmmd.apps.studies.mmd_gan import GANSettings, train_mmd_gan
from dmmd.apps.studies.rank import RISING_RANGE, max_dip, rising_spearman, spearman
from dmmd.data.datasets import load_dataset
from dmmd.math import divergences as dv
from dmmd.math.noising import Process
from dmmd.methods.build import build_process
from dmmd.methods.discriminator import Discriminator, build_discriminator
from dmmd.training.loop import train, train_step
from dmmd.training.state import TrainState, warmup_ema

DATASETS = ("eight_gaussians", "digits")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "presets"  # shipped in the package (configs/ links here)


def preset(name: str, overrides: Sequence[str] = (), config_dir: Path = CONFIG_DIR) -> config_mod.Config:
    """The preset <name>.toml (dmmd/presets, the same files as the checkout's configs/) with overrides."""
    path = Path(config_dir) / f"{name}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"preset {path} not found")
    return config_mod.load(path, list(overrides))


def echo(message: str) -> None:
    """Progress lines, flushed so that a redirected log shows them as they come."""
    print(message, flush=True)


# ------------------------------------------------------------------------------- DMMD readings
@torch.no_grad()
def width_curve(disc: Discriminator, ts: Tensor) -> list[float]:
    """sigma(t) of an RBF discriminator at each t of ts (feature units)."""
    return disc.width(ts.float()).double().tolist()


@torch.no_grad()
def level_mmd2(features, kernel_at, x: Tensor, x_prime: Tensor, process: Process, ts: Tensor,
               seed: int = 0) -> list[float]:
    """Unbiased MMD^2(P_t, P; t) per t: features(x, t) -> (N, D), kernel_at(t) -> kernel;
    x clean, x_prime an independent clean set that is noised to t."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in ts.tolist():
        a = features(x, t)
        b = features(process.corrupt(x_prime, t, generator=gen), t)
        out.append(float(dv.mmd2(kernel_at(t), a, b, unbiased=True)))
    return out


def feature_gain(disc: Discriminator, u: Tensor, t: float) -> float:
    """median over rows u_i of ||J_phi(u_i, t)||_F / sqrt(d): RMS stretch of an input step by phi."""
    def phi(v):
        return disc.features(v.unsqueeze(0), t).squeeze(0)

    with torch.enable_grad():
        jac = torch.func.vmap(torch.func.jacrev(phi))(u.flatten(1))  # (N, D, d)
    gains = jac.flatten(1).norm(dim=1) / math.sqrt(jac.shape[-1])
    return float(gains.median().detach())


def input_space_width(disc: Discriminator, x: Tensor, process: Process, ts: Tensor, seed: int = 0) -> list[float]:
    """sigma_in(t) = sigma(t) / feature_gain over clean and noised points (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    half = x.shape[0] // 2
    out = []
    for t, width in zip(ts.tolist(), width_curve(disc, ts)):
        u = torch.cat([x[:half], process.corrupt(x[half:], t, generator=gen)])
        out.append(width / feature_gain(disc, u, t))
    return out


class IdentityBackbone(nn.Module):
    """phi(x, t) = x flattened: the RBF kernel acts on raw inputs, only sigma(t) is learned."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.feature_dim = in_dim

    def forward(self, x: Tensor, t) -> Tensor:
        return x.reshape(x.shape[0], -1)


def train_raw_width(cfg: config_mod.Config, x: Tensor, steps: int, lr: float) -> Discriminator:
    """Learn sigma(t) alone on raw inputs with the library's Algorithm 1 step (train_step); returns
    the EMA discriminator. cfg.train.lambda_gp / lambda_l2 are used as given (set them to 0)."""
    torch.manual_seed(cfg.seed)
    disc = Discriminator(IdentityBackbone(x[0].numel()), "rbf", cfg.model.init_width)
    state = _own_state(cfg, disc, tuple(x.shape[1:]), [{"params": list(disc.parameters()), "lr": lr}])
    process = build_process(cfg.process)
    for _ in range(steps):
        train_step(state, x, process, cfg)
    return state.ema.module.eval()


def _best_log_width(d_xx: Tensor, d_yy: Tensor, d_xy: Tensor, bounds: tuple[float, float], grid: int,
                    iters: int) -> float:
    """argmax over log w of unbiased MMD^2 from squared-distance blocks: a log grid finds the best
    basin, golden-section search refines it (one new evaluation per step)."""
    def value(log_w: float) -> float:
        s = 2.0 * math.exp(2.0 * log_w)
        return float(dv.mmd2_unbiased(torch.exp(-d_xx / s), torch.exp(-d_yy / s), torch.exp(-d_xy / s)))

    logs = np.linspace(math.log(bounds[0]), math.log(bounds[1]), grid)
    best = int(np.argmax([value(v) for v in logs]))
    lo, hi = logs[max(best - 1, 0)], logs[min(best + 1, grid - 1)]
    golden = (math.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = value(a), value(b)
    for _ in range(iters):  # keep the bracket around the larger value
        if fa > fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = value(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = value(b)
    return (lo + hi) / 2


def optimal_raw_width(x: Tensor, x_prime: Tensor, process: Process, ts: Tensor, seed: int = 0,
                      bounds: tuple[float, float] = (1e-3, 10.0), grid: int = 25, iters: int = 20) -> list[float]:
    """Per t, argmax over w of unbiased MMD^2(raw x, raw x_prime noised to t) (the direct
    optimisation; a grid alone shows the plateau as ties)."""
    gen = torch.Generator().manual_seed(seed)
    x = x.flatten(1).double()
    out = []
    for t in ts.tolist():
        y = process.corrupt(x_prime.flatten(1).double(), t, generator=gen)
        blocks = dv.squared_distances(x, x), dv.squared_distances(y, y), dv.squared_distances(x, y)
        out.append(math.exp(_best_log_width(*blocks, bounds, grid, iters)))
    return out


# ------------------------------------------------------------------------------------ the study
@dataclass
class StudySettings:
    dmmd_steps: dict  # data set -> Algorithm 1 steps
    gan_iterations: int
    num_t: int  # levels at which the curves are read
    eval_points: int  # points per set for MMD^2(P_t, P; t)
    optimum_points: int  # points per set for the direct optimum on raw inputs
    jacobian_points: int
    variants: tuple[tuple[float, float], ...]  # extra (model.init_width, width lr multiplier) runs, 8 Gaussians
    raw_steps: int
    raw_lr: float
    train_points: int | None = None  # None: the whole training split


FULL = StudySettings({"eight_gaussians": 1500, "digits": 1500}, 2000, 40, 1000, 500, 200,
                     ((0.2, 1.0), (4.0, 1.0), (1.0, 50.0)), 1500, 1e-2)
QUICK = StudySettings({"eight_gaussians": 8, "digits": 4}, 10, 5, 64, 64, 16, ((1.0, 50.0),), 10, 1e-2, 512)
# Algorithm 1 with the RBF kernel costs O(N_n B^2): batch 128 and 2 levels per step keep the run short.
DMMD_OVERRIDES = {"eight_gaussians": ["model.kernel=rbf", "sample.sampler=exact", "train.batch_size=128",
                                      "train.num_levels=2"],
                  "digits": ["model.kernel=rbf", "sample.sampler=exact"]}
GAN = {"eight_gaussians": GANSettings(),
       "digits": GANSettings(latent_dim=16, hidden=256, feature_dim=32, batch_size=128, tanh_output=True)}


def _own_state(cfg: config_mod.Config, disc: Discriminator, shape: tuple[int, ...], groups) -> TrainState:
    """A TrainState around our own discriminator and Adam parameter groups (for train_step)."""
    ema = AveragedModel(disc, multi_avg_fn=warmup_ema(cfg.train.ema_decay), use_buffers=True)
    opt = torch.optim.Adam(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    return TrainState(disc, ema, opt, torch.Generator().manual_seed(cfg.seed), tuple(shape))


def train_fast_width(cfg: config_mod.Config, x: Tensor, width_lr_mult: float) -> Discriminator:
    """Algorithm 1 (the library's train_step) with the width MLP on its own Adam learning rate,
    cfg.train.lr * width_lr_mult; returns the EMA discriminator."""
    torch.manual_seed(cfg.seed)
    disc = build_discriminator(cfg.model, tuple(x.shape[1:]))
    width_params = list(disc.width.parameters())
    width_ids = {id(p) for p in width_params}
    groups = [{"params": [p for p in disc.parameters() if id(p) not in width_ids]},
              {"params": width_params, "lr": cfg.train.lr * width_lr_mult}]
    state = _own_state(cfg, disc, tuple(x.shape[1:]), groups)
    process = build_process(cfg.process)
    for _ in range(cfg.train.steps):
        train_step(state, x, process, cfg)
    return state.ema.module.eval()


def _dmmd_readings(disc, x, x_prime, process, ts, st: StudySettings) -> dict:
    width = width_curve(disc, ts)
    mmd2 = level_mmd2(disc.features, disc.kernel, x, x_prime, process, ts)
    win = input_space_width(disc, x[: st.jacobian_points], process, ts)
    return {"width": width, "spearman_width": spearman(ts, width), "input_width": win,
            "spearman_input_width": spearman(ts, win), "mmd2": mmd2, "spearman_mmd2": spearman(ts, mmd2)}


def run_dataset(name: str, out: Path, st: StudySettings, log=None) -> dict:
    """Every curve of the study for one data set (see the module docstring)."""
    log = log or echo
    result: dict = {}
    overrides = DMMD_OVERRIDES[name] + [f"train.steps={st.dmmd_steps[name]}", "train.checkpoint_every=1000000"]
    cfg = preset(name, overrides)
    data = load_dataset(cfg.data, cfg.seed)
    x_train = data.train if st.train_points is None else data.train[: st.train_points]
    process = build_process(cfg.process)
    ts = torch.linspace(process.t_min, process.t_max, st.num_t, dtype=torch.float64)
    n = min(st.eval_points, data.train.shape[0] // 2)
    x, x_prime = data.train[:n], data.train[n: 2 * n]
    result["t"] = ts.tolist()
    variants = [(cfg.model.init_width, 1.0)] + (list(st.variants) if name == "eight_gaussians" else [])
    for init, mult in variants:
        vcfg = preset(name, overrides + [f"model.init_width={init}"])
        started = time.time()
        if mult == 1.0:
            disc = train(vcfg, x_train, out / "runs" / f"{name}_rbf_init{init:g}", progress=False).ema.module.eval()
        else:
            disc = train_fast_width(vcfg, x_train, mult)
        seconds = time.time() - started
        readings = _dmmd_readings(disc, x, x_prime, process, ts, st)
        key = "dmmd" if (init, mult) == variants[0] else f"dmmd_init{init:g}_widthlr{mult:g}"
        result[key] = {"init_width": init, "width_lr_mult": mult, "overrides": overrides,
                       "train_seconds": round(seconds, 1), **readings}
        log(f"{name} DMMD rbf init {init:g}, width lr x{mult:g}: {seconds:.0f} s, spearman width "
            f"{readings['spearman_width']:.3f}, input-space width {readings['spearman_input_width']:.3f}, "
            f"MMD^2 {readings['spearman_mmd2']:.3f}")
    if data.train[0].numel() == 2:
        raw_cfg = preset(name, overrides + ["train.lambda_gp=0", "train.lambda_l2=0"])
        started = time.time()
        raw = train_raw_width(raw_cfg, x_train, st.raw_steps, st.raw_lr)
        learned = width_curve(raw, ts)
        m = st.optimum_points
        optimum = optimal_raw_width(data.train[:m], data.train[m: 2 * m], process, ts)
        result["raw_inputs"] = {"steps": st.raw_steps, "lr": st.raw_lr, "learned_width": learned,
                                "spearman_learned": spearman(ts, learned), "optimal_width": optimum,
                                "spearman_optimal": spearman(ts, optimum), "seconds": round(time.time() - started, 1)}
        log(f"{name} raw inputs: spearman learned {spearman(ts, learned):.3f}, optimum {spearman(ts, optimum):.3f}")
    gs = GANSettings(**{**asdict(GAN[name]), "iterations": st.gan_iterations})
    started = time.time()
    gan, history = train_mmd_gan(x_train, gs)
    seconds = time.time() - started
    with torch.no_grad():
        gan_mmd2 = level_mmd2(lambda v, t: gan.features(v.flatten(1)), lambda t: gan.kernel, x, x_prime, process, ts)
    iters = np.arange(1, len(history["width"]) + 1)
    result["mmd_gan"] = {"settings": asdict(gs), "train_seconds": round(seconds, 1), **history,
                         "spearman_width_iteration": spearman(iters, history["width"]),
                         "level_mmd2": gan_mmd2, "spearman_level_mmd2": spearman(ts, gan_mmd2)}
    log(f"{name} MMD-GAN: {seconds:.0f} s, width {history['width'][0]:.3f} -> {history['width'][-1]:.3f}, "
        f"MMD^2(P_t, P) spearman {spearman(ts, gan_mmd2):.3f}")
    return result


def plot_dataset(name: str, r: dict, path: Path) -> None:
    """Four panels: sigma(t); width in input units; MMD-GAN width per iteration; MMD^2(P_t, P; t)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(r["t"])
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))
    runs = [k for k in r if k.startswith("dmmd")]
    for k in runs:
        label = f"init {r[k]['init_width']:g}" + (f", width lr x{r[k]['width_lr_mult']:g}" if r[k]["width_lr_mult"] != 1 else "")
        ax[0].plot(t, r[k]["width"], label=f"{label} (rho {r[k]['spearman_width']:.2f})")
        ax[1].plot(t, r[k]["input_width"], label=f"sigma/gain, {label} (rho {r[k]['spearman_input_width']:.2f})")
    if "raw_inputs" in r:
        raw = r["raw_inputs"]
        ax[1].plot(t, raw["learned_width"], "k--", label=f"raw inputs, learned (rho {raw['spearman_learned']:.2f})")
        ax[1].plot(t, raw["optimal_width"], "k:", label=f"raw inputs, optimum (rho {raw['spearman_optimal']:.2f})")
    ax[0].set(title="DMMD: learned sigma(t) (feature units)", xlabel="t", yscale="log")
    ax[1].set(title="DMMD: width in input units", xlabel="t", yscale="log")
    gan = r["mmd_gan"]
    ax[2].plot(np.arange(1, len(gan["width"]) + 1), gan["width"], color="tab:red")
    ax[2].set(title=f"MMD-GAN: learned width (rho {gan['spearman_width_iteration']:.2f})", xlabel="iteration")
    ax[3].plot(t, r["dmmd"]["mmd2"], label=f"DMMD, kernel of level t (rho {r['dmmd']['spearman_mmd2']:.2f})")
    ax[3].plot(t, gan["level_mmd2"], color="tab:red",
               label=f"MMD-GAN, final kernel (rho {gan['spearman_level_mmd2']:.2f})")
    ax[3].set(title="MMD^2(P_t, P; t)", xlabel="t")
    for a in ax:
        a.grid(alpha=0.3)
    for a in (ax[0], ax[1], ax[3]):
        a.legend(fontsize=7)
    fig.suptitle(f"{name}: kernel width against noise level (Figure 2)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def summary_markdown(results: dict) -> str:
    lines = [(f"| data | curve | Spearman, all t | Spearman, t <= {RISING_RANGE} | max dip | first -> last | "
              "Spearman > 0.9 |"), "|---|---|---|---|---|---|---|"]

    def row(name, label, x, values, rho=None):
        rho = spearman(x, values) if rho is None else rho
        rising = rising_spearman(x, values) if len(x) == len(values) and x is not None else math.nan
        lines.append(f"| {name} | {label} | {rho:.3f} | {rising:.3f} | {max_dip(values):.2f} | "
                     f"{values[0]:.3g} -> {values[-1]:.3g} | {'yes' if rho > 0.9 else 'no'} |")

    for name, r in results.items():
        t = r["t"]
        for k in (k for k in r if k.startswith("dmmd")):
            v = f"init {r[k]['init_width']:g}, width lr x{r[k]['width_lr_mult']:g}"
            row(name, f"DMMD sigma(t), {v}", t, r[k]["width"])
            row(name, f"DMMD sigma(t)/gain(t) (input units), {v}", t, r[k]["input_width"])
            row(name, f"DMMD MMD^2(P_t, P; t), {v}", t, r[k]["mmd2"])
        if "raw_inputs" in r:
            row(name, "raw inputs: learned sigma(t)", t, r["raw_inputs"]["learned_width"])
            row(name, "raw inputs: optimal width", t, r["raw_inputs"]["optimal_width"])
        gan = r["mmd_gan"]
        w = gan["width"]
        lines.append(f"| {name} | MMD-GAN width vs iteration | {gan['spearman_width_iteration']:.3f} | - | - | "
                     f"{w[0]:.3g} -> {w[-1]:.3g} | - |")
        row(name, "MMD-GAN MMD^2(P_t, P), final kernel", t, gan["level_mmd2"])
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dmmd study kernel-width", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the PNGs, kernel_width.json and kernel_width.md")
    p.add_argument("--quick", action="store_true", help="a reduced run (a few seconds; for tests)")
    p.add_argument("--data", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--no-variants", action="store_true",
                   help="skip the extra 8-Gaussians runs (init width 0.2 and 4, width lr x50): about a third of the time")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    st = QUICK if args.quick else FULL
    if args.no_variants:
        st = StudySettings(**{**asdict(st), "variants": ()})
    started = time.time()
    results = {}
    for name in args.data:
        results[name] = run_dataset(name, out, st)
        plot_dataset(name, results[name], out / f"kernel_width_{name}.png")
    payload = {"settings": asdict(st), "quick": args.quick, "seconds": round(time.time() - started, 1),
               "results": results}
    (out / "kernel_width.json").write_text(json.dumps(payload, indent=1))
    (out / "kernel_width.md").write_text(summary_markdown(results))
    print(summary_markdown(results))
    print(f"wrote {out} in {payload['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
