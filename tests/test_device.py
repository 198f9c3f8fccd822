"""Device names, channels-last layout and torch.compile (dmmd.runtime.device): CPU checks of the GPU path."""

import pytest
import torch

from dmmd import config
from dmmd.cli import main
from dmmd.methods.build import build_process
from dmmd.runtime.device import as_layout, resolve_device
from dmmd.training.loop import train_step
from dmmd.training.state import new_state

UNET = ["data.name=file", "model.backbone=unet", "model.base_channels=8", "model.channel_mults=[1,2]",
        "model.attn_resolutions=[4]", "model.feature_dim=16", "train.batch_size=4", "train.num_levels=2"]
MLP = ["data.name=eight_gaussians", "model.width=16", "model.feature_dim=8", "model.time_dim=8", "model.depth=1",
       "train.batch_size=8"]


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "gpu", ""):
        with pytest.raises(config.ConfigError, match="auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_absent_cuda_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(config.ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    code = main(["train", *sum((["--set", s] for s in MLP + ["train.steps=2", "train.device=cuda"]), []),
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no CUDA device" in err


def test_config_rejects_bad_device_and_compile_with_gradient_penalty():
    with pytest.raises(config.ConfigError, match="train.device"):
        config.load(None, MLP + ["train.device=tpu"])
    with pytest.raises(config.ConfigError, match="double backward"):
        config.load(None, MLP + ["train.compile=true"])
    config.load(None, MLP + ["train.compile=true", "train.lambda_gp=0"])
    config.load(None, MLP + ["train.compile=true", "method=ddpm", "sample.sampler=ddpm"])


def test_channels_last_step_equals_default_layout():
    """A U-Net training step (gradient penalty included) with channels-last weights and batches has
    the default layout's loss and parameter gradient (compared as one vector: single biases in front
    of a GroupNorm have gradients that are zero up to round-off)."""
    data = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = []
    for channels_last in (False, True):
        cfg = config.load(None, UNET + [f"train.channels_last={str(channels_last).lower()}", "train.grad_clip=0"])
        state = new_state(cfg, (3, 8, 8))
        state.optimizer.param_groups[0]["lr"] = 0.0  # keep the weights: the step's gradient is what we compare
        record = train_step(state, data, build_process(cfg.process), cfg)
        conv = next(p for p in state.model.parameters() if p.ndim == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        grad = torch.cat([p.grad.flatten() for p in state.model.parameters() if p.grad is not None])
        results.append((record["loss"], grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5, abs=1e-6)
    assert float((results[0][1] - results[1][1]).norm() / results[0][1].norm()) < 1e-4
    x = torch.zeros(2, 3, 4, 4)
    assert as_layout(x, True).is_contiguous(memory_format=torch.channels_last)
    assert as_layout(torch.zeros(2, 5), True).shape == (2, 5)


@pytest.mark.slow
def test_compiled_ddpm_step_equals_eager(monkeypatch):
    """train.compile (DDPM: no double backward) gives the eager step's loss. torch.compile runs
    with the aot_eager backend: the same graph capture (dynamo) and AOTAutograd as the default
    backend, without inductor's C++ build (10-35 CPU-s on a cold cache, which CI always has);
    inductor's code generation is torch's own and is exercised on a GPU by docs/gpu.md's checks."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, **{**kw, "backend": "aot_eager"}))
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    losses = []
    for compiled in (False, True):
        cfg = config.load(None, MLP + ["method=ddpm", "sample.sampler=ddpm", f"train.compile={str(compiled).lower()}"])
        state = new_state(cfg, (2,))
        losses.append([train_step(state, data, build_process(cfg.process), cfg)["loss"] for _ in range(2)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_threads_are_capped_at_the_cores():
    import os

    from dmmd.runtime.device import thread_guard

    lines = []
    with thread_guard(5000, echo=lines.append) as n:
        assert n == torch.get_num_threads() == (os.cpu_count() or 1)
    assert lines == [f"note: train.threads = 5000 is more than this machine's {os.cpu_count()} cores; using "
                     f"{os.cpu_count()}"]
