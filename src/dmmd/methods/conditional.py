"""Class-conditional DMMD sampling, and the labels a conditional run trains on (docs/conditional.md).

A conditional discriminator phi(x, t, y) (labels 0..C-1, C = the null label) samples class y by the
linear-kernel flow whose witness is

    f(z; t, y) = <phi(z, t, y), mu_w(t, y) - m(t, y)>,   mu_w(t, y) = mu(t, y) + w (mu(t, y) - mu(t, null))

(dmmd.math.conditioning). Calibration stores, per grid level, the (C + 1, D) data means: row y the mean
of phi(x, t, y) over the training rows of class y, row C the mean of phi(x, t, null) over all rows
("class_data_mean", (T, C + 1, D)). The exact sampler moves each label's particles as their own
population (m(t, y) = the mean feature of the label-y particles); the mean-field replay (reading
(c)) records those per-label means in one exact run of replay_particles particles per label, every
label and the null label at once ("class_replay", (T N_s, C + 1, D) per sampler-settings-and-
guidance tag). New particles then follow the stored means of their label independently, so sample
i depends only on (seed, i) and its label. Particles without a label (None) take the null label:
the unconditional flow of the same network.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmmd.data.files import DataError
from dmmd.math.conditioning import balanced_labels, class_means, class_witness, guided_target
from dmmd.math.noising import time_grid
from dmmd.methods.mmd_flow import FlowSettings, ParticleNoise, _population_features, run_flow
from dmmd.nets.mlp import LabelEmbedding

REPLAY_SEED = 2**31 - 1  # as pipeline.REPLAY_SEED: far from users' sampling seeds


def training_labels(cfg, data) -> tuple[Tensor | None, Tensor | None]:
    """(train labels, held-out labels) for cfg.model.conditional (None, None otherwise); sets
    cfg.model.num_classes from the labels when it is 0. DataError when the data set has no labels
    or a label does not fit num_classes."""
    if not cfg.model.conditional:
        return None, None
    if data.labels_train is None:
        raise DataError(f"model.conditional needs class labels, and data set {cfg.data.name!r} has none (digits, "
                        "mnist, fashion_mnist and cifar10 have them; a .npz data file needs an integer array 'y')")
    largest = int(data.labels_train.max())
    if data.labels_test is not None and len(data.labels_test):
        largest = max(largest, int(data.labels_test.max()))
    if int(data.labels_train.min()) < 0:
        raise DataError(f"labels of {cfg.data.name!r} must be >= 0, found {int(data.labels_train.min())}")
    if cfg.model.num_classes == 0:
        cfg.model.num_classes = largest + 1
    elif largest >= cfg.model.num_classes:
        raise DataError(f"model.num_classes = {cfg.model.num_classes} but the data has label {largest}")
    return data.labels_train.long(), None if data.labels_test is None else data.labels_test.long()


def grid_tag(settings: FlowSettings) -> str:
    return f"T={settings.num_levels},grid={settings.grid}"


def replay_tag(settings: FlowSettings, guidance: float) -> str:
    return f"{settings.tag()},guidance={guidance:g}"


@torch.no_grad()
def class_level_statistics(disc, train: Tensor, labels: Tensor, process, settings: FlowSettings,
                           batch_size: int = 1024) -> Tensor:
    """(T, C + 1, D): per grid level, mean phi(x, t, y) over each class y, and mean phi(x, t, null)
    over all rows (last row)."""
    num_classes = disc.num_classes
    grid = time_grid(process, settings.num_levels, settings.grid)
    labels = labels.to(train.device)
    null = torch.full_like(labels, num_classes)
    out = []
    for t in grid.tolist():
        own = class_means(_population_features(disc, train, t, batch_size, labels), labels, num_classes + 1)
        everyone = _population_features(disc, train, t, batch_size, null).mean(0)
        own[num_classes] = everyone
        out.append(own)
    return torch.stack(out)


def class_exact_term(target: Tensor, labels: Tensor, recorded: list | None = None):
    """The exact linear witness with one population per label: target (T, G, D), labels (N,) of the
    whole population. recorded: a list that receives each step's (G, D) per-label particle means."""
    cache: dict = {}
    groups = target.shape[1]

    def term(feats, k, step, pop, chunk):
        if cache.get("pop") is not pop:  # once per step: every chunk of a step shares pop
            cache["pop"], cache["mean"] = pop, class_means(pop, labels, groups)
            if recorded is not None:
                recorded.append(cache["mean"])
        return class_witness(feats, labels[chunk], target[k], cache["mean"])

    return term


def class_replay_term(target: Tensor, replay: Tensor, labels: Tensor):
    """Population-free: each particle follows its label's stored particle means, replay (T N_s, G, D)."""

    def term(feats, k, step, pop, chunk):
        return class_witness(feats, labels[chunk], target[k], replay[step])

    return term


def replay_trajectory(disc, process, settings: FlowSettings, target: Tensor, shape: tuple[int, ...],
                      per_label: int, progress=None) -> Tensor:
    """(T N_s, C + 1, D): the per-label particle means of one exact run of per_label particles for
    every label and the null label."""
    groups = target.shape[1]
    n = per_label * groups
    labels = torch.arange(n, device=target.device) % groups
    noise = ParticleNoise(REPLAY_SEED, n, shape, device=target.device)
    big_chunk = FlowSettings(**{**settings.__dict__, "chunk_size": max(settings.chunk_size, n)})
    grid = time_grid(process, settings.num_levels, settings.grid)
    recorded: list = []
    run_flow(disc, noise.prior(process), grid, big_chunk, process, class_exact_term(target, labels, recorded), noise,
             needs_population=True, progress=progress, labels=labels)
    return torch.stack(recorded)


def calibrate(disc, cfg, train: Tensor, labels: Tensor | None, process, stats: dict,
              settings: FlowSettings, progress=None) -> dict:
    """The class statistics (when the grid changed) and a replay for (settings, sample.guidance)."""
    if labels is None:
        raise DataError("a conditional model calibrates on the training labels, which are unavailable")
    stats = dict(stats or {})
    if stats.get("class_grid") != grid_tag(settings):
        stats["class_data_mean"] = class_level_statistics(disc, train, labels, process, settings)
        stats["class_grid"] = grid_tag(settings)
        stats["class_replay"] = {}
    w = cfg.sample.guidance
    target = guided_target(stats["class_data_mean"], w)
    replays = dict(stats.get("class_replay", {}))
    replays[replay_tag(settings, w)] = replay_trajectory(disc, process, settings, target, tuple(train.shape[1:]),
                                                         cfg.sample.replay_particles, progress)
    stats["class_replay"] = replays
    return stats


def needs_calibration(cfg, stats: dict, settings: FlowSettings) -> bool:
    if stats.get("class_grid") != grid_tag(settings):
        return True
    return cfg.sample.sampler == "approx" and replay_tag(settings, cfg.sample.guidance) not in stats.get("class_replay", {})


def missing(cfg, stats: dict, settings: FlowSettings) -> str | None:
    """Why cfg.sample's conditional DMMD sampler cannot run on these statistics, or None."""
    s = cfg.sample
    if s.sampler not in ("exact", "approx") or (s.sampler == "approx" and s.reading != "replay"):
        return (f"a conditional DMMD model samples with the exact sampler or the approx sampler's replay reading; got "
                f"sampler {s.sampler!r}" + (f", reading {s.reading!r}" if s.sampler == "approx" else ""))
    if s.leave_one_out:
        return "sample.leave_one_out is not implemented for conditional models"
    if stats.get("class_grid") != grid_tag(settings):
        return (f"the checkpoint has no class statistics for {grid_tag(settings)}; make them with `dmmd calibrate "
                "--checkpoint RUN` and the same --set sample.* options")
    if s.sampler == "approx" and replay_tag(settings, s.guidance) not in stats.get("class_replay", {}):
        return (f"the checkpoint has no class replay for {replay_tag(settings, s.guidance)} (it has: "
                f"{', '.join(stats.get('class_replay', {})) or 'none'}); make one with `dmmd calibrate --checkpoint RUN` "
                "and the same --set sample.* options")
    return None


def sample(disc, cfg, stats: dict, process, z0: Tensor, labels: Tensor | None, settings: FlowSettings,
           noise: ParticleNoise, progress=None, known=None) -> Tensor:
    """Conditional DMMD flow from z0 (N, ...) for labels (N,) (None: the null label)."""
    if labels is None:
        labels = torch.full((z0.shape[0],), disc.num_classes, dtype=torch.long)
    labels = labels.to(z0.device)
    target = guided_target(stats["class_data_mean"].to(z0.device), cfg.sample.guidance)
    grid = time_grid(process, settings.num_levels, settings.grid)
    if cfg.sample.sampler == "exact":
        term, population = class_exact_term(target, labels), True
    else:
        replay = stats["class_replay"][replay_tag(settings, cfg.sample.guidance)].to(z0.device)
        term, population = class_replay_term(target, replay, labels), False
    return run_flow(disc, z0, grid, settings, process, term, noise, needs_population=population, progress=progress,
                    labels=labels, known=known)


def model_classes(model: torch.nn.Module) -> int:
    """Label classes of a trained network (a discriminator or a DDPM / flow-matching net); 0: unconditional."""

    return next((m.num_classes for m in model.modules() if isinstance(m, LabelEmbedding)), 0)


def sample_labels(model: torch.nn.Module, class_: int | str | None, num: int) -> Tensor | None:
    """Labels for num samples of `class_`: an int K (all K), 'all' (0..C-1 in turn: sample i gets
    i mod C, an equal number per class when C divides num) or None (unconditional: no labels).
    ValueError (one line) for a class out of range or any class on an unconditional model."""

    if class_ is None:
        return None
    num_classes = model_classes(model)
    if not num_classes:
        raise ValueError("--class needs a conditional model (trained with model.conditional = true); this one is "
                         "unconditional")
    if class_ == "all":
        return balanced_labels(num, num_classes)
    try:
        k = int(class_)
    except (TypeError, ValueError):
        raise ValueError(f"--class must be an integer in 0..{num_classes - 1} or 'all', got {class_!r}") from None
    if not 0 <= k < num_classes:
        raise ValueError(f"--class must be in 0..{num_classes - 1} (or 'all'), got {k}")
    return balanced_labels(num, num_classes, k)
