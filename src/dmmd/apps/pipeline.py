"""The Python API: a trained model as one object, and training that cannot overwrite a run.

    import dmmd
    pipe = dmmd.train("eight_gaussians", "runs/g8-api", overrides={"train.steps": 300})
    x = pipe.sample(1000, nfe=20, seed=0)      # data space (digits 0..16, images 0..255, toys as drawn)
    print(pipe.evaluate(x)["fd"])
    pipe = dmmd.Pipeline.from_run("runs/g8-api")  # later, from the run folder (or a checkpoint file)

`Pipeline.sample` does what `dmmd sample` does: the checkpoint's sampler settings, changed by
`sampler=`, `nfe=` (dmmd.methods.sample.settings_for_nfe) and `sample.*` keyword overrides; level
statistics and replays that the checkpoint lacks are made in memory from the training data.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import typing
from pathlib import Path

import torch
from torch import Tensor

from dmmd import config as config_mod
from dmmd import presets
from dmmd.apps import guards
from dmmd.apps.guards import Overrides, override_list
from dmmd.config import Config, ConfigError, SampleConfig
from dmmd.data.datasets import load_dataset
from dmmd.data.scaling import from_data_space, to_data_space
from dmmd.evaluation.plotting import save_png_folder, save_samples_picture
from dmmd.evaluation.report import METRICS, evaluate_samples
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.conditional import sample_labels, training_labels
from dmmd.methods.latent import decode, encode_dataset, for_config, latent_data
from dmmd.methods.resources import check_data_config, check_sampling, check_training
from dmmd.methods.sample import calibrate, check_sampler, needs_calibration, nfe, reference_rows, settings_for_nfe
from dmmd.methods.sample import nfe as evaluations
from dmmd.methods.sample import sample as draw
from dmmd.runtime.device import resolve_device, thread_guard
from dmmd.runtime.memory import ResourceError
from dmmd.runtime.resume import check_resume
from dmmd.runtime.runfolder import LOCK_NAME, check_output_dir, hold, remove_stale_temps
from dmmd.training import loop

PR_NEIGHBOURS = 3  # evaluate_samples' precision_recall: the 3rd nearest neighbour within each set


def load_config(config: Config | str | Path | None, overrides: Overrides | None = None) -> Config:
    """A Config from a Config (copied), a preset name ('digits'), a TOML/JSON file, or None (defaults),
    with `key=value` overrides applied and checked."""

    config = guards.config_source(config)
    items = override_list(overrides)
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"overrides: expected key=value, got {item!r}")
            config_mod.set_value(cfg, key.strip(), value.strip())
        config_mod.validate(cfg)
        return cfg
    if isinstance(config, str) and not config.endswith((".toml", ".json")) and "/" not in config:
        config = presets.path(config)
    return config_mod.load(config, items)


def _files(folder: Path) -> list[str]:
    """What a folder holds besides a lock file (none when it does not exist)."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME) if folder.is_dir() else []


class Trainer:
    """Algorithm 1 (or the DDPM / flow-matching baseline) into a run folder, as `dmmd train` does.

    config: a Config, a preset name, or a TOML/JSON file; overrides: {'train.steps': 300} or
    ['train.steps=300']. A folder that already holds files is refused unless resume=True, which
    continues the run from its latest checkpoint with the folder's own config.json (overrides may
    change train.steps and the keys `dmmd train --resume` may change). device: 'auto' (CUDA when
    available), 'cpu', 'cuda', 'cuda:N' (default: train.device). progress: None shows a bar on a
    terminal and plain periodic lines otherwise; False writes only RUN/log.txt.
    While `run` trains, it holds the run folder's lock, as `dmmd train` does: a second writer
    (another Trainer, `dmmd train --resume`, `dmmd calibrate`) is refused with the holder named."""

    def __init__(self, config: Config | str | Path | None, out: str | Path, overrides: Overrides | None = None,
                 resume: bool = False, device: str | None = None, progress: bool | None = None):
        self.config, self.overrides = guards.config_source(config), override_list(overrides)
        self.out, self.resume = guards.path("out", out), guards.flag("resume", resume)
        self.device, self.progress = guards.text("device", device), guards.flag("progress", progress, optional=True)
        self.cfg = self._resolve()
        check_data_config(self.cfg)  # sizes of the data, before loading it

    def _resolve(self) -> Config:
        """The run's config, after the run-folder checks of `dmmd train` (again in `run`, under the lock)."""
        stored = self.out / "config.json"
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"{self.out} is a file: the run folder must be a folder")
        check_output_dir(self.out, "out")
        if self.resume and stored.is_file():
            cfg = config_mod.stored_run(config_mod.load(stored, self.overrides))
            check_resume(config_mod.stored_run(config_mod.load(stored)), cfg, f"{stored} holds the run")
        elif _files(self.out):
            raise ConfigError(f"{self.out} holds files but no config.json: it is not a dmmd run folder" if self.resume
                              else f"{self.out} is not empty: pass resume=True to continue the run there, or choose "
                              "another folder")
        else:
            cfg = load_config(self.config, self.overrides)
        if self.device is not None:
            config_mod.set_value(cfg, "train.device", self.device)
            config_mod.validate(cfg)
        return cfg

    def run(self) -> "Pipeline":
        """Train to cfg.train.steps and return the final checkpoint as a Pipeline."""
        with hold(self.out, f"dmmd.train{' resume=True' if self.resume else ''} (Python API)"):
            self.cfg = self._resolve()  # the folder as it is now that no other writer can change it
            remove_stale_temps(self.out)  # left by a process that was killed during a write
            return self._train()

    def _train(self) -> "Pipeline":
        data = pixels = load_dataset(self.cfg.data, self.cfg.seed)
        if self.cfg.model.latent:  # the autoencoder's latents, encoded once (docs/latent.md), as `dmmd train`
            data = latent_data(self.cfg, pixels, progress=self.progress is not False)
        labels, val_labels = training_labels(self.cfg, data)  # model.conditional: also sets model.num_classes
        check_training(self.cfg, data.shape, resolve_device(self.cfg.train.device))
        echo = None if self.progress is False else (lambda text: print(text, file=sys.stderr, flush=True))
        if pixels.note and echo:  # an array file: how its values were mapped to the model's range
            echo(pixels.note)
        loop.train(self.cfg, data.train, self.out, resume=self.resume and (self.out / "config.json").is_file(),
                   progress=self.progress is not False, echo=echo, stream=data.stream, val_data=data.test,
                   labels=labels, val_labels=val_labels)
        pipe = Pipeline.from_run(self.out, device=self.cfg.train.device)
        pipe._data = pixels
        if data is not pixels:
            pipe._model_data = data
        return pipe


def train(config: Config | str | Path | None, out: str | Path, overrides: Overrides | None = None,
          resume: bool = False, device: str | None = None, progress: bool | None = None) -> "Pipeline":
    """Trainer(config, out, ...).run(): train into `out` (refused when it holds files, unless
    resume=True) and return the trained model as a Pipeline."""
    return Trainer(config, out, overrides, resume=resume, device=device, progress=progress).run()


class Pipeline:
    """A trained model with its config and sampler statistics: sample, save images, evaluate."""

    def __init__(self, cfg: Config, model: torch.nn.Module, stats: dict, data_shape: tuple[int, ...],
                 device: torch.device, source: Path | None = None):
        self.cfg, self.model, self.stats = cfg, model, dict(stats)
        self.data_shape, self.device, self.source = tuple(data_shape), device, source
        self.model_shape = self.data_shape  # what the model moves: the data, or a latent model's latents
        self.autoencoder = None
        if cfg.model.latent:  # samples are decoded: data_shape is the images' (a foreign autoencoder is refused)
            self.autoencoder = for_config(cfg, device)
            self.data_shape = tuple(self.autoencoder.shape)
        self._data = self._model_data = None

    @classmethod
    def from_run(cls, path: str | Path, device: str = "auto") -> "Pipeline":
        """The EMA model of a run folder's latest checkpoint, or of a checkpoint file."""

        path = guards.path("path", path)
        dev = resolve_device(guards.text("device", device, optional=False))
        cfg, model, stats, payload = load_model(path, dev)
        return cls(cfg, model, stats, tuple(payload["data_shape"]), dev, Path(path))

    def __repr__(self) -> str:
        return (f"Pipeline(method={self.cfg.method!r}, data={self.cfg.data.name!r}, shape={self.data_shape}, "
                f"sampler={self.cfg.sample.sampler!r}, device={str(self.device)!r})")

    @property
    def data(self):
        """The data set of the config (train and held-out split, model scale), loaded once."""
        if self._data is None:
            self._data = load_dataset(self.cfg.data, self.cfg.seed)
        return self._data

    @property
    def model_data(self):
        """The data as the model sees it: `data`, or for a latent model its encoding (cached with the autoencoder)."""
        if self._model_data is None:
            if self.autoencoder is None:
                return self.data

            self._model_data = encode_dataset(self.data, self.autoencoder, self.cfg.data, progress=False)
        return self._model_data

    def sample_config(self, nfe: int | None = None, sampler: str | None = None, **overrides) -> Config:
        """The config `sample` uses: sampler, then nfe's settings, then sample.* overrides (keys
        without the 'sample.' prefix, e.g. step_size=0.05), checked like `--set`."""

        fields = {f.name for f in dataclasses.fields(SampleConfig)}
        unknown = sorted(k for k in overrides if k not in fields)
        if unknown:
            raise ConfigError(f"unknown sample settings {unknown}; valid: {', '.join(sorted(fields))}")
        cfg = copy.deepcopy(self.cfg)
        if sampler is not None:
            config_mod.set_value(cfg, "sample.sampler", guards.text("sampler", sampler))
        if nfe is not None:
            settings_for_nfe(cfg, guards.integer("nfe", nfe, minimum=1), keep=[f"sample.{k}" for k in overrides])
        for key, value in overrides.items():
            config_mod.set_value(cfg, f"sample.{key}", value if isinstance(value, str) else guards.toml_text(value))
        config_mod.validate(cfg)
        return cfg

    def sample(self, n: int, nfe: int | None = None, seed: int = 0, sampler: str | None = None,
               progress: bool = False, batch_size: int = 4096, class_: int | str | None = None,
               guidance: float | None = None, **overrides) -> Tensor:
        """n samples in data space, (n, *shape) on the CPU. Sample i depends only on (seed, i) for
        the samplers that move particles independently (all but exact, a population).
        A conditional model: class_ = K (every sample of class K), 'all' (sample i of class i mod C)
        or None (unconditional); guidance = w (default: sample.guidance). `sample_labels(n, class_)`
        gives the labels drawn."""

        n, seed, batch_size = (guards.integer(name, value) for name, value in
                               (("n", n), ("seed", seed), ("batch_size", batch_size)))
        config_mod.check_flag("seed", seed)  # the config's rule: 0 <= seed <= 2**32 - 1, as `--seed`
        progress = guards.flag("progress", progress)
        if class_ is not None and not isinstance(class_, str):  # 'all', or a class number
            class_ = guards.integer("class_", class_)
        if guidance is not None:
            overrides = {**overrides, "guidance": guards.real("guidance", guidance)}
        cfg = self.sample_config(nfe, sampler, **overrides)
        if n < (2 if cfg.sample.sampler == "exact" else 1) or batch_size < 1:
            raise ConfigError(f"n must be >= {2 if cfg.sample.sampler == 'exact' else 1} (the exact sampler moves "
                              f"a population) and batch_size >= 1; got n={n}, batch_size={batch_size}")
        labels = self.sample_labels(n, class_)
        # NFE, n x NFE and memory against the limits `dmmd sample` checks, before any work
        try:
            check_sampling(cfg, self.model_shape, n, n if cfg.sample.sampler == "exact" else batch_size, self.device)
        except ResourceError as err:
            raise ResourceError(guards.api_words(str(err))) from None
        z = self._draw(cfg, n, seed, progress, batch_size, labels)
        # loud, with the count: the flow diverged (a step size far too large, most often)
        guards.warn_nonfinite(z)
        if self.autoencoder is not None:  # a latent model: images from its decoder
            z = decode(z, self.autoencoder)
        return to_data_space(cfg.data, z)

    def sample_labels(self, n: int, class_: int | str | None) -> Tensor | None:
        """The labels `sample(n, class_=...)` draws: (n,) int64, or None (unconditional)."""

        try:
            return sample_labels(self.model, class_, n)
        except ValueError as err:
            raise ConfigError(guards.api_words(str(err))) from None

    def _draw(self, cfg: Config, n: int, seed: int, progress: bool, batch_size: int,
              labels: Tensor | None = None) -> Tensor:
        """Model-space samples with cfg's sampler (making missing statistics in memory)."""
        from tqdm.auto import tqdm


        process = build_process(cfg.process)
        reference = reference_rows(cfg, self.model_data.train)
        reference = None if reference is None else reference.to(self.device)
        with thread_guard(0):  # torch's threads, or one when they would spin (torch imported first)
            if needs_calibration(self.model, cfg, self.stats):
                settings = flow_settings(cfg.sample)
                self.stats = calibrate(self.model, cfg, self.model_data.train.to(self.device), process, self.stats,
                                       settings, labels=self.model_data.labels_train)
            check_sampler(self.model, cfg, self.stats, reference)
            batch = n if cfg.sample.sampler == "exact" else batch_size
            chunks = []
            with tqdm(total=evaluations(cfg) * -(-n // batch), desc="sample", disable=not progress,
                      dynamic_ncols=True) as bar:
                for start in range(0, n, batch):
                    chunks.append(draw(self.model, cfg, self.stats, process, self.model_shape, min(batch, n - start),
                                       seed, reference, start=start, device=self.device, progress=bar,
                                       labels=None if labels is None else labels[start:start + batch]).cpu())
        return torch.cat(chunks)

    def _model_scale(self, samples: Tensor) -> Tensor:
        samples = guards.samples(samples)
        if samples.ndim < 1 or tuple(samples.shape[1:]) != self.data_shape:
            raise ConfigError(f"samples have shape {tuple(samples.shape[1:])} per item; this model's data has "
                              f"{self.data_shape}")
        return from_data_space(self.cfg.data, samples)

    def save_images(self, samples: Tensor, folder: str | Path) -> list[Path]:
        """One PNG per sample (000000.png, ...), 8-bit grey or RGB, for FID tools (clean-fid,
        pytorch-fid, torch-fidelity read folders of images). Image data only."""

        if len(self.data_shape) != 3:
            raise ConfigError(f"save_images needs image data; this model's data has shape {self.data_shape} "
                              "(use save_picture for a scatter plot)")
        z = self._model_scale(samples)
        guards.warn_nonfinite(z, advice="their pixels are not meaningful")
        with guards.output_folder(folder, "folder", "dmmd Python API (Pipeline.save_images)") as target:
            return save_png_folder(target, z.numpy())

    def save_picture(self, samples: Tensor, path: str | Path, title: str = "") -> Path:
        """An image grid of at most 100 samples, or a scatter plot over held-out data (pairwise
        panels for more than 2 dimensions). Missing parent folders are made; an existing
        checkpoint, data, samples or config file is never replaced."""

        z = self._model_scale(samples)
        guards.warn_nonfinite(z, advice="they are left out of the picture")
        title = guards.text("title", title, optional=False)
        kind = "image" if len(self.data_shape) == 3 else "points"
        reference = self.data.test.numpy() if kind == "points" else None
        with guards.output_file(path, "path", (self.source,), "dmmd Python API (Pipeline.save_picture)") as target:
            save_samples_picture(target, z.numpy(), kind, reference,
                                 title=title or f"{self.cfg.method}, {len(z)} samples")
        return target

    def evaluate(self, samples: Tensor, metrics: typing.Sequence[str] | None = None) -> dict:
        """Diversity and distribution metrics of data-space samples against the held-out split
        (dmmd.evaluation.report.evaluate_samples; the same report as `dmmd evaluate`)."""

        if metrics is not None and not isinstance(metrics, (str, typing.Iterable)):
            raise ConfigError(f"metrics must be a list of metric names or None, got {metrics!r}")
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics or METRICS)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
        z = self._model_scale(samples)
        if len(z) < 2:
            raise ConfigError(f"evaluate needs at least 2 samples, got {len(z)}")
        bad = guards.nonfinite(z)
        if bad:
            raise ConfigError(f"samples: {bad} of {len(z)} hold NaN or Inf values (a diverged flow?); the metrics need "
                              "finite samples: keep x[torch.isfinite(x.flatten(1)).all(1)]")
        if "precision_recall" in metrics and min(len(z), len(self.data.test)) <= PR_NEIGHBOURS:
            raise ConfigError(f"precision_recall needs at least {PR_NEIGHBOURS + 1} samples (each one's "
                              f"{PR_NEIGHBOURS}rd nearest neighbour among them), got {len(z)}; leave it out of metrics")
        return evaluate_samples(z, self.data, metrics)


def sample_folder_name(cfg: Config, seed: int, num_samples: int) -> str:
    """samples-<sampler>-nfe<N>-seed<S>-<hash>: the hash (6 hex digits) covers every sample.*
    setting and the sample count, so runs with other settings never share a folder."""
    import hashlib
    import json


    settings = json.dumps({"sample": dataclasses.asdict(cfg.sample), "num_samples": num_samples}, sort_keys=True)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:6]
    return f"samples-{cfg.sample.sampler}-nfe{nfe(cfg)}-seed{seed}-{digest}"
