import pytest
import torch

from dmmd import config
from dmmd.methods.build import build_process
from dmmd.math.noising import time_grid
from dmmd.training.loop import TrainingDiverged, train_step, training_levels
from dmmd.training.state import new_state

ARGS = ["data.name=eight_gaussians", "model.width=8", "model.feature_dim=4", "model.time_dim=8", "model.depth=1",
        "train.batch_size=8"]


def _setup(*extra):
    cfg = config.load(None, [*ARGS, *extra])
    return cfg, new_state(cfg, (2,)), build_process(cfg.process)


def test_train_step_moves_weights_and_ema():
    cfg, state, process = _setup()
    data = torch.randn(64, 2)
    before = [p.detach().clone() for p in state.model.parameters()]
    record = train_step(state, data, process, cfg)
    assert state.step == 1 and {"loss", "mmd2", "gp", "l2", "grad_norm"} <= record.keys()
    assert any(not torch.equal(a, b) for a, b in zip(before, state.model.parameters()))
    # AveragedModel copies on its first update; the second uses weight 1 - min(0.999, 2/11) = 9/11.
    for e, p in zip(state.ema.module.parameters(), state.model.parameters()):
        assert torch.equal(e, p)
    first = [p.detach().clone() for p in state.model.parameters()]
    train_step(state, data, process, cfg)
    for e, p, b in zip(state.ema.module.parameters(), state.model.parameters(), first):
        torch.testing.assert_close(e, b + 9 / 11 * (p - b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("grid", ["uniform", "log_snr"])
def test_training_levels_from_the_sampler_grid(grid):
    """train.levels = 'sampler_grid' draws only the sampler's T levels, every one of them in time;
    the default draws uniformly in [t_min, t_max], off the grid."""
    cfg, _, process = _setup("train.levels=sampler_grid", "sample.num_levels=7", f"sample.grid={grid}",
                             "train.num_levels=3")
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat([training_levels(cfg, process, gen) for _ in range(200)])
    assert drawn.dtype == torch.float64 and drawn.shape == (600,)
    levels = time_grid(process, 7, grid)
    assert torch.equal(torch.unique(drawn), torch.unique(levels))
    cfg, _, process = _setup("train.num_levels=3")
    drawn = torch.cat([training_levels(cfg, process, gen) for _ in range(200)])
    assert ((drawn >= process.t_min) & (drawn <= process.t_max)).all() and len(torch.unique(drawn)) == 600
    assert 0.45 < float(drawn.mean()) < 0.55


@pytest.mark.parametrize("bad", ["data", "gradient"])
def test_nonfinite_stops_with_step_and_term(bad, monkeypatch):
    cfg, state, process = _setup()
    data = torch.randn(64, 2)
    train_step(state, data, process, cfg)
    if bad == "data":
        data = data.clone()
        data[:] = float("nan")
        match = "non-finite (mmd2|gp|l2) at step 2"
    else:
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(float("inf")))
        match = "non-finite gradient at step 2"
    with pytest.raises(TrainingDiverged, match=match):
        train_step(state, data, process, cfg)


def test_nonfinite_skip_leaves_weights():
    cfg, state, process = _setup("train.on_nonfinite=skip")
    data = torch.full((64, 2), float("nan"))
    before = [p.detach().clone() for p in state.model.parameters()]
    assert "skipped" in train_step(state, data, process, cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters()))
    assert state.step == 1


def test_bf16_autocast_step_runs_and_stays_close():
    """bf16 autocast (the GPU path; CPU autocast exercises the same code) keeps float32 weights and
    gives loss terms close to float32's on the same draws."""
    cfg, state, process = _setup()
    cfg16, state16, _ = _setup("train.precision=bf16")
    data = torch.randn(64, 2)
    r32, r16 = train_step(state, data, process, cfg), train_step(state16, data, process, cfg16)
    assert all(p.dtype == torch.float32 for p in state16.model.parameters())
    assert abs(r16["mmd2"] - r32["mmd2"]) <= 0.05 * abs(r32["mmd2"]) + 1e-3


@pytest.mark.parametrize("method", ["dmmd", "ddpm"])
def test_best_checkpoint_is_lowest_held_out_loss(tmp_path, method):
    """train.best_by = 'val_loss': each checkpoint logs the EMA model's held-out loss; best.pt is the
    checkpoint of the lowest one, kept beside the last K periodic checkpoints and final.pt."""
    import json

    from dmmd.data.datasets import load_dataset
    from dmmd.runtime import checkpoint as ckpt
    from dmmd.training.loop import train

    extra = ["method=ddpm", "sample.sampler=ddpm"] if method == "ddpm" else []
    cfg = config.load(None, ARGS + extra + ["train.steps=12", "train.checkpoint_every=3", "train.keep_checkpoints=1",
                                            "train.lr=0.02"])
    data = load_dataset(cfg.data, cfg.seed)
    state = train(cfg, data.train, tmp_path, progress=False, val_data=data.test)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [3, 6, 9, 12]
    best_step = min(val, key=val.get)
    best = ckpt.load(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == best_step and state.best == {"step": best_step, "val_loss": val[best_step]}
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["best.pt", "final.pt", "step_00000009.pt"]
    # the held-out loss is a deterministic function of the weights (fixed levels and seed)
    from dmmd.training.loop import validation_loss

    model = state.ema.module
    assert validation_loss(model, data.test, build_process(cfg.process), cfg) == validation_loss(
        model, data.test, build_process(cfg.process), cfg)


def test_best_by_none_keeps_no_best(tmp_path):
    from dmmd.data.datasets import load_dataset
    from dmmd.training.loop import train

    cfg = config.load(None, ARGS + ["train.steps=4", "train.checkpoint_every=2", "train.best_by=none"])
    data = load_dataset(cfg.data, cfg.seed)
    train(cfg, data.train, tmp_path, progress=False, val_data=data.test)
    assert not (tmp_path / "checkpoints" / "best.pt").exists()
    assert "val_loss" not in (tmp_path / "metrics.jsonl").read_text()


def test_train_threads_set_during_training_and_restored(tmp_path, monkeypatch):
    import dmmd.training.loop as training
    from dmmd.data.datasets import load_dataset

    seen = []
    real_step = training.train_step
    monkeypatch.setattr(training, "train_step", lambda *a, **k: (seen.append(torch.get_num_threads()), real_step(*a, **k))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = config.load(None, ARGS + ["train.steps=2", "train.threads=1"])
        data = load_dataset(cfg.data, cfg.seed)
        training.train(cfg, data.train, tmp_path, progress=False)
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(config.ConfigError, match="train.threads"):
        config.load(None, ARGS + ["train.threads=-1"])


def test_resumed_run_recalibrates_for_its_final_weights(tmp_path):
    """The statistics stored at the end of a resumed run are those of its final EMA model, not the
    ones restored from the earlier checkpoint (a stale mu_data made the replay diverge)."""
    from dmmd.methods.sample import calibrate
    from dmmd.training.loop import train

    cfg = config.load(None, [*ARGS, "train.steps=6", "train.checkpoint_every=3", "sample.num_levels=3",
                             "sample.steps_per_level=2", "sample.replay_particles=20", "train.best_by=none"])
    data = torch.randn(200, 2)
    train(cfg, data, tmp_path / "run", progress=False)
    cfg.train.steps = 12
    state = train(cfg, data, tmp_path / "run", resume=True, progress=False)
    fresh = calibrate(state.ema.module, cfg, data, build_process(cfg.process), None)
    torch.testing.assert_close(state.stats["data_mean"], fresh["data_mean"])
    for tag, replay in fresh["replay"].items():
        torch.testing.assert_close(state.stats["replay"][tag], replay)
