"""Algorithm 1: train the noise-conditional discriminator; EMA, checkpoints, exact resume.

Every random draw (batch indices, noise levels, corruption noise, interpolation weights) comes
from one torch.Generator whose state is checkpointed, so a resumed run continues exactly.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path

import torch

from dmmd.config import Config, from_dict, to_json
from dmmd.math.conditioning import drop_labels
from dmmd.math.noising import time_grid
from dmmd.methods.build import build_process
from dmmd.methods.ddpm import ddpm_loss
from dmmd.methods.flow_matching import fm_loss
from dmmd.methods.losses import dmmd_loss, dmmd_loss_parts
from dmmd.methods.sample import calibrate
from dmmd.runtime import checkpoint as ckpt
from dmmd.runtime.checkpoint import check_stats
from dmmd.runtime.device import as_layout, thread_guard
from dmmd.runtime.distributed import Context, all_reduce_gradients, barrier, init_from_env, shutdown, sum_over_ranks
from dmmd.runtime.resume import check_resume
from dmmd.runtime.runfolder import remove_stale_temps
from dmmd.runtime.signals import Interrupted, signal_name, stop_requested, stop_signals
from dmmd.runtime.terminal import bars_drawable
from dmmd.training.log import RunLog
from dmmd.training.state import (
    StreamSource,
    TrainState,
    _batch,
    new_state,
    restore_state,
    state_payload,
)


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient under train.on_nonfinite = 'stop'."""


UNBOUNDED_STEPS = 10**9  # train.steps that only a time budget ends (dmmd compare): logs show no total or ETA


def stop_at_boundary(state: TrainState, cfg: Config, run_dir: Path, first_step: int, log: RunLog) -> None:
    """After SIGTERM/SIGINT: checkpoint the step reached (unless no step was taken since the last
    one), log where to resume from, and raise Interrupted (exit 128 + signal)."""
    signum = stop_requested()
    if state.step > first_step:
        where = f"checkpoint {save_checkpoint(state, cfg, run_dir)}"
    else:
        where = "no step since " + ("the start" if state.step == 0 else f"the checkpoint of step {state.step}")
    message = (f"stopped by {signal_name(signum)} at step {state.step} ({where}); continue with: "
               f"dmmd train --resume {run_dir}")
    log.line(message, echo=False)  # the CLI prints it once, on stderr
    log.close()
    raise Interrupted(message, signum)


def clip_threshold(tc, step: int, method: str = "dmmd") -> float:
    """The gradient-norm clip of the step after `step` steps: train.grad_clip (inf when 0), times k on
    a lazy penalty step (train.gp_every = k). DMMD's gradient norms run far above the clip (10-25
    against 1 on digits), so a fixed threshold would scale the k-weighted penalty step down to the
    norm of a plain step and undo the k: the penalty then gets about a third of its weight and the
    critic's scale runs away (digits FD ~500, benchmarks/results/gp_quality_digits.md). Scaling the
    threshold by the same k keeps the penalty-to-MMD ratio of the k steps that of gp_every = 1."""
    if tc.grad_clip <= 0:
        return math.inf
    return tc.grad_clip * (max(gp_weight(tc, step), 1) if method == "dmmd" and not reuses_penalty(tc) else 1)


def gp_weight(tc, step: int) -> int:
    """The penalty's multiple of lambda_gp on the step after `step` steps: train.gp_every = k on
    steps k, 2k, ... (1-based, as logged), 0 on the others (k = 1: every step, weight 1).
    Under train.gp_lazy = 'reuse': 1 on steps 1, k + 1, 2k + 1, ..., 0 on the others."""
    if reuses_penalty(tc):
        return int(step % tc.gp_every == 0)
    return tc.gp_every if (step + 1) % tc.gp_every == 0 else 0


def reuses_penalty(tc) -> bool:
    """Lazy regularisation in its 'reuse' form: the penalty computed on every k-th step (train.gp_every
    = k > 1) at weight lambda_gp, its gradient kept (kept_penalty_gradient) and added again on the
    k - 1 steps after: the part along the interpolates unchanged, the part through the batch
    features at that step's features. Every step carries the penalty at its plain weight and the
    clip threshold stays put."""
    return tc.gp_every > 1 and tc.gp_lazy == "reuse"


def kept_penalty_gradient(parts, params: list[torch.Tensor], ctx: Context) -> list[torch.Tensor]:
    """What a 'reuse' penalty step keeps (dmmd_loss_parts with hold_population): the penalty's gradient
    along the interpolates' graph with respect to each parameter, summed over ranks, then its
    gradient with respect to the held batch features (c_a, c_b; (L, B, D) each, none under KALE),
    summed over ranks and divided by their number, so that every rank holds the same list and the
    sum over ranks of <c, features> carries the ranks' whole penalty."""
    held = list(parts.held or ())
    grads = torch.autograd.grad(parts.penalty, [*params, *held], allow_unused=True)
    cache = [torch.zeros_like(x) if g is None else g.detach() for g, x in zip(grads, [*params, *held])]
    if ctx.active:
        flat = torch.cat([g.reshape(-1) for g in cache])
        torch.distributed.all_reduce(flat)
        flat[sum(g.numel() for g in cache[:len(params)]):] /= ctx.world_size
        cache = [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in cache]), cache)]
    return cache


@functools.lru_cache(maxsize=4)
def _walked_levels(process, num_levels: int, kind: str) -> torch.Tensor:
    """time_grid once per run's process (processes hash by identity): 'log_snr' bisects, 3.6 ms a call."""
    return time_grid(process, num_levels, kind)


def training_levels(cfg: Config, process, gen: torch.Generator) -> torch.Tensor:
    """The N_n noise levels of one DMMD step (float64): uniform in [t_min, t_max], or with
    train.levels = 'sampler_grid' drawn with replacement from the T levels the config's sampler
    walks (sample.num_levels on sample.grid)."""
    tc = cfg.train
    if tc.levels == "sampler_grid":
        grid = _walked_levels(process, cfg.sample.num_levels, cfg.sample.grid)
        pick = torch.randint(len(grid), (tc.num_levels,), generator=gen, device=gen.device)
        return grid.to(gen.device)[pick]
    return process.t_min + (process.t_max - process.t_min) * torch.rand(
        tc.num_levels, generator=gen, device=gen.device, dtype=torch.float64)


def train_step(state: TrainState, train_data, process, cfg: Config, ctx: Context = Context(),
               labels: torch.Tensor | None = None) -> dict:
    """One step of Algorithm 1; returns the loss terms as floats (skipped: {'skipped': term}).

    Under data parallelism every rank draws the same global batch and holds the same weights.
    labels: (N,) class labels of train_data for a conditional model; a share train.p_uncond of the
    batch's rows gets the null label, drawn from the training generator right after the indices."""
    tc, gen = cfg.train, state.generator
    baseline = cfg.method != "dmmd"  # DDPM and flow matching: one batch, a regression loss
    reuse = not baseline and reuses_penalty(tc)
    idx = torch.randint(0, len(train_data), ((1 if baseline else 2) * tc.batch_size,), generator=gen, device=gen.device)
    batch = as_layout(_batch(train_data, idx, state.step), tc.channels_last)
    y = None
    if labels is not None:
        y = drop_labels(labels[idx.to(labels.device)].to(gen.device), cfg.model.num_classes, tc.p_uncond, gen)
    with torch.autocast(device_type=batch.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
        if cfg.method == "ddpm":
            loss, terms = ddpm_loss(state.model, batch, process, gen, y=y)
        elif cfg.method == "fm":
            loss, terms = fm_loss(state.model, batch, gen, y=y)
        else:
            pair = dict(y=y[: tc.batch_size], y_prime=y[tc.batch_size:]) if y is not None else {}
            x, x_prime = batch[: tc.batch_size], batch[tc.batch_size:]
            t_levels = training_levels(cfg, process, gen)
            fresh = reuse and (state.gp_cache is None or gp_weight(tc, state.step) > 0)
            parts = dmmd_loss_parts(state.model, x, x_prime, t_levels, process, tc.lambda_gp, tc.lambda_l2, gen, ctx,
                                    tc.gp_fraction, gp_scale=int(fresh) if reuse else gp_weight(tc, state.step),
                                    hold_population=reuse, **pair)
            loss, terms = parts.rest + (0.0 if reuse else parts.penalty), parts.terms
    if ctx.active:  # penalties are local sums; the divergence is already the global one
        terms = {k: v if k in ("mmd2", "kale") else sum_over_ranks(v, ctx) for k, v in terms.items()}
    bad = next((name for name, v in terms.items() if not torch.isfinite(v)), None)
    state.optimizer.zero_grad(set_to_none=True)
    cache = None
    if bad is None:
        objective = loss
        if reuse:
            params = [p for p in state.model.parameters() if p.requires_grad]
            cache = kept_penalty_gradient(parts, params, ctx) if fresh else state.gp_cache
            grads, coefficients = cache[:len(params)], cache[len(params):]
            # The penalty's path through the batch features, at this step's features (exact on a fresh step).
            objective = loss + sum((c * f).sum() for c, f in zip(coefficients, parts.features))
            if fresh:
                loss = loss + parts.penalty.detach()
        objective.backward()
        all_reduce_gradients(state.model.parameters(), ctx)
        if reuse:
            for p, g in zip(params, grads):
                p.grad = g.clone() if p.grad is None else p.grad.add_(g)
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip_threshold(tc, state.step, cfg.method))
        if not torch.isfinite(grad_norm):
            bad = "gradient"
    if bad is not None:
        if tc.on_nonfinite == "stop":
            raise TrainingDiverged(f"non-finite {bad} at step {state.step + 1}; the last good checkpoint is kept "
                                   "(lower train.lr, raise train.lambda_l2, or set train.on_nonfinite=skip)")
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return {"skipped": bad}
    if cache is not None:  # kept only from a step that was taken
        state.gp_cache = cache
    state.optimizer.step()
    state.ema.update_parameters(state.model)
    state.step += 1
    return {"loss": float(sum_over_ranks(loss.detach(), ctx)), **{k: float(v) for k, v in terms.items()}, "grad_norm": float(grad_norm)}


VAL_LEVELS = 8  # noise levels of the held-out loss, evenly spread over [t_min, t_max]
VAL_BATCH = 256  # held-out rows per set, at most train.batch_size (DMMD: two disjoint sets, clean and corrupted)
VAL_SEED = 12345  # the held-out loss draws from its own generator: training's stream is untouched


def validation_loss(model: torch.nn.Module, val_data: torch.Tensor, process, cfg: Config,
                    val_labels: torch.Tensor | None = None) -> float:
    """Algorithm 1's loss (DMMD), the epsilon loss (DDPM) or the velocity loss (flow matching) of
    `model` on held-out data, with fixed levels and a fixed seed, so that values at different steps
    compare (lower is better). val_labels: the rows' labels (conditional models; none dropped)."""
    gen = torch.Generator(device=val_data.device).manual_seed(VAL_SEED)
    if cfg.method in ("ddpm", "fm"):
        y = None if val_labels is None else val_labels[:VAL_BATCH]
        with torch.no_grad():
            if cfg.method == "fm":
                return float(fm_loss(model, val_data[:VAL_BATCH], gen, y=y)[0])
            return float(ddpm_loss(model, val_data[:VAL_BATCH], process, gen, y=y)[0])
    half = min(VAL_BATCH, cfg.train.batch_size, len(val_data) // 2)
    x, x_prime = val_data[:half], val_data[half:2 * half]
    pair = {} if val_labels is None else dict(y=val_labels[:half], y_prime=val_labels[half:2 * half])
    levels = process.t_min + (process.t_max - process.t_min) * (torch.arange(VAL_LEVELS, dtype=torch.float64) + 0.5) / VAL_LEVELS
    total = 0.0
    for j in range(VAL_LEVELS):  # one level at a time: memory stays below a training step's
        loss, _ = dmmd_loss(model, x, x_prime, levels[j:j + 1], process, cfg.train.lambda_gp, cfg.train.lambda_l2, gen,
                            **pair)
        total += float(loss.detach())
    return total / VAL_LEVELS


def save_checkpoint(state: TrainState, cfg: Config, run_dir: Path, final: bool = False,
                    val_loss: float | None = None) -> Path:
    """Write a periodic (or the final) checkpoint and point `latest` at it; with val_loss, also
    copy it to best.pt when it is the lowest so far; keep the last train.keep_checkpoints."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    name = "final.pt" if final else f"step_{state.step:08d}.pt"
    improved = val_loss is not None and math.isfinite(val_loss) and (
        state.best is None or val_loss < state.best["val_loss"])
    if improved:
        state.best = {"step": state.step, "val_loss": val_loss}
    payload = state_payload(state, cfg)
    if improved:  # best.pt first: a kill between the two writes leaves the previous latest intact
        ckpt.save(folder / "best.pt", payload)
    ckpt.save(folder / name, payload)
    ckpt.atomic_write_text(run_dir / ckpt.LATEST, f"checkpoints/{name}\n")
    periodic = sorted(folder.glob("step_*.pt"))
    for old in periodic[: max(0, len(periodic) - cfg.train.keep_checkpoints)]:
        old.unlink()
    return folder / name


def train(cfg: Config, train_data: torch.Tensor, run_dir: str | Path, resume: bool = False,
          progress: bool = True, echo=None, stream=None, val_data: torch.Tensor | None = None,
          max_seconds: float | None = None, clock=time.time, labels: torch.Tensor | None = None,
          val_labels: torch.Tensor | None = None) -> TrainState:
    """Run Algorithm 1 for cfg.train.steps, checkpointing into run_dir; returns the final state.

    train_data: the training set in memory; with `stream` (a disk-backed data set) batches are read
    from the stream and train_data only serves to calibrate the sampler statistics at the end.
    val_data: held-out data; with train.best_by = 'val_loss' the EMA model's loss on it is taken at
    every checkpoint, logged, and the lowest one's checkpoint kept as checkpoints/best.pt.
    clock: what max_seconds counts (time.time: wall-clock; time.process_time: CPU time, the fair
    budget on a shared machine).
    labels, val_labels: (N,) class labels of train_data and val_data; needed by model.conditional.
    max_seconds: stop (with the final checkpoint) once this much clock time has passed, even
    before cfg.train.steps (equal-time budgets in `dmmd compare`; not exact-resume material)."""
    single = int(os.environ.get("WORLD_SIZE", "1")) <= 1  # ranks must stop at the same step: signals act as usual
    # also one thread when torch's OpenMP threads would spin; SIGTERM/SIGINT stop at a step boundary
    with thread_guard(cfg.train.threads), stop_signals(enabled=single):
        return _train(cfg, train_data, Path(run_dir), resume, progress, echo, stream, val_data, max_seconds, clock,
                      labels, val_labels)


def _train(cfg: Config, train_data: torch.Tensor, run_dir: Path, resume: bool, progress: bool, echo, stream,
           val_data: torch.Tensor | None, max_seconds: float | None, clock=time.time,
           labels: torch.Tensor | None = None, val_labels: torch.Tensor | None = None) -> TrainState:
    from tqdm.auto import tqdm

    if cfg.model.conditional and labels is None:
        raise ValueError("model.conditional needs the training data's labels")
    if not cfg.model.conditional:
        labels = val_labels = None
    ctx = init_from_env(cfg.train.device)
    if ctx.active and cfg.method != "dmmd":
        raise ValueError("multi-process training is implemented for method = 'dmmd' only")
    if ctx.active and max_seconds is not None:
        raise ValueError("a time budget needs one process (ranks would stop at different steps)")
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(ctx)
    device = ctx.device
    data = train_data.to(device)
    labels = labels.to(device) if labels is not None else None
    source = data if stream is None else StreamSource(stream, cfg.data.workers)
    process = build_process(cfg.process)
    state = new_state(cfg, tuple(data.shape[1:]), device)
    bar_on = bool(progress and ctx.is_main and bars_drawable())  # a bar on a terminal; plain lines otherwise
    if bar_on and echo is not None:  # lines printed above the bar (the held-out loss at checkpoints)
        echo = tqdm.write
    steps_bound = 0 if max_seconds is not None and cfg.train.steps >= UNBOUNDED_STEPS else cfg.train.steps
    log = RunLog(run_dir, echo, enabled=ctx.is_main, total_steps=steps_bound, echo_intervals=not bar_on)
    if resume and (run_dir / ckpt.LATEST).is_file():
        remove_stale_temps(run_dir, ("checkpoints", "checkpoints/stats"))  # left by a kill during a write
        payload = ckpt.load(run_dir, map_location=device)
        check_resume(from_dict(payload["config"]), cfg, f"the checkpoint {ckpt.resolve(run_dir)}")
        if tuple(payload["data_shape"]) != state.data_shape:
            raise ckpt.CheckpointError(f"the checkpoint was trained on items of shape {tuple(payload['data_shape'])}; "
                                       f"the data now has {state.data_shape}")
        check_stats(payload["stats"], ckpt.resolve(run_dir), cfg.method, getattr(state.model, "feature_dim", None))
        restore_state(state, payload, ckpt.resolve(run_dir))
        for group in state.optimizer.param_groups:  # train.lr may change on resume: the optimizer takes it
            group["lr"] = cfg.train.lr
        log.line(f"resumed at step {state.step}")
    elif resume:
        log.line("no checkpoint yet: starting from step 0")
    if ctx.is_main:  # what the run now is (a resume may change the keys dmmd.runtime.resume.RESUMABLE lists)
        ckpt.atomic_write_text(run_dir / "config.json", to_json(cfg) + "\n")
    if not resume:
        log.line(f"training {cfg.method} on {cfg.data.name}: {cfg.train.steps} steps, "
                 f"{sum(p.numel() for p in state.model.parameters())} parameters, {ctx.world_size} process(es) on {device}")
    log.start(state.step)  # metrics after a resumed checkpoint are dropped; elapsed_s continues
    val = None
    val_y = None
    if cfg.train.best_by == "val_loss" and val_data is not None and len(val_data) >= 4:
        val = val_data.to(device)
        val_y = val_labels.to(device) if val_labels is not None else None
    elif cfg.train.best_by == "val_loss" and not resume:
        log.line("no held-out data (at least 4 rows): best.pt is not kept")

    def held_out(state: TrainState, log: RunLog) -> float | None:
        log.preview(state.step, state.ema.module, cfg, data)  # a TensorBoard sample grid, when installed
        if val is None:
            return None
        value = validation_loss(state.ema.module, val, process, cfg, val_y)
        log.val(state.step, value)
        return value

    started, budget_start = time.time(), clock()
    bar = tqdm(total=steps_bound or None, initial=state.step, desc="train", disable=not bar_on, dynamic_ncols=True)
    first_step = state.step
    interval: dict[str, list[float]] = {}  # each loss term's values since the last logged step
    while state.step < cfg.train.steps:
        if stop_requested() is not None:  # SIGTERM/SIGINT: stop at this step boundary
            break
        if max_seconds is not None and clock() - budget_start >= max_seconds:
            log.line(f"time budget of {max_seconds:.1f} s reached at step {state.step}")
            break
        record = train_step(state, source, process, cfg, ctx, labels)
        bar.update(1)
        if "skipped" in record:
            log.line(f"step {state.step}: skipped (non-finite {record['skipped']})")
        else:
            for key, value in record.items():  # the interval's values: the log shows their mean
                interval.setdefault(key, []).append(float(value))
            if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
                means = {f"{k}_mean": sum(v) / len(v) for k, v in interval.items() if k != "grad_norm"}
                interval.clear()
                log.train(state.step, {**record, **means})
                bar.set_postfix({k[:-5]: f"{v:.3g}" for k, v in means.items()})
        if state.step % cfg.train.checkpoint_every == 0 and state.step < cfg.train.steps and ctx.is_main:
            save_checkpoint(state, cfg, run_dir, val_loss=held_out(state, log))
    bar.close()
    if stop_requested() is not None:
        stop_at_boundary(state, cfg, run_dir, first_step, log)
    if ctx.is_main:
        if cfg.method == "dmmd":
            # fresh: statistics restored on resume belong to older weights (reusing their level means
            # made the replay of a resumed run drive particles with a stale mu_data: FD-digits 944)
            state.stats = calibrate(state.ema.module, cfg, data, process, None, labels=labels)
        path = save_checkpoint(state, cfg, run_dir, final=True, val_loss=held_out(state, log))
        log.line(f"done at step {state.step} in {time.time() - started:.1f} s; checkpoint {path}")
    log.close()
    shutdown(ctx)
    return state
