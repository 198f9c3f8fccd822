"""model.pixel_features: per-pixel quadratic features beside the MLP's (dmmd.nets.mlp.PixelFeatures)."""

import pytest
import torch

from dmmd.config import Config, ConfigError, ModelConfig, set_value, validate
from dmmd.methods.discriminator import build_discriminator
from dmmd.nets.mlp import FeatureMLP, pixel_quadratic


def test_pixel_quadratic_matches_loops_and_its_gradient_is_diagonal():
    """Brute-force float64 reference: feature j = sum_p Q_jp x_p^2 + L_jp x_p + b_j; the input gradient
    of <w, features> is 2 (Q^T w) * x + L^T w (closed form), checked by autograd and gradcheck."""
    g = torch.Generator().manual_seed(0)
    n, d, k = 4, 7, 3
    x = torch.randn(n, d, dtype=torch.float64, generator=g).requires_grad_(True)
    q, lin = torch.randn(k, d, dtype=torch.float64, generator=g), torch.randn(k, d, dtype=torch.float64, generator=g)
    b, w = torch.randn(k, dtype=torch.float64, generator=g), torch.randn(k, dtype=torch.float64, generator=g)
    out = pixel_quadratic(x, q, lin, b)
    xd = x.detach()
    ref = torch.tensor([[sum(q[j, p] * xd[i, p] ** 2 + lin[j, p] * xd[i, p] for p in range(d)) + b[j]
                         for j in range(k)] for i in range(n)], dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(pixel_quadratic(x, q, lin), ref - b, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad((out @ w).sum(), x)
    torch.testing.assert_close(grad, 2 * (q.T @ w) * x + lin.T @ w, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: pixel_quadratic(z, q, lin, b), (x,))
    assert torch.autograd.gradgradcheck(lambda z: pixel_quadratic(z, q, lin, b), (x,))


def _input_gradients(net: FeatureMLP, d: int, num: int = 64) -> torch.Tensor:
    """Witness-style input gradients grad_x <w_i, phi(x_i, t)> for many x_i and w_i: (num, d)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(num, d, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(num, net.feature_dim, dtype=torch.float64, generator=g)
    (grad,) = torch.autograd.grad((net(x, 0.4) * w).sum(), x)
    return grad


def test_pixel_features_reach_directions_the_mlp_cannot():
    """Width 4 < 10 inputs: the MLP's input gradients lie in inp.weight's row space (their part in
    its orthogonal complement is zero); with pixel features they span all 10 directions."""
    torch.manual_seed(0)
    plain = FeatureMLP(10, feature_dim=6, width=4, depth=1, time_dim=8).double()
    mixed = FeatureMLP(10, feature_dim=6, width=4, depth=1, time_dim=8, pixel_features=2).double()
    for net in (plain, mixed):
        complement = torch.linalg.svd(net.inp.weight.detach(), full_matrices=True).Vh[4:]  # (6, 10)
        off_rows = (_input_gradients(net, 10) @ complement.T).abs().max()
        assert off_rows < 1e-12 if net is plain else off_rows > 1e-3
    assert torch.linalg.matrix_rank(_input_gradients(plain, 10)) <= 4
    assert torch.linalg.matrix_rank(_input_gradients(mixed, 10)) == 10


def test_pixel_features_shapes_times_and_module_forward():
    """The last k features are s(t) * pixel_quadratic with s(t) = 1 + Linear(temb): 1 at init, the
    same rows whether times come batched or one by one, and time-dependent once s is trained."""
    torch.manual_seed(0)
    net = FeatureMLP(5, feature_dim=7, width=8, depth=2, time_dim=8, pixel_features=3).double()
    x = torch.randn(6, 1, 5, dtype=torch.float64)
    t = torch.tensor([0.1, 0.7, 0.1, 0.3, 0.7, 0.9], dtype=torch.float64)
    out = net(x, t)
    assert out.shape == (6, 7) and net.out[-1].out_features == 4
    p = net.pixel
    torch.testing.assert_close(out[:, 4:], pixel_quadratic(x.reshape(6, 5), p.quad.weight, p.lin.weight, p.quad.bias),
                               rtol=0, atol=1e-12)
    with torch.no_grad():
        p.scale.weight.normal_()
    out = net(x, t)
    rows = torch.cat([net(x[i:i + 1], t[i]) for i in range(6)])
    torch.testing.assert_close(out, rows, rtol=0, atol=1e-12)
    temb = net.time(t)
    torch.testing.assert_close(out[:, 4:], (1 + p.scale(temb)) * pixel_quadratic(x.reshape(6, 5), p.quad.weight,
                               p.lin.weight, p.quad.bias), rtol=0, atol=1e-12)
    assert not torch.allclose(net(x[:1], 0.1)[:, 4:], net(x[:1], 0.9)[:, 4:])


def test_pixel_features_gradcheck_and_conditional():
    torch.manual_seed(0)
    net = FeatureMLP(4, feature_dim=5, width=6, depth=1, time_dim=8, num_classes=3, pixel_features=2).double()
    with torch.no_grad():
        net.pixel.scale.weight.normal_()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 3])
    assert torch.autograd.gradcheck(lambda z: net(z, 0.5, y), (x,))
    assert torch.autograd.gradgradcheck(lambda z: net(z, 0.5, y), (x,))  # the gradient penalty's double backward


def test_default_off_is_bit_identical():
    """pixel_features = 0 builds the same modules, state-dict keys and initial weights as before the
    option existed (nothing created, no random draws added): the same seed gives equal outputs."""
    torch.manual_seed(3)
    off = build_discriminator(ModelConfig(width=16, depth=2, time_dim=8, feature_dim=6), (1, 3, 3))
    torch.manual_seed(3)
    old = FeatureMLP(9, 6, 16, 2, 8, 0)
    assert off.backbone.pixel is None
    assert list(off.backbone.state_dict()) == list(old.state_dict())
    x = torch.randn(4, 1, 3, 3)
    assert torch.equal(off.features(x, 0.2), old(x, 0.2))
    torch.manual_seed(3)
    on = build_discriminator(ModelConfig(width=16, depth=2, time_dim=8, feature_dim=6, pixel_features=2), (1, 3, 3))
    # the MLP's weights draw the same values up to its smaller output layer; the new ones come last
    assert torch.equal(on.backbone.inp.weight, old.inp.weight)
    assert on.feature_dim == 6 and on.features(x, 0.2).shape == (4, 6)


def test_config_checks_pixel_features():
    cfg = Config()
    set_value(cfg, "model.pixel_features", "16")
    validate(cfg)
    for key, value, match in [("model.pixel_features", "-1", ">= 0"), ("model.pixel_features", "128", "fewer"),
                              ("model.backbone", "unet", "backbone = 'mlp'")]:
        bad = Config()
        set_value(bad, "model.pixel_features", "16")
        set_value(bad, key, value)
        with pytest.raises(ConfigError, match=match):
            validate(bad)
    with pytest.raises(ValueError, match="backbone = 'mlp'"):
        build_discriminator(ModelConfig(backbone="unet", pixel_features=2), (1, 8, 8))
    with pytest.raises(ValueError, match="pixel_features"):
        FeatureMLP(4, feature_dim=3, pixel_features=3)


def test_train_reload_sample_round_trip(tmp_path):
    """A tiny digits run with pixel features: the checkpoint rebuilds the same network (weights and
    state-dict keys from the config alone) and reloaded samples equal the trained pipeline's."""
    import dmmd

    tiny = {"data.name": "digits", "model.width": 16, "model.depth": 1, "model.feature_dim": 8,
            "model.time_dim": 8, "model.pixel_features": 3, "train.steps": 4, "train.batch_size": 16,
            "train.checkpoint_every": 4, "train.log_every": 2, "sample.num_levels": 3,
            "sample.steps_per_level": 2, "sample.replay_particles": 20}
    pipe = dmmd.train(None, tmp_path / "run", overrides=tiny, progress=False, device="cpu")
    assert pipe.model.backbone.pixel is not None and pipe.model.feature_dim == 8
    reloaded = dmmd.Pipeline.from_run(tmp_path / "run", device="cpu")
    assert reloaded.cfg.model.pixel_features == 3
    x = pipe.sample(5, seed=2)
    assert x.shape == (5, 1, 8, 8) and torch.isfinite(x).all()
    torch.testing.assert_close(x, reloaded.sample(5, seed=2), rtol=0, atol=0)
