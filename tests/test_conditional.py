"""Class-conditional training and sampling (docs/conditional.md, issue 14): the math against float64 loops,
label embeddings, unconditional bit-identity, label dropout, CLI errors, determinism, tiny runs."""

import json

import numpy as np
import pytest
import torch

from dmmd.cli import main
from dmmd.config import ConfigError, ModelConfig, ProcessConfig, load
from dmmd.data.datasets import DataError, load_array_dataset
from dmmd.math.conditioning import (
    balanced_labels,
    class_means,
    class_witness,
    drop_labels,
    guided_output,
    guided_target,
)
from dmmd.math.noising import VPProcess, time_grid
from dmmd.methods import conditional
from dmmd.methods.build import build_process
from dmmd.methods.ddpm import EpsMLP, build_eps_net
from dmmd.methods.discriminator import build_discriminator
from dmmd.methods.losses import dmmd_loss
from dmmd.methods.mmd_flow import FlowSettings, run_flow
from dmmd.nets.mlp import FeatureMLP
from dmmd.nets.unet import UNet

C = 3  # classes in the small tests; label C is the null label


def cond_disc(seed=0, in_dim=4, feature_dim=5, num_classes=C):
    torch.manual_seed(seed)
    cfg = ModelConfig(width=8, depth=2, feature_dim=feature_dim, time_dim=8, conditional=True, num_classes=num_classes)
    return build_discriminator(cfg, (in_dim,)).double()


# ------------------------------------------------------------------------------ pure math
def test_class_means_and_guided_target_match_loops():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, C + 1, (40,), generator=gen)
    means = class_means(feats, labels, C + 2)  # group C + 1 has no rows: zeros
    for g in range(C + 2):
        rows = [feats[i] for i in range(40) if labels[i] == g]
        ref = sum(rows) / len(rows) if rows else torch.zeros(6, dtype=torch.float64)
        torch.testing.assert_close(means[g], ref, rtol=0, atol=1e-12)
    w = 1.7
    target = guided_target(means[: C + 1], w)
    for y in range(C):
        torch.testing.assert_close(target[y], means[y] + w * (means[y] - means[C]), rtol=0, atol=1e-12)
    torch.testing.assert_close(target[C], means[C], rtol=0, atol=0)
    m = torch.randn(C + 1, 6, generator=gen, dtype=torch.float64)
    values = class_witness(feats, labels, target, m)
    for i in range(40):
        ref = sum(float(feats[i, d]) * float(target[labels[i], d] - m[labels[i], d]) for d in range(6))
        assert abs(float(values[i]) - ref) < 1e-12


def test_guided_output_is_classifier_free_guidance():
    net = EpsMLP((4,), width=8, depth=1, time_dim=8, num_classes=C).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        cond, uncond = net(x, 0.3, y), net(x, 0.3, torch.full((6,), C))
        torch.testing.assert_close(guided_output(net, x, 0.3, y, 2.5), 3.5 * cond - 2.5 * uncond, rtol=0, atol=1e-12)
        torch.testing.assert_close(guided_output(net, x, 0.3, y, 0.0), cond, rtol=0, atol=0)
        torch.testing.assert_close(guided_output(net, x, 0.3, None, 2.5), uncond, rtol=0, atol=0)


def test_drop_labels_rate_and_stream():
    y = torch.zeros(200_000, dtype=torch.long)
    for p in (0.0, 0.1, 0.35, 1.0):
        gen = torch.Generator().manual_seed(1)
        dropped = drop_labels(y, 7, p, gen)
        rate = float((dropped == 7).double().mean())
        assert abs(rate - p) < 0.005 and set(dropped.unique().tolist()) <= {0, 7}
        # one uniform per row whatever p: the training stream does not depend on p_uncond
        other = torch.Generator().manual_seed(1)
        torch.rand(len(y), generator=other)
        assert torch.equal(gen.get_state(), other.get_state())
    assert torch.equal(y, torch.zeros_like(y))  # the caller's labels are not changed


def test_balanced_labels_equal_counts():
    y = balanced_labels(1000, 10)
    assert torch.equal(torch.bincount(y), torch.full((10,), 100)) and y[:12].tolist() == [*range(10), 0, 1]
    assert torch.equal(balanced_labels(5, 10, 3), torch.full((5,), 3))


# -------------------------------------------------------------------------------- networks
def test_label_embedding_shapes_and_null_row():
    net = FeatureMLP(4, 5, 8, 2, 8, num_classes=C)
    assert net.label.table.weight.shape == (C + 1, 8)
    x = torch.randn(7, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    assert net(x, 0.5, y).shape == (7, 5)
    torch.testing.assert_close(net(x, 0.5), net(x, 0.5, torch.full((7,), C)), rtol=0, atol=0)  # None = null
    unet = UNet((1, 8, 8), base_channels=8, channel_mults=(1, 2), attn_resolutions=(), head="pool", feature_dim=6,
                num_classes=C)
    assert unet(torch.randn(3, 1, 8, 8), 0.2, torch.tensor([0, 2, 3])).shape == (3, 6)
    eps = build_eps_net(ModelConfig(width=8, depth=1, time_dim=8, conditional=True, num_classes=C), (1, 2, 2))
    assert eps(torch.randn(3, 1, 2, 2), 0.2, torch.tensor([0, 1, 2])).shape == (3, 1, 2, 2)


@pytest.mark.parametrize("backbone", ["mlp", "unet"])
def test_unconditional_nets_unchanged(backbone):
    """No label parameters without model.conditional; the conditional net draws the same initial
    weights for everything else, and with a zero label table computes the unconditional function."""
    extra = dict(backbone=backbone, base_channels=8, channel_mults=[1, 2], attn_resolutions=[], width=8, depth=2,
                 feature_dim=5, time_dim=8, head="pool")
    torch.manual_seed(0)
    plain = build_discriminator(ModelConfig(**extra, num_classes=C), (1, 8, 8))  # num_classes ignored: not conditional
    torch.manual_seed(0)
    cond = build_discriminator(ModelConfig(**extra, conditional=True, num_classes=C), (1, 8, 8))
    assert not any("label" in k for k in plain.state_dict())
    shared = plain.state_dict()
    assert set(cond.state_dict()) - set(shared) == {"backbone.label.table.weight"}
    for k, v in shared.items():
        assert torch.equal(cond.state_dict()[k], v), k
    with torch.no_grad():
        cond.backbone.label.table.weight.zero_()
    x, t = torch.randn(6, 1, 8, 8), torch.tensor([0.1, 0.1, 0.5, 0.5, 0.9, 0.9])
    torch.testing.assert_close(cond.features(x, t, torch.tensor([0, 1, 2, 3, 0, 1])), plain.features(x, t),
                               rtol=0, atol=1e-6)
    assert plain.num_classes == 0 and cond.num_classes == C


# --------------------------------------------------------------------------- training loss
def test_conditional_loss_matches_loop():
    """Linear-kernel joint MMD of (x, y) with every row's own label, GP on the clean label, L2."""
    disc, process = cond_disc(), VPProcess()
    gen = torch.Generator().manual_seed(3)
    x, xp = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, 4, generator=gen, dtype=torch.float64)
    y, yp = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([2, 2, 0, 1, 3])
    levels = torch.tensor([0.2, 0.7], dtype=torch.float64)
    state = gen.get_state()
    loss, terms = dmmd_loss(disc, x, xp, levels, process, 0.7, 0.3, generator=gen, y=y, y_prime=yp)
    ref_gen = torch.Generator().set_state(state)
    noise = torch.randn(10, 4, generator=ref_gen, dtype=torch.float64)
    r_all = torch.rand(10, generator=ref_gen, dtype=torch.float64)
    total = 0.0
    for j, t in enumerate(levels.tolist()):
        tt = torch.tensor(t, dtype=torch.float32).double()  # the loss noises at the float32 level it featurises
        noisy = process.alpha(tt).item() * xp + process.sigma(tt).item() * noise[j * 5:(j + 1) * 5]
        a, b = disc.features(x, t, y), disc.features(noisy, t, yp)
        kxx = sum(a[i] @ a[k] for i in range(5) for k in range(5) if i != k) / 20
        kyy = sum(b[i] @ b[k] for i in range(5) for k in range(5) if i != k) / 20
        kxy = sum(a[i] @ b[k] for i in range(5) for k in range(5)) / 25
        gp = 0.0
        for i in range(5):
            u = (r_all[j * 5 + i] * x[i] + (1 - r_all[j * 5 + i]) * noisy[i]).detach().unsqueeze(0).requires_grad_(True)
            f = disc.features(u, t, y[i:i + 1])[0] @ (a.mean(0) - b.mean(0))
            (g,) = torch.autograd.grad(f, u, create_graph=True)
            gp = gp + (g.norm() - 1) ** 2 / 5
        total = total + (-(kxx + kyy - 2 * kxy) + 0.7 * gp + 0.3 * (a.pow(2).mean() + b.pow(2).mean())) / 2
    torch.testing.assert_close(loss, total, rtol=0, atol=1e-10)
    assert terms["mmd2"] > 0


# ------------------------------------------------------------------------ statistics, flows
def test_class_level_statistics_match_loop():
    disc, process = cond_disc(), build_process(ProcessConfig())
    x = torch.randn(23, 4, dtype=torch.float64)
    labels = torch.arange(23) % C
    settings = FlowSettings(num_levels=2, steps_per_level=1)
    stats = conditional.class_level_statistics(disc, x, labels, process, settings, batch_size=7)
    assert stats.shape == (2, C + 1, 5)
    for k, t in enumerate(time_grid(process, 2, "uniform").tolist()):
        for g in range(C + 1):
            rows = [disc.features(x[i:i + 1], t, torch.tensor([g if g < C else C]))[0]
                    for i in range(23) if g == C or labels[i] == g]
            torch.testing.assert_close(stats[k, g], sum(rows) / len(rows), rtol=0, atol=1e-12)


def _explicit_step(disc, z, t, labels, target, particle_mean, eta):
    """One flow step particle by particle: z_i + eta J_i^T (target[y_i] - m[y_i]), J_i = d phi / d z."""
    out = []
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda v: disc.features(v.unsqueeze(0), t, labels[i:i + 1])[0], z[i])
        out.append(z[i] + eta * jac.T @ (target[labels[i]] - particle_mean[labels[i]]))
    return torch.stack(out)


@pytest.mark.parametrize("exact", [False, True])
def test_guided_flow_step_matches_explicit_gradient(exact):
    """The exact per-class flow (each label its own population) and the replay flow against
    per-particle Jacobians in float64, with guidance w = 2."""
    disc, process = cond_disc(), build_process(ProcessConfig())
    z = torch.randn(9, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0])
    data_mean = torch.randn(1, C + 1, 5, dtype=torch.float64)
    target = guided_target(data_mean, 2.0)
    grid, eta = torch.tensor([0.4], dtype=torch.float64), 0.3
    settings = FlowSettings(num_levels=1, steps_per_level=1, step_size=eta, chunk_size=4)
    t = float(grid[0])
    if exact:
        with torch.no_grad():
            m = class_means(disc.features(z, t, labels), labels, C + 1)
        term = conditional.class_exact_term(target, labels)
    else:
        m = torch.randn(C + 1, 5, dtype=torch.float64)
        term = conditional.class_replay_term(target, m.unsqueeze(0), labels)
    out = run_flow(disc, z, grid, settings, process, term, needs_population=exact, labels=labels)
    torch.testing.assert_close(out, _explicit_step(disc, z, t, labels, target[0], m, eta), rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------ config, data
def test_config_fields_and_validation():
    assert load(None, ["model.conditional=true"]).train.p_uncond == 0.1
    for bad in ("train.p_uncond=1.5", "train.p_uncond=-0.1"):
        with pytest.raises(ConfigError, match="p_uncond"):
            load(None, [bad])
    with pytest.raises(ConfigError, match="conditional"):
        load(None, ["model.conditional=true", "model.kernel=rbf", "sample.sampler=exact"])
    from dmmd.config import GUIDANCE_DEFAULTS

    for method, w in GUIDANCE_DEFAULTS.items():
        assert load("configs/digits_conditional.toml", [f"method={method}"]).sample.guidance == w
    assert load("configs/digits_conditional.toml", ["method=fm", "sample.guidance=3"]).sample.guidance == 3


def test_npz_labels(tmp_path):
    x = np.random.RandomState(0).rand(30, 3).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 4)
    data = load_array_dataset(tmp_path / "d.npz")
    assert data.labels_train.dtype == torch.long and len(data.labels_train) == len(data.train) == 27
    # rows and labels permuted together
    for rows, labels in ((data.train, data.labels_train), (data.test, data.labels_test)):
        for row, label in zip(rows, labels):
            i = int(np.flatnonzero((x == row.numpy()).all(1))[0])
            assert i % 4 == int(label)
    for y, match in ((np.arange(29), "29 labels"), (np.arange(30) * 0.5, "integer"), (-np.arange(30), ">= 0")):
        np.savez(tmp_path / "bad.npz", x=x, y=y)
        with pytest.raises(DataError, match=match):
            load_array_dataset(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------- CLI
TINY = ["--set", "model.width=16", "--set", "model.depth=1", "--set", "model.feature_dim=8",
        "--set", "model.time_dim=8", "--set", "train.steps=6", "--set", "train.batch_size=16",
        "--set", "sample.num_levels=2", "--set", "sample.steps_per_level=2", "--set", "sample.replay_particles=8",
        "--set", "sample.num_steps=3", "--set", "train.checkpoint_every=100"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    out = {}
    for method in ("dmmd", "fm", "ddpm"):
        out[method] = root / method
        assert main(["train", "--preset", "digits_conditional", "--method", method, *TINY, "--out", str(out[method]),
                     "--no-progress"]) == 0
    plain = root / "plain"
    assert main(["train", "--preset", "digits", *TINY, "--out", str(plain), "--no-progress"]) == 0
    out["plain"] = plain
    return out


@pytest.mark.parametrize("method", ["dmmd", "fm", "ddpm"])
def test_tiny_conditional_run_end_to_end(runs, method, tmp_path):
    cfg = json.loads((runs[method] / "config.json").read_text())
    assert cfg["model"]["conditional"] and cfg["model"]["num_classes"] == 10
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(runs[method]), "--class", "all", "--num-samples", "20",
                 "--guidance", "1.5", "--out", str(out), "--no-progress"]) == 0
    with np.load(out / "samples.npz") as f:
        assert f["samples"].shape == (20, 1, 8, 8) and f["y"].tolist() == [i % 10 for i in range(20)]
    assert json.loads((out / "diversity.json").read_text())["settings"]["guidance"] == 1.5
    report = tmp_path / "r.json"
    assert main(["evaluate", "--samples", str(out / "samples.npz"), "--checkpoint", str(runs[method]),
                 "--metrics", "fd", "--out", str(report)]) == 0
    per_class = json.loads(report.read_text())["per_class"]
    assert 0 <= per_class["agreement"] <= 1 and set(per_class["classes"]) == {str(k) for k in range(10)}
    # a single class, and unconditional sampling from the same network
    assert main(["sample", "--checkpoint", str(runs[method]), "--class", "3", "--num-samples", "4",
                 "--out", str(tmp_path / "k"), "--no-progress"]) == 0
    assert np.load(tmp_path / "k" / "samples.npz")["y"].tolist() == [3] * 4
    assert main(["sample", "--checkpoint", str(runs[method]), "--num-samples", "4", "--out", str(tmp_path / "u"),
                 "--no-progress"]) == 0
    assert "y" not in np.load(tmp_path / "u" / "samples.npz").files


@pytest.mark.parametrize("method", ["dmmd", "fm", "ddpm"])
def test_conditional_samples_depend_only_on_seed_and_index(runs, method, tmp_path):
    draws = []
    for i, (batch, seed) in enumerate((("7", "0"), ("25", "0"), ("25", "0"), ("25", "1"))):
        out = tmp_path / f"s{i}"
        assert main(["sample", "--checkpoint", str(runs[method]), "--class", "all", "--num-samples", "25",
                     "--batch-size", batch, "--seed", seed, "--out", str(out), "--no-progress"]) == 0
        draws.append(np.load(out / "samples.npz")["samples"])
    # equal up to float32 rounding across batch sizes (batched matrix products round differently)
    np.testing.assert_allclose(draws[0], draws[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(draws[1], draws[2])
    assert (np.abs(draws[2] - draws[3]).max(axis=(1, 2, 3)) > 0).all()  # another seed, other samples


@pytest.mark.parametrize("args,message", [
    (["--class", "10"], "--class must be in 0..9"),
    (["--class", "-1"], "--class must be in 0..9"),
    (["--class", "two"], "--class must be an integer"),
])
def test_bad_class_is_one_line_error(runs, tmp_path, capsys, args, message):
    assert main(["sample", "--checkpoint", str(runs["dmmd"]), *args, "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_class_on_unconditional_checkpoint_is_one_line_error(runs, tmp_path, capsys):
    for args in (["--class", "1"], ["--guidance", "1"]):
        assert main(["sample", "--checkpoint", str(runs["plain"]), *args, "--out", str(tmp_path / "s"),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "conditional" in err and err.count("\n") == 1


def test_conditional_on_data_without_labels_is_one_line_error(tmp_path, capsys):
    assert main(["train", "--set", "data.name=eight_gaussians", "--set", "model.conditional=true", *TINY,
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.conditional needs class labels") and err.count("\n") == 1


def test_resume_of_a_conditional_run_is_exact(tmp_path):
    """Label dropout draws from the training generator: 3 + 3 steps equal 6 steps."""
    args = ["train", "--preset", "digits_conditional", *TINY]
    assert main([*args, "--out", str(tmp_path / "full"), "--no-progress"]) == 0
    assert main([*args, "--set", "train.steps=3", "--out", str(tmp_path / "half"), "--no-progress"]) == 0
    assert main(["train", "--resume", str(tmp_path / "half"), "--set", "train.steps=6", "--no-progress"]) == 0
    a = torch.load(tmp_path / "full" / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "half" / "checkpoints" / "final.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_malformed_class_statistics_are_refused(tmp_path):
    from dmmd.runtime.checkpoint import CheckpointError, check_stats

    good = {"class_grid": "T=2,grid=uniform", "class_data_mean": torch.zeros(2, 4, 5),
            "class_replay": {"tag": torch.zeros(4, 4, 5)}}
    assert check_stats(good, tmp_path / "x.pt", "dmmd", 5) is good
    for bad in ({**good, "class_data_mean": torch.zeros(2, 5)}, {**good, "class_replay": {"tag": torch.zeros(4, 3, 5)}},
                {**good, "class_data_mean": torch.full((2, 4, 5), float("nan"))}, {**good, "class_grid": None},
                {**good, "class_replay": [1]}):
        with pytest.raises(CheckpointError):
            check_stats(bad, tmp_path / "x.pt", "dmmd", 5)


@pytest.mark.parametrize("method", ["dmmd", "fm"])
def test_training_previews_of_a_conditional_model(runs, method):
    """TensorBoard's sample grids (api.preview_samples) draw unconditionally (the null label)."""
    from dmmd.apps.pipeline import Pipeline
    from dmmd.training.preview import preview_samples

    pipe = Pipeline.from_run(runs[method], device="cpu")
    z = preview_samples(pipe.model, pipe.cfg, pipe.data.train[:40], pipe.data_shape, num=4)
    assert z.shape == (4, 1, 8, 8) and torch.isfinite(z).all()
