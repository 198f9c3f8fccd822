"""Algorithm 1's loss against an explicit float64 loop with the same random draws."""

import math

import pytest
import torch
from conftest import small_disc

from dmmd.math.noising import VPProcess
from dmmd.methods.losses import dmmd_loss

PROCESS = VPProcess()


def _reference_loss(disc, x, x_prime, t_levels, gen_state, lambda_gp, lambda_l2, gp_rows=None):
    """Per-level loop: unbiased MMD by double sums, GP by per-sample autograd, L2 by hand.
    gp_rows: the penalty averages over the first gp_rows interpolates of each level (None: all)."""
    n_levels, batch = len(t_levels), x.shape[0]
    gen = torch.Generator().set_state(gen_state)
    noise = torch.randn((n_levels * batch, *x.shape[1:]), generator=gen, dtype=x.dtype)
    r_all = torch.rand(n_levels * batch, generator=gen, dtype=x.dtype)
    total, terms = 0.0, {"div": 0.0, "gp": 0.0, "l2": 0.0}
    for j, t in enumerate(t_levels.tolist()):
        eps = noise[j * batch:(j + 1) * batch]
        alpha, sigma = PROCESS.alpha(torch.tensor(t)).item(), PROCESS.sigma(torch.tensor(t)).item()
        y = alpha * x_prime + sigma * eps
        a, b = disc.features(x, t), disc.features(y, t)
        kernel = disc.kernel(t)
        if disc.objective == "kale":
            h_a, h_b = disc.critic_value(a), disc.critic_value(b)
            div = h_a.mean() - torch.exp(h_b).mean() + 1
        else:
            kxx = sum(kernel(a[i:i + 1], a[k:k + 1])[0, 0] for i in range(batch) for k in range(batch) if i != k)
            kyy = sum(kernel(b[i:i + 1], b[k:k + 1])[0, 0] for i in range(batch) for k in range(batch) if i != k)
            kxy = sum(kernel(a[i:i + 1], b[k:k + 1])[0, 0] for i in range(batch) for k in range(batch))
            div = kxx / (batch * (batch - 1)) + kyy / (batch * (batch - 1)) - 2 * kxy / batch**2
        gp, penalised = 0.0, batch if gp_rows is None else gp_rows
        for i in range(penalised):
            r = r_all[j * batch + i]
            u = (r * x[i] + (1 - r) * y[i]).detach().unsqueeze(0).requires_grad_(True)
            fu = disc.features(u, t)
            if disc.objective == "kale":
                f = disc.critic_value(fu)[0]
            else:
                f = kernel(fu, a).mean() - kernel(fu, b).mean()
            (g,) = torch.autograd.grad(f, u, create_graph=True)
            excess = g.norm() - 1
            gp = gp + (excess.clamp(min=0) if disc.objective == "kale" else excess) ** 2
        gp = gp / penalised
        l2 = a.pow(2).mean() + b.pow(2).mean()
        total = total + (-div + lambda_gp * gp + lambda_l2 * l2)
        terms["div"] += div / n_levels
        terms["gp"] += gp / n_levels
        terms["l2"] += l2 / n_levels
    return total / n_levels, terms


@pytest.mark.parametrize("kernel,objective", [("linear", "mmd"), ("rbf", "mmd"), ("rq", "mmd"), ("linear", "kale")])
def test_loss_matches_loop(kernel, objective):
    disc = small_disc(kernel, objective)
    gen = torch.Generator().manual_seed(3)
    x, x_prime = torch.randn(5, 2, generator=gen, dtype=torch.float64), torch.randn(5, 2, generator=gen, dtype=torch.float64)
    t_levels = torch.tensor([0.05, 0.6, 0.93], dtype=torch.float64)
    state = gen.get_state()
    loss, terms = dmmd_loss(disc, x, x_prime, t_levels, PROCESS, 0.7, 0.3, generator=gen)
    ref, ref_terms = _reference_loss(disc, x, x_prime, t_levels, state, 0.7, 0.3)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-10)
    name = "kale" if objective == "kale" else "mmd2"
    torch.testing.assert_close(terms[name], ref_terms["div"].detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(terms["gp"], ref_terms["gp"].detach(), rtol=0, atol=1e-10)
    # Parameter gradients agree too (the GP's double backward included).
    params = [p for p in disc.parameters()]
    g1 = torch.autograd.grad(loss, params, allow_unused=True)
    g2 = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(g1, g2):
        if a is None or b is None:
            assert a is None and b is None or (a if b is None else b).abs().max() == 0
            continue
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_loss_gradcheck_wrt_parameters():
    """The loss (GP double-backward included) is differentiable in the feature head and the width."""
    disc = small_disc("rbf")
    t_levels = torch.tensor([0.3, 0.8], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x, x_prime = torch.randn(4, 2, generator=gen, dtype=torch.float64), torch.randn(4, 2, generator=gen, dtype=torch.float64)
    names = ["backbone.out.2.bias", "width.mlp.2.bias"]
    base = dict(disc.named_parameters())

    def f(head_bias, width_bias):
        params = {**base, names[0]: head_bias, names[1]: width_bias}

        g = torch.Generator().manual_seed(0)
        with torch.nn.utils.stateless._reparametrize_module(disc, params):
            return dmmd_loss(disc, x, x_prime, t_levels, PROCESS, 1.0, 0.1, generator=g)[0]

    inputs = tuple(base[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("fraction,rows", [(0.5, 3), (0.2, 1), (0.25, 2)])
def test_gp_fraction_penalises_first_rows(fraction, rows):
    """train.gp_fraction: the penalty is the mean over the first ceil(fraction B) interpolates of
    every level; the MMD and L2 terms are unchanged."""
    disc = small_disc("rbf")
    gen = torch.Generator().manual_seed(4)
    x, x_prime = torch.randn(5, 2, generator=gen, dtype=torch.float64), torch.randn(5, 2, generator=gen, dtype=torch.float64)
    t_levels = torch.tensor([0.2, 0.7], dtype=torch.float64)
    state = gen.get_state()
    loss, terms = dmmd_loss(disc, x, x_prime, t_levels, PROCESS, 0.7, 0.3, generator=gen, gp_fraction=fraction)
    ref, ref_terms = _reference_loss(disc, x, x_prime, t_levels, state, 0.7, 0.3, gp_rows=rows)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms["gp"], ref_terms["gp"].detach(), rtol=0, atol=1e-10)
    full, full_terms = dmmd_loss(disc, x, x_prime, t_levels, PROCESS, 0.7, 0.3,
                                 generator=torch.Generator().set_state(state))
    assert abs(float(full_terms["gp"] - terms["gp"])) > 1e-6  # a different estimate of the same penalty
    torch.testing.assert_close(full_terms["mmd2"], terms["mmd2"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_gp_fraction_out_of_range(fraction):
    disc = small_disc("linear")
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="gp_fraction"):
        dmmd_loss(disc, x, x, torch.tensor([0.5], dtype=torch.float64), PROCESS, 1.0, 0.1, gp_fraction=fraction)


# ------------------------------------------------------- lazy regularisation (train.gp_every)


@pytest.mark.parametrize("kernel,objective", [("linear", "mmd"), ("rbf", "mmd"), ("linear", "kale")])
@pytest.mark.parametrize("scale", [0, 1, 4, 16])
def test_gp_scale_weights_or_drops_the_penalty(kernel, objective, scale):
    """gp_scale k: the loss is the MMD part + k lambda_gp GP (+ L2) of the float64 loop; k = 0: no
    penalty term at all, with the same parameter gradients as the loop with lambda_gp = 0, and
    the generator left where a penalised step leaves it."""
    disc = small_disc(kernel, objective)
    if objective == "kale":  # a steep critic, so that the one-sided penalty is not zero
        with torch.no_grad():
            disc.critic.weight.mul_(200.0)
    gen = torch.Generator().manual_seed(7)
    x, x_prime = torch.randn(4, 2, generator=gen, dtype=torch.float64), torch.randn(4, 2, generator=gen, dtype=torch.float64)
    t_levels = torch.tensor([0.15, 0.75], dtype=torch.float64)
    state = gen.get_state()
    loss, terms = dmmd_loss(disc, x, x_prime, t_levels, PROCESS, 0.7, 0.3, generator=gen, gp_scale=scale)
    after = gen.get_state()
    ref, ref_terms = _reference_loss(disc, x, x_prime, t_levels, state, 0.7 * scale, 0.3)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-10)
    name = "kale" if objective == "kale" else "mmd2"
    torch.testing.assert_close(terms[name], ref_terms["div"].detach(), rtol=0, atol=1e-10)
    if scale:
        torch.testing.assert_close(terms["gp"], ref_terms["gp"].detach(), rtol=0, atol=1e-10)
        assert abs(float(ref_terms["gp"].detach())) > 1e-6  # the penalty is there to be weighted
    else:
        assert "gp" not in terms
    params = list(disc.parameters())
    for a, b in zip(torch.autograd.grad(loss, params, allow_unused=True), torch.autograd.grad(ref, params, allow_unused=True)):
        if a is None or b is None:
            assert (a if b is None else b) is None or (a if b is None else b).abs().max() == 0
            continue
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    penalised = torch.Generator().set_state(state)
    dmmd_loss(disc, x, x_prime, t_levels, PROCESS, 0.7, 0.3, generator=penalised)
    assert torch.equal(after, penalised.get_state())


def test_gp_scale_negative_refused():
    disc = small_disc("linear")
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="gp_scale"):
        dmmd_loss(disc, x, x, torch.tensor([0.5], dtype=torch.float64), PROCESS, 1.0, 0.1, gp_scale=-1)


def _tiny_config(*extra):
    from dmmd import config

    return config.load(None, ["data.name=eight_gaussians", "model.width=8", "model.feature_dim=4", "model.time_dim=8",
                              "model.depth=1", "train.batch_size=8", "sample.replay_particles=20",
                              "sample.num_levels=2", "sample.steps_per_level=1", "train.threads=1", *extra])


def test_train_step_penalises_every_kth_step(monkeypatch):
    """train.gp_every = 3: steps 3 and 6 (1-based, as logged) carry the penalty with weight 3, the
    others none; the logged loss is -mmd2 + 3 lambda_gp gp + lambda_l2 l2 on penalty steps."""
    from dmmd.methods.build import build_process
    from dmmd.training import loop as training

    cfg = _tiny_config("train.gp_every=3", "train.lambda_gp=0.5")
    state, process = training.new_state(cfg, (2,)), build_process(cfg.process)
    scales = []
    real = training.dmmd_loss_parts

    def spy(*args, **kwargs):
        scales.append(kwargs["gp_scale"])
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "dmmd_loss_parts", spy)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    records = [training.train_step(state, data, process, cfg) for _ in range(6)]
    assert scales == [0, 0, 3, 0, 0, 3]
    assert [("gp" in r) for r in records] == [False, False, True, False, False, True]
    for r in records:
        penalty = 3 * 0.5 * r["gp"] if "gp" in r else 0.0
        assert r["loss"] == pytest.approx(-r["mmd2"] + penalty + 0.1 * r["l2"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("method,every,clip,expected,lazy", [
    ("dmmd", 3, 1.0, [1.0, 1.0, 3.0, 1.0, 1.0, 3.0], "scale"),  # penalty steps 3 and 6 (1-based) clip at k grad_clip
    ("dmmd", 1, 0.5, [0.5] * 6, "scale"),
    ("dmmd", 4, 0.0, [math.inf] * 6, "scale"),  # grad_clip 0: no clipping
    ("ddpm", 3, 1.0, [1.0] * 6, "scale"),  # the baselines have no penalty to weight
    ("dmmd", 3, 1.0, [1.0] * 6, "reuse"),  # every step carries the penalty at weight 1
])
def test_clip_threshold_follows_the_lazy_weight(monkeypatch, method, every, clip, expected, lazy):
    """With train.gp_every = k the penalty step's gradient carries a k-fold penalty; its clip
    threshold is k grad_clip so that clipping (active on every DMMD step: norms of 10-25 against
    1) does not scale the k back out. Checked on the thresholds train_step hands to the clip."""
    from dmmd.methods.build import build_process
    from dmmd.training import loop as training

    cfg = _tiny_config(f"method={method}", f"train.gp_every={every}", f"train.grad_clip={clip}", f"train.gp_lazy={lazy}",
                       *(["sample.sampler=ddpm"] if method == "ddpm" else []))
    state, process = training.new_state(cfg, (2,)), build_process(cfg.process)
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        seen.append(max_norm)
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for _ in range(6):
        training.train_step(state, data, process, cfg)
    assert seen == expected


@pytest.mark.parametrize("lazy", ["scale", "reuse"])
def test_lazy_regularisation_resumes_exactly(tmp_path, lazy):
    """A run with train.gp_every = 3 stopped at step 5 (between penalty steps; under 'reuse' the
    kept gradient of step 4 is still in use) and resumed ends with the same weights, EMA and
    optimizer state as the uninterrupted run."""
    from dmmd.training.loop import train

    data = torch.randn(128, 2, generator=torch.Generator().manual_seed(1))
    lazy_keys = ("train.gp_every=3", f"train.gp_lazy={lazy}", "train.checkpoint_every=5", "train.best_by=none")
    cfg = _tiny_config(*lazy_keys, "train.steps=8")
    whole = train(cfg, data, tmp_path / "whole", progress=False)
    train(_tiny_config(*lazy_keys, "train.steps=5"), data, tmp_path / "split", progress=False)
    resumed = train(cfg, data, tmp_path / "split", resume=True, progress=False)
    assert resumed.step == whole.step == 8
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(whole.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    lazy_free = train(_tiny_config("train.steps=8", "train.best_by=none"), data, tmp_path / "every", progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(),
                                                     lazy_free.model.state_dict().values()))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_reuse_adds_the_kept_penalty_gradient(monkeypatch, kernel):
    """train.gp_lazy = reuse, gp_every = 3: the penalty is computed on steps 1 and 4 (1-based) at
    weight lambda_gp. On those steps the gradient handed to Adam is the full gradient of -MMD2 + L2 +
    penalty. On the steps after, it is the gradient of that step's -MMD2 + L2 part, plus the
    penalty's gradient along the interpolates at the weights and batch of the last penalty step, plus
    the penalty's path through the batch features: c . d(a, b)/d theta with c = dGP/d(a, b) of the
    last penalty step and (a, b) this step's features. The reference recomputes everything from the
    arguments and weights of each step (clip off), without hold_population: the interpolates' part is
    the penalty's full gradient minus the gradient of <c, (a, b)>. (Linear kernel: every row of c is
    the same, dGP/d(mean feature) / B; rbf: row i of c meets row i of the later step's batch.)"""
    import copy

    from dmmd.methods.build import build_process
    from dmmd.training import loop as training

    cfg = _tiny_config("train.gp_every=3", "train.gp_lazy=reuse", "train.lambda_gp=0.5", "train.grad_clip=0",
                       f"model.kernel={kernel}", *([] if kernel == "linear" else ["sample.sampler=exact"]))
    state, process = training.new_state(cfg, (2,)), build_process(cfg.process)
    calls, applied = [], []
    real = training.dmmd_loss_parts

    def spy(model, x, x_prime, t_levels, proc, lambda_gp, lambda_l2, gen, *args, **kwargs):
        calls.append(dict(model=copy.deepcopy(model), x=x, x_prime=x_prime, t=t_levels, gen=gen.get_state(),
                          scale=kwargs["gp_scale"]))
        return real(model, x, x_prime, t_levels, proc, lambda_gp, lambda_l2, gen, *args, **kwargs)

    monkeypatch.setattr(training, "dmmd_loss_parts", spy)
    step = state.optimizer.step

    def record(*args, **kwargs):
        applied.append([p.grad.clone() for p in state.model.parameters()])
        return step(*args, **kwargs)

    state.optimizer.step = record
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    records = [training.train_step(state, data, process, cfg) for _ in range(6)]
    assert [c["scale"] for c in calls] == [1, 0, 0, 1, 0, 0]
    assert [("gp" in r) for r in records] == [True, False, False, True, False, False]

    def parts(c):  # at that step's weights and draws: grad(rest), grad(penalty), features, dGP/dfeatures
        rest, penalty, _, (a, b), _ = real(c["model"], c["x"], c["x_prime"], c["t"], process, 0.5, cfg.train.lambda_l2,
                                           torch.Generator().set_state(c["gen"]), gp_scale=1)
        params = list(c["model"].parameters())
        g_rest, g_pen = grad(rest, params), grad(penalty, params)
        c_ab = torch.autograd.grad(penalty, [a, b], retain_graph=True)
        g_path = grad((c_ab[0] * a).sum() + (c_ab[1] * b).sum(), params)
        return dict(params=params, rest=g_rest, pen=g_pen, c=c_ab, path=g_path, a=a, b=b)

    def grad(out, params):  # zeros where a parameter does not reach `out` (the rbf width net and the path)
        got = torch.autograd.grad(out, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(got, params)]

    ref = [parts(c) for c in calls]
    for i in range(6):
        if i % 3 == 0:
            expected = [r + p for r, p in zip(ref[i]["rest"], ref[i]["pen"])]
        else:
            f, now = ref[i - i % 3], ref[i]
            interp = [p - q for p, q in zip(f["pen"], f["path"])]
            path_now = grad((f["c"][0] * now["a"]).sum() + (f["c"][1] * now["b"]).sum(), now["params"])
            expected = [r + g + q for r, g, q in zip(now["rest"], interp, path_now)]
        for got, want in zip(applied[i], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Both kept parts carry weight, so leaving either out would show.
    assert max(float(g.abs().max()) for g in ref[0]["path"]) > 1e-4
    assert max(float((p - q).abs().max()) for p, q in zip(ref[0]["pen"], ref[0]["path"])) > 1e-4


@pytest.mark.parametrize("backbone", ["mlp", "unet"])
def test_reuse_penalty_step_costs_a_full_penalty_step(backbone):
    """A 'reuse' penalty step does the work of a full-penalty step and no more: the same matmul and
    convolution FLOPs, within 2% (counted by torch.utils.flop_counter's formulas on every aten call, forward and
    backward), so no second backward pass over the clean and corrupted inputs; a step in between does
    the work of a step without the penalty. (FlopCounterMode itself cannot watch autograd.grad calls
    on leaves: its module hooks refuse them.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func._overloadpacket in flop_registry:
                self.total += flop_registry[func._overloadpacket](*args, **(kwargs or {}), out_val=out)
            return out

    from dmmd.methods.build import build_process
    from dmmd.training import loop as training

    shape = (2,) if backbone == "mlp" else (1, 8, 8)
    extra = [] if backbone == "mlp" else ["model.backbone=unet", "model.base_channels=8", "model.channel_mults=[1]",
                                          "model.num_res_blocks=1", "model.attn_resolutions=[]"]
    data = torch.randn(64, *shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)

    def flops(*keys, steps=1):
        cfg = _tiny_config(*extra, "train.batch_size=16", *keys)
        state, process = training.new_state(cfg, shape), build_process(cfg.process)
        counts = []
        for _ in range(steps):
            with Counter() as counter:
                training.train_step(state, data, process, cfg)
            counts.append(counter.total)
        return counts

    full, = flops("train.gp_every=1")
    plain = flops("train.gp_every=2", steps=1)[0]  # gp_lazy scale: no penalty on step 1 of 2
    reuse = flops("train.gp_every=3", "train.gp_lazy=reuse", steps=2)
    assert plain < full
    assert full * 0.98 <= reuse[0] <= full  # (a little under: the witness's backward to the held means)
    assert plain * 0.98 <= reuse[1] <= plain * 1.02


@pytest.mark.parametrize("extra", [[], ["model.objective=kale", "sample.sampler=kale"],
                                   ["model.conditional=true", "model.num_classes=3"]], ids=["mmd", "kale", "conditional"])
def test_reuse_penalty_step_equals_a_full_penalty_step(extra):
    """The first step of a 'reuse' run is a penalty step at weight lambda_gp: its update (weights after
    Adam) equals a gp_every = 1 step's from the same start and draws, for the MMD and KALE objectives
    and a conditional discriminator; what it keeps is one tensor per parameter, plus the two feature
    cotangents unless the objective is KALE (whose penalty does not read the batch features)."""
    from dmmd.methods.build import build_process
    from dmmd.training import loop as training

    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(64) % 3 if "model.conditional=true" in extra else None
    after = {}
    for keys in (["train.gp_every=1"], ["train.gp_every=3", "train.gp_lazy=reuse"]):
        cfg = _tiny_config(*extra, *keys)
        state, process = training.new_state(cfg, (2,)), build_process(cfg.process)
        record = training.train_step(state, data, process, cfg, labels=labels)
        assert "gp" in record and math.isfinite(record["loss"])
        after[keys[-1]] = (state, record)
    (full, r_full), (reuse, r_reuse) = after["train.gp_every=1"], after["train.gp_lazy=reuse"]
    assert r_reuse["loss"] == pytest.approx(r_full["loss"], rel=1e-5)
    for a, b in zip(full.model.parameters(), reuse.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    params = [p for p in reuse.model.parameters() if p.requires_grad]
    assert len(reuse.gp_cache) == len(params) + (0 if "model.objective=kale" in extra else 2)
    assert full.gp_cache is None


def test_reuse_checkpoint_with_foreign_cache_refused():
    from dmmd.runtime import checkpoint as ckpt
    from dmmd.training import loop as training

    cfg = _tiny_config("train.gp_every=3", "train.gp_lazy=reuse")
    state = training.new_state(cfg, (2,))
    payload = training.state_payload(state, cfg)
    assert "gp_cache" not in payload  # nothing kept yet
    payload["gp_cache"] = [torch.zeros(3)]
    with pytest.raises(ckpt.CheckpointError, match="gp_cache"):
        training.restore_state(training.new_state(cfg, (2,)), payload)
    params = [torch.ones_like(p) for p in state.model.parameters()]
    payload["gp_cache"] = params  # an earlier version's cache: the parameters' part only
    with pytest.raises(ckpt.CheckpointError, match="gp_cache"):
        training.restore_state(training.new_state(cfg, (2,)), payload)
    payload["gp_cache"] = [*params, torch.ones(1, 32, 8), torch.ones(1, 32, 9)]  # cotangents of two shapes
    with pytest.raises(ckpt.CheckpointError, match="gp_cache"):
        training.restore_state(training.new_state(cfg, (2,)), payload)
    payload["gp_cache"] = [*params, torch.ones(1, 32, 8), torch.ones(1, 32, 8)]
    fresh = training.new_state(cfg, (2,))
    training.restore_state(fresh, payload)
    assert all(torch.equal(g, torch.ones_like(g)) for g in fresh.gp_cache)
