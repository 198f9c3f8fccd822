"""Inpainting (dmmd.math.inpaint, dmmd.apps.inpaint, `dmmd inpaint`): masks, the replacement against float64
references, known pixels never changed by any method's flow, determinism, and the command line."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import small_disc

from dmmd.cli import main
from dmmd.math.inpaint import (
    MaskError,
    Replacement,
    fm_forward,
    load_mask,
    mask_from_array,
    named_mask,
    replacement_for,
    vp_forward,
    vp_transition,
)
from dmmd.math.noising import VPProcess, time_grid
from dmmd.methods import ddpm, flow_matching
from dmmd.methods.mmd_flow import FlowSettings, ParticleNoise, approx_flow, exact_flow, kale_flow, level_features

PROCESS = VPProcess()


# ------------------------------------------------------------------------------------------ masks
def test_named_masks_on_an_image():
    top = named_mask("top", (1, 8, 8))
    assert top.dtype == np.bool_ and top.shape == (1, 8, 8)
    assert top[0, :4].all() and not top[0, 4:].any()  # True = generated: `top` fills in the top half
    np.testing.assert_array_equal(named_mask("bottom", (1, 8, 8)), ~top)
    left = named_mask("left", (3, 5, 7))
    assert left[:, :, :3].all() and not left[:, :, 3:].any()
    np.testing.assert_array_equal(named_mask("right", (3, 5, 7)), ~left)
    center = named_mask("center", (2, 8, 8))
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    for c in range(2):
        np.testing.assert_array_equal(center[c], expected)


def test_named_mask_of_flat_vectors_uses_the_image_shape():
    flat = named_mask("bottom", (64,), image_shape=(1, 8, 8))
    np.testing.assert_array_equal(flat, named_mask("bottom", (1, 8, 8)).reshape(64))
    with pytest.raises(MaskError, match="needs image data"):
        named_mask("top", (2,))
    with pytest.raises(MaskError, match="must be one of"):
        load_mask("middle", (1, 8, 8))


def test_mask_arrays_are_checked_and_broadcast(tmp_path):
    square = np.zeros((8, 8), np.int64)
    square[:, :2] = 1
    mask = mask_from_array(square, (1, 8, 8))
    assert mask.shape == (1, 8, 8) and mask.sum() == 16
    np.testing.assert_array_equal(mask_from_array(square.reshape(64), (1, 8, 8)), mask)  # flat, same count
    assert mask_from_array(np.array([True, False]), (3, 2)).sum() == 3  # numpy broadcasting
    for bad, message in [(np.full((8, 8), 2), "0 \\(known\\) or 1"), (np.ones((7, 8)), "does not fit"),
                         (np.zeros((1, 8, 8)), "nothing to inpaint"), (np.array(["a"]), "dtype")]:
        with pytest.raises(MaskError, match=message):
            mask_from_array(bad, (1, 8, 8))
    path = tmp_path / "m.npy"
    np.save(path, square.astype(bool))
    np.testing.assert_array_equal(load_mask(str(path), (1, 8, 8)), mask)
    with pytest.raises(MaskError, match="does not exist"):
        load_mask(str(tmp_path / "missing.npy"), (1, 8, 8))


# ------------------------------------------------------------------------------------ replacement
def _known_data(n=5, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen, dtype=torch.float64) * 2 - 1
    mask = torch.tensor([True, False, True, False, False, True])[:d]
    return x, mask


def test_replacement_is_the_vp_forward_process_at_the_level():
    """Known pixels <- alpha_t x + sigma_t eps, eps the particle's next draw; float64 reference."""
    x, mask = _known_data()
    z = torch.randn(5, 6, dtype=torch.float64)
    t = 0.37
    hook = Replacement(x, mask, vp_forward(PROCESS), ParticleNoise(4, 5, (6,), dtype=torch.float64))
    out = hook(z, t)
    eps = ParticleNoise(4, 5, (6,), dtype=torch.float64).draw()
    integral = 0.1 * t + 0.5 * (20 - 0.1) * t**2  # linear VP schedule in closed form
    alpha, sigma = math.exp(-0.5 * integral), math.sqrt(1 - math.exp(-integral))
    torch.testing.assert_close(out[:, ~mask], alpha * x[:, ~mask] + sigma * eps[:, ~mask], rtol=0, atol=1e-12)
    assert torch.equal(out[:, mask], z[:, mask])
    assert torch.equal(hook(z, t), out)  # the same level: the same copy (one draw per level)
    assert not torch.equal(hook(z, 0.2)[:, ~mask], out[:, ~mask])
    assert torch.equal(hook(z, None)[:, ~mask], x[:, ~mask]) and torch.equal(hook(z, None)[:, mask], z[:, mask])


def test_replacement_never_reads_unknown_pixels():
    x, mask = _known_data()
    other = x.clone()
    other[:, mask] = 1e6
    z = torch.randn(5, 6, dtype=torch.float64)
    make = lambda xs: Replacement(xs, mask, vp_forward(PROCESS), ParticleNoise(1, 5, (6,), dtype=torch.float64))
    assert torch.equal(make(x)(z, 0.5), make(other)(z, 0.5))


def test_flow_matching_replacement_follows_the_straight_path():
    x, mask = _known_data()
    z0 = torch.randn(5, 6, dtype=torch.float64)
    hook = Replacement(x, mask, fm_forward, fixed=z0)
    t = 0.3
    torch.testing.assert_close(hook(z0, t)[:, ~mask], 0.7 * z0[:, ~mask] + 0.3 * x[:, ~mask], rtol=0, atol=1e-15)


def test_vp_transition_keeps_the_forward_marginals():
    """x_t = a_t x0 + s_t e1, then the jump to s > t: a_s x0 + (noise of variance s_s^2), in closed form."""
    t, s = 0.2, 0.55
    a = lambda u: math.exp(-0.5 * (0.1 * u + 0.5 * 19.9 * u**2))
    x0, e1, e2 = torch.tensor([0.3]), torch.tensor([0.0]), torch.tensor([1.0])
    x_t = a(t) * x0 + math.sqrt(1 - a(t) ** 2) * e1
    out = vp_transition(PROCESS)(x_t.double(), t, s, e2.double())
    r = a(s) / a(t)
    expected = r * x_t.double() + math.sqrt((1 - a(s) ** 2) - r**2 * (1 - a(t) ** 2))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert abs(r * a(t) - a(s)) < 1e-15


def test_replacement_refuses_a_blur_process():
    from dmmd.math.noising import BlurProcess

    with pytest.raises(ValueError, match="pixelwise Gaussian"):
        vp_forward(BlurProcess())
    with pytest.raises(ValueError, match="a transition"):  # bad repeats
        replacement_for("fm", PROCESS, torch.zeros(2, 6), torch.ones(6, dtype=torch.bool), repeats=0)(
            ParticleNoise(0, 2, (6,)), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="pixelwise Gaussian"):  # resampling a blur: no VP transition either
        replacement_for("ddpm", BlurProcess(), torch.zeros(2, 6), torch.ones(6, dtype=torch.bool), repeats=2)


# ------------------------------------------------------------------------------------ the flows
def _dmmd_setup(d=6):
    disc = small_disc("linear", in_dim=d)
    gen = torch.Generator().manual_seed(3)
    data = torch.randn(40, d, generator=gen, dtype=torch.float64)
    grid = time_grid(PROCESS, 3)
    return disc, grid, level_features(disc, data, grid)


def _hook(x, mask, seed=7, repeats=1, mode="fresh", z0=None):
    noise = ParticleNoise(seed, len(x), tuple(x.shape[1:]), dtype=torch.float64)
    return replacement_for("dmmd", PROCESS, x, mask, mode, repeats)(noise, z0 if z0 is not None else x), noise


@pytest.mark.parametrize("sampler", ["exact", "approx", "kale"])
@pytest.mark.parametrize("repeats", [1, 2])
def test_dmmd_flows_end_with_known_pixels_exact(sampler, repeats):
    disc = small_disc("linear", objective="kale" if sampler == "kale" else "mmd", in_dim=6)
    _, grid, mean = _dmmd_setup()
    x, mask = _known_data()
    settings = FlowSettings(3, 2, 0.1, inject=0.2, renoise=0.3)
    hook, noise = _hook(x, mask, repeats=repeats)
    z0 = torch.randn(5, 6, dtype=torch.float64)
    if sampler == "exact":
        out, _ = exact_flow(disc, z0, grid, settings, PROCESS, mean, noise, known=hook)
    elif sampler == "approx":
        out = approx_flow(disc, z0, grid, settings, PROCESS, mean, mean, noise=noise, known=hook)
    else:
        out = kale_flow(disc, z0, grid, settings, PROCESS, noise, known=hook)
    assert torch.equal(out[:, ~mask], x[:, ~mask])
    assert torch.isfinite(out).all() and not torch.equal(out[:, mask], z0[:, mask])


def test_dmmd_flow_replaces_before_every_step_at_its_level():
    disc, grid, mean = _dmmd_setup()
    x, mask = _known_data()
    inner, noise = _hook(x, mask)
    calls = []

    def hook(z, t):
        calls.append(t)
        return inner(z, t)

    approx_flow(disc, torch.randn(5, 6, dtype=torch.float64), grid, FlowSettings(3, 2, 0.1), PROCESS, mean, mean,
                noise=noise, known=hook)
    levels = grid.tolist()
    assert calls == [levels[0]] * 2 + [levels[1]] * 2 + [levels[2]] * 2 + [None]


def test_all_unknown_mask_leaves_the_flow_bit_identical():
    """A hook that replaces nothing (every pixel unknown, fixed noise, no draws) changes nothing:
    the mask path adds no other arithmetic to the flow."""
    disc, grid, mean = _dmmd_setup()
    z0 = torch.randn(5, 6, dtype=torch.float64)
    settings = FlowSettings(3, 2, 0.1, inject=0.2, renoise=0.3)
    plain = approx_flow(disc, z0, grid, settings, PROCESS, mean, mean,
                        noise=ParticleNoise(2, 5, (6,), dtype=torch.float64))
    noise = ParticleNoise(2, 5, (6,), dtype=torch.float64)
    hook = replacement_for("dmmd", PROCESS, torch.zeros(5, 6), torch.ones(6, dtype=torch.bool), "fixed")(noise, z0)
    masked = approx_flow(disc, z0, grid, settings, PROCESS, mean, mean, noise=noise, known=hook)
    assert torch.equal(plain, masked)
    exact_plain, _ = exact_flow(disc, z0, grid, settings, PROCESS, mean, ParticleNoise(2, 5, (6,), dtype=torch.float64))
    noise = ParticleNoise(2, 5, (6,), dtype=torch.float64)
    hook = replacement_for("dmmd", PROCESS, torch.zeros(5, 6), torch.ones(6, dtype=torch.bool), "fixed")(noise, z0)
    exact_masked, _ = exact_flow(disc, z0, grid, settings, PROCESS, mean, noise, known=hook)
    assert torch.equal(exact_plain, exact_masked)


class _TinyNet(torch.nn.Module):
    def __init__(self, d=6):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(d + 1, d).double()

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0], 1)
        return self.lin(torch.cat([x, t], 1))


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("mode", ["fixed", "fresh"])
def test_flow_matching_keeps_known_pixels(method, mode):
    x, mask = _known_data()
    z0 = torch.randn(5, 6, dtype=torch.float64)
    noise = ParticleNoise(3, 5, (6,), dtype=torch.float64)
    hook = replacement_for("fm", PROCESS, x, mask, mode)(noise, z0)
    seen = []
    net = _TinyNet()

    def spy(xx, t):
        seen.append((xx.clone(), t))
        return net(xx, t)

    out = flow_matching.sample(spy, z0, 5, method, known=hook)
    assert torch.equal(out[:, ~mask], x[:, ~mask])
    if mode == "fixed":  # every evaluation at t sees the known pixels on the path (1 - t) z0 + t x
        for xx, t in seen:
            torch.testing.assert_close(xx[:, ~mask], (1 - t) * z0[:, ~mask] + t * x[:, ~mask], rtol=0, atol=1e-12)


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_ddpm_keeps_known_pixels_and_replaces_at_each_time(method, eta):
    x, mask = _known_data()
    z0 = torch.randn(5, 6, dtype=torch.float64)
    hook = replacement_for("ddpm", PROCESS, x, mask)(ParticleNoise(3, 5, (6,), dtype=torch.float64), z0)
    times = []

    def spy(z, t):
        times.append(t)
        return hook(z, t)

    out = ddpm.sample(_TinyNet(), z0, PROCESS, 4, method, ParticleNoise(5, 5, (6,), dtype=torch.float64), eta=eta,
                      clip=1.0, known=spy)
    assert torch.equal(out[:, ~mask], x[:, ~mask])
    assert times == time_grid(PROCESS, 4).tolist() + [None]


# --------------------------------------------------------------------------- the command line
TINY = ["--set", "model.width=16", "--set", "model.feature_dim=8", "--set", "model.time_dim=8",
        "--set", "model.depth=1", "--set", "train.steps=4", "--set", "train.batch_size=16",
        "--set", "train.checkpoint_every=4", "--set", "sample.num_levels=3", "--set", "sample.steps_per_level=2",
        "--set", "sample.replay_particles=40", "--set", "sample.num_steps=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint_runs")
    out = {}
    for method in ("dmmd", "fm", "ddpm"):
        out[method] = root / method
        assert main(["train", "--preset", "digits", "--method", method, *TINY, "--out", str(out[method]),
                     "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from dmmd.data.datasets import load_digits

    data = load_digits()
    path = tmp_path_factory.mktemp("inpaint_images") / "digits.npz"
    x = ((data.test[:12] + 1) * 8).round().numpy().reshape(12, 64)
    np.savez(path, x=x, y=data.labels_test[:12].numpy())
    return path


@pytest.mark.parametrize("method", ["dmmd", "fm", "ddpm"])
def test_cli_inpaint_end_to_end(runs, images, tmp_path, method):
    out = tmp_path / "out"
    assert main(["inpaint", "--checkpoint", str(runs[method]), "--images", str(images), "--mask", "bottom",
                 "--out", str(out), "--no-progress"]) == 0
    x = np.load(images)["x"]
    done = np.load(out / "completions.npz")
    mask = named_mask("bottom", (1, 8, 8)).reshape(64)
    assert done["x"].shape == x.shape and done["x"].dtype == x.dtype
    assert done["x"][:, ~mask].tobytes() == x[:, ~mask].tobytes()  # bit for bit
    assert (done["x"][:, mask] >= 0).all() and (done["x"][:, mask] <= 16).all()
    report = json.loads((out / "metrics.json").read_text())
    assert report["known_values_changed"] == 0 and report["known_bit_equal"]
    assert report["known_values_checked"] == 12 * 32 and report["unknown_fraction"] == 0.5
    assert 0 <= report["accuracy_completed"] <= 1 and report["accuracy_original"] > 0.5
    if method == "dmmd":  # the digits preset's gradient step, inpainting's longer one
        assert report["step_norm"] == "gradient" and report["step_size"] == pytest.approx(0.2)
    assert (out / "inpaint.png").stat().st_size > 500
    again = tmp_path / "again"  # per-seed determinism through the whole command
    assert main(["inpaint", "--checkpoint", str(runs[method]), "--images", str(images), "--mask", "bottom",
                 "--out", str(again), "--no-progress"]) == 0
    assert np.load(again / "completions.npz")["x"].tobytes() == done["x"].tobytes()


def test_population_free_completions_depend_only_on_seed_and_index(runs, images):
    """The approx sampler: completing images in batches of 5 or all at once gives the same numbers
    (up to float32 matmul differences between batch sizes, as in test_sampling's replay test)."""
    from dmmd.apps.inpaint import complete, read_images, to_model
    from dmmd.methods.build import build_process, load_model

    cfg, disc, stats, _ = load_model(runs["dmmd"])
    x, _ = read_images(images, "digits", (1, 8, 8))
    xm, mask = to_model(x, "digits", (1, 8, 8)), named_mask("top", (1, 8, 8))
    process = build_process(cfg.process)
    whole = complete(disc, cfg, stats, process, xm, mask, 3, 12)
    parts = complete(disc, cfg, stats, process, xm, mask, 3, 5)
    assert (whole - parts).abs().max() < 1e-4
    assert (whole - complete(disc, cfg, stats, process, xm, mask, 4, 12)).abs().max() > 1e-3


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("case", ["missing", "shape", "nan", "range", "mask", "mask_file", "labels", "resample"])
def test_cli_inpaint_errors_are_one_line(runs, images, tmp_path, capsys, case):
    x = np.load(images)["x"]
    bad = tmp_path / "bad.npz"
    argv = ["inpaint", "--checkpoint", str(runs["dmmd"]), "--images", str(bad), "--mask", "top",
            "--out", str(tmp_path / "out"), "--no-progress"]
    if case == "missing":
        pass
    elif case == "shape":
        np.savez(bad, x=x[:, :63])
    elif case == "nan":
        y = x.copy()
        y[0, 0] = np.nan
        np.savez(bad, x=y)
    elif case == "range":
        np.savez(bad, x=x + 1)  # a 16 becomes 17
    elif case == "labels":
        np.savez(bad, x=x, y=np.zeros(3, np.int64))
    else:
        np.savez(bad, x=x)
        if case == "mask":
            argv[argv.index("top")] = "middle"
        elif case == "mask_file":
            np.save(tmp_path / "m.npy", np.ones((7, 7), bool))
            argv[argv.index("top")] = str(tmp_path / "m.npy")
        else:
            argv = ["inpaint", "--checkpoint", str(runs["fm"]), "--images", str(bad), "--mask", "top",
                    "--out", str(tmp_path / "out"), "--resample", "0", "--no-progress"]
    code, err = _error(capsys, argv)
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_latent_and_blur_models_are_refused():
    from dmmd.apps.inpaint import check_model
    from dmmd.config import Config, ConfigError

    cfg = Config()
    cfg.model.latent = "/some/autoencoder"
    with pytest.raises(ConfigError, match="not pixels"):
        check_model(cfg)
    cfg = Config()
    cfg.process.kind = "blur"
    with pytest.raises(ConfigError, match="pixelwise"):
        check_model(cfg)


# ----------------------------------------------------- resampling for flow matching and DDPM
def test_fm_transition_fixed_noise_against_float64_closed_form():
    """z_s = (s / t) z_t + sqrt((1 - s)^2 - (s / t)^2 (1 - t)^2) eps, the variance written here in the
    factored form (t - s)(t + s - 2 s t) / t^2."""
    from dmmd.math.inpaint import fm_transition

    z = torch.randn(4, 6, dtype=torch.float64)
    eps = torch.randn(4, 6, dtype=torch.float64)
    for t, s in [(0.9, 0.3), (1.0, 0.99), (0.25, 0.0), (0.5, 0.49)]:
        std = math.sqrt((t - s) * (t + s - 2 * s * t)) / t
        torch.testing.assert_close(fm_transition(z, t, s, eps), (s / t) * z + std * eps, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="s < t"):
        fm_transition(z, 0.3, 0.5, eps)


@pytest.mark.parametrize("kind", ["fm", "vp"])
def test_jump_back_has_the_forward_marginal_of_the_noisier_level(kind):
    """Large sample, float64: x_t drawn from the forward process at t given x, then the jump back to
    the noisier level s gives q_s(x) = N(a_s x, s_s^2) per coordinate (a, s of the method's path, in
    closed form here: a = t, s = 1 - t for flow matching; the linear VP schedule for DMMD/DDPM), with
    x_t and x_s correlated as a Markov chain: Cov(x_s, x_t) = r Var(x_t), r = a_s / a_t."""
    from dmmd.math.inpaint import fm_transition

    if kind == "fm":
        t, s = 0.7, 0.35
        a = lambda u: u
        sd = lambda u: 1 - u
        jump = fm_transition
    else:
        t, s = 0.2, 0.55
        a = lambda u: math.exp(-0.5 * (0.1 * u + 0.5 * 19.9 * u**2))
        sd = lambda u: math.sqrt(1 - a(u) ** 2)
        jump = vp_transition(PROCESS)
    gen = torch.Generator().manual_seed(11)
    n, x = 400_000, torch.tensor([0.8, -0.4], dtype=torch.float64)
    x_t = a(t) * x + sd(t) * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x_s = jump(x_t, t, s, torch.randn(n, 2, generator=gen, dtype=torch.float64))
    se = sd(s) / math.sqrt(n)
    assert (x_s.mean(0) - a(s) * x).abs().max() < 5 * se
    assert (x_s.std(0) / sd(s) - 1).abs().max() < 5 / math.sqrt(2 * n)
    cov = ((x_s - x_s.mean(0)) * (x_t - x_t.mean(0))).mean(0)
    torch.testing.assert_close(cov, torch.full((2,), a(s) / a(t) * sd(t) ** 2, dtype=torch.float64),
                               rtol=0, atol=5 * sd(s) * sd(t) / math.sqrt(n))


def test_replacement_jump_draws_from_the_particles_noise():
    from dmmd.math.inpaint import fm_transition

    x, mask = _known_data()
    z0 = torch.randn(5, 6, dtype=torch.float64)
    hook = replacement_for("fm", PROCESS, x, mask, "fixed", 3)(ParticleNoise(9, 5, (6,), dtype=torch.float64), z0)
    assert hook.repeats == 3
    eps = ParticleNoise(9, 5, (6,), dtype=torch.float64).draw()
    torch.testing.assert_close(hook.jump(z0, 0.6, 0.2), fm_transition(z0, 0.6, 0.2, eps), rtol=0, atol=0)


class _Count:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("mode", ["fixed", "fresh"])
def test_flow_matching_resampling_keeps_known_pixels_and_counts(method, mode):
    x, mask = _known_data()
    z0 = torch.randn(5, 6, dtype=torch.float64)
    hook = replacement_for("fm", PROCESS, x, mask, mode, 3)(ParticleNoise(3, 5, (6,), dtype=torch.float64), z0)
    times, bar = [], _Count()
    net = _TinyNet()

    def spy(xx, t):
        times.append(t)
        return net(xx, t)

    out = flow_matching.sample(spy, z0, 5, method, progress=bar, known=hook)
    assert torch.equal(out[:, ~mask], x[:, ~mask]) and torch.isfinite(out).all()
    assert bar.n == len(times) == flow_matching.num_evaluations(5, method, 3)
    if method == "euler":  # t_k = k / 5, every step but the last three times
        assert times == [k / 5 for k in range(4) for _ in range(3)] + [0.8]
    plain = flow_matching.sample(spy, z0, 5, method, known=replacement_for("fm", PROCESS, x, mask, mode)(
        ParticleNoise(3, 5, (6,), dtype=torch.float64), z0))
    assert not torch.equal(plain[:, mask], out[:, mask])


def test_flow_matching_resampled_euler_against_a_float64_reference():
    """Euler, 3 steps, U = 2, fixed noise: the loop written out by hand (the jump draws are the
    particles' ParticleNoise draws 1 and 2; the fixed-noise replacement draws nothing)."""
    x, mask = _known_data()
    z0 = torch.randn(5, 6, dtype=torch.float64)
    net = _TinyNet()
    hook = replacement_for("fm", PROCESS, x, mask, "fixed", 2)(ParticleNoise(6, 5, (6,), dtype=torch.float64), z0)
    out = flow_matching.sample(net, z0, 3, "euler", known=hook)
    draws = ParticleNoise(6, 5, (6,), dtype=torch.float64)
    keep = lambda z, t: torch.where(mask, z, (1 - t) * z0 + t * x)
    back = lambda z, t, s: (s / t) * z + math.sqrt((1 - s) ** 2 - (s / t) ** 2 * (1 - t) ** 2) * draws.draw()
    h, ref = 1 / 3, z0.clone()
    for k in range(3):
        t = k / 3
        for u in range(2 if k < 2 else 1):
            if u:
                ref = back(ref, (k + 1) / 3, t)
            ref = keep(ref, t)
            ref = ref + h * net(ref, t)
    ref = torch.where(mask, ref, x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
@pytest.mark.parametrize("final_denoise", [True, False])
def test_ddpm_resampling_keeps_known_pixels_and_jumps_back_one_step(method, eta, final_denoise):
    x, mask = _known_data()
    z0 = torch.randn(5, 6, dtype=torch.float64)
    noise = ParticleNoise(3, 5, (6,), dtype=torch.float64)
    hook = replacement_for("ddpm", PROCESS, x, mask, "fresh", 2)(noise, z0)
    calls, jumps, bar = [], [], _Count()

    class Spy:
        repeats = hook.repeats

        def __call__(self, z, t):
            calls.append(t)
            return hook(z, t)

        def jump(self, z, t, s):
            jumps.append((t, s))
            return hook.jump(z, t, s)

    out = ddpm.sample(_TinyNet(), z0, PROCESS, 4, method, noise, bar, eta=eta, clip=1.0, known=Spy(),
                      final_denoise=final_denoise)
    assert torch.equal(out[:, ~mask], x[:, ~mask]) and torch.isfinite(out).all()
    g = time_grid(PROCESS, 4).tolist()
    repeated = 3 if final_denoise else 2  # the step that ends the chain runs once
    assert jumps == [(g[k + 1], g[k]) for k in range(repeated)]
    assert calls == [g[k] for k in range(repeated) for _ in range(2)] + g[repeated:3 + final_denoise] + [None]
    assert bar.n == ddpm.num_evaluations(4, final_denoise, 2) == len(calls) - 1


@pytest.mark.parametrize("method", ["fm", "ddpm"])
def test_all_unknown_mask_leaves_fm_and_ddpm_bit_identical(method):
    """U = 1 (the default): a hook that replaces nothing (every pixel unknown, fixed noise) gives the
    unconditional sampler's numbers bit for bit, so the resampling loop changed no arithmetic."""
    z0 = torch.randn(5, 6, dtype=torch.float64)
    net = _TinyNet()
    hook = replacement_for(method, PROCESS, torch.zeros(5, 6, dtype=torch.float64), torch.ones(6, dtype=torch.bool),
                           "fixed")(ParticleNoise(2, 5, (6,), dtype=torch.float64), z0)
    if method == "fm":
        for sampler in ("euler", "heun"):
            assert torch.equal(flow_matching.sample(net, z0, 7, sampler), flow_matching.sample(net, z0, 7, sampler,
                                                                                               known=hook))
    else:
        run = lambda known: ddpm.sample(net, z0, PROCESS, 6, "ddpm", ParticleNoise(2, 5, (6,), dtype=torch.float64),
                                        clip=1.0, known=known)
        assert torch.equal(run(None), run(hook))


@pytest.mark.parametrize("method", ["fm", "ddpm"])
def test_cli_inpaint_resampling_fm_and_ddpm(runs, images, tmp_path, method):
    """--resample 3: known values bit-exact, NFE (S - 1) 3 + 1 with the tiny runs' 4 steps, and the
    same completions again for the same seed; completions batch-independent (seed, index)."""
    from dmmd.apps.inpaint import complete, read_images, to_model
    from dmmd.methods.build import build_process, load_model

    out = tmp_path / "out"
    argv = ["inpaint", "--checkpoint", str(runs[method]), "--images", str(images), "--mask", "bottom",
            "--resample", "3", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    x = np.load(images)["x"]
    done = np.load(out / "completions.npz")["x"]
    mask = named_mask("bottom", (1, 8, 8)).reshape(64)
    assert done[:, ~mask].tobytes() == x[:, ~mask].tobytes()
    report = json.loads((out / "metrics.json").read_text())
    assert report["known_values_changed"] == 0 and report["resample"] == 3 and report["nfe"] == 3 * 3 + 1
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    assert np.load(tmp_path / "again" / "completions.npz")["x"].tobytes() == done.tobytes()
    plain = tmp_path / "plain"
    assert main([*argv[:-3], "--resample", "1", "--no-progress", "--out", str(plain)]) == 0
    assert not np.array_equal(np.load(plain / "completions.npz")["x"], done)
    cfg, disc, stats, _ = load_model(runs[method])
    xr, _ = read_images(images, "digits", (1, 8, 8))
    xm, m = to_model(xr, "digits", (1, 8, 8)), named_mask("top", (1, 8, 8))
    process = build_process(cfg.process)
    whole = complete(disc, cfg, stats, process, xm, m, 3, 12, repeats=3)
    parts = complete(disc, cfg, stats, process, xm, m, 3, 5, repeats=3)
    assert (whole - parts).abs().max() < 1e-4
