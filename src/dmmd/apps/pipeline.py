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
import warnings
from pathlib import Path

import torch
from torch import Tensor

from dmmd import config as config_mod
from dmmd import presets
from dmmd.config import Config, ConfigError, SampleConfig
from dmmd.data.datasets import load_dataset
from dmmd.data.scaling import from_data_space, to_data_space
from dmmd.evaluation.plotting import save_png_folder, save_samples_picture
from dmmd.evaluation.report import METRICS, evaluate_samples
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.conditional import sample_labels, training_labels
from dmmd.methods.latent import decode, encode_dataset, for_config, latent_data
from dmmd.methods.sample import calibrate, check_sampler, needs_calibration, nfe, settings_for_nfe
from dmmd.methods.sample import nfe as evaluations
from dmmd.methods.sample import sample as draw
from dmmd.runtime.device import resolve_device, thread_guard
from dmmd.training import loop

Overrides = typing.Union[typing.Mapping[str, object], typing.Sequence[str]]


def _override_list(overrides: Overrides | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, typing.Mapping):
        return [f"{k}={_toml_text(v)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(f"overrides: expected a list of 'key=value' strings or a dict, got the string {overrides!r}")
    return list(overrides)


def _toml_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def load_config(config: Config | str | Path | None, overrides: Overrides | None = None) -> Config:
    """A Config from a Config (copied), a preset name ('digits'), a TOML/JSON file, or None (defaults),
    with `key=value` overrides applied and checked."""

    items = _override_list(overrides)
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


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


class Trainer:
    """Algorithm 1 (or the DDPM / flow-matching baseline) into a run folder, as `dmmd train` does.

    config: a Config, a preset name, or a TOML/JSON file; overrides: {'train.steps': 300} or
    ['train.steps=300']. A folder that already holds files is refused unless resume=True, which
    continues the run from its latest checkpoint with the folder's own config.json (overrides may
    change train.steps). device: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'
    (default: train.device). progress: None shows a bar on a terminal and plain periodic lines
    otherwise; False writes only RUN/log.txt."""

    def __init__(self, config: Config | str | Path | None, out: str | Path, overrides: Overrides | None = None,
                 resume: bool = False, device: str | None = None, progress: bool | None = None):
        self.out, self.resume, self.progress = Path(out), resume, progress
        stored = self.out / "config.json"
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"{self.out} is a file: the run folder must be a folder")
        if resume and stored.is_file():
            self.cfg = config_mod.load(stored, _override_list(overrides))
        elif _has_files(self.out) and not resume:
            raise ConfigError(f"{self.out} is not empty: pass resume=True to continue the run there, or choose "
                              "another folder")
        elif resume and _has_files(self.out):
            raise ConfigError(f"{self.out} holds files but no config.json: it is not a dmmd run folder")
        else:
            self.cfg = load_config(config, overrides)
        if device is not None:
            config_mod.set_value(self.cfg, "train.device", device)
            config_mod.validate(self.cfg)

    def run(self) -> "Pipeline":
        """Train to cfg.train.steps and return the final checkpoint as a Pipeline."""
        data = pixels = load_dataset(self.cfg.data, self.cfg.seed)
        if self.cfg.model.latent:  # the autoencoder's latents, encoded once (docs/latent.md), as `dmmd train`
            data = latent_data(self.cfg, pixels, progress=self.progress is not False)
        labels, val_labels = training_labels(self.cfg, data)  # model.conditional: also sets model.num_classes
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

        dev = resolve_device(device)
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
            config_mod.set_value(cfg, "sample.sampler", sampler)
        if nfe is not None:
            if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
                raise ConfigError(f"nfe must be an integer >= 1, got {nfe!r}")
            settings_for_nfe(cfg, nfe, keep=[f"sample.{k}" for k in overrides])
        for key, value in overrides.items():
            config_mod.set_value(cfg, f"sample.{key}", value if isinstance(value, str) else _toml_text(value))
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

        for name, value in (("n", n), ("seed", seed), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
        config_mod.check_flag("seed", seed)  # the config's rule: 0 <= seed <= 2**32 - 1, as `--seed`
        if guidance is not None:
            overrides = {**overrides, "guidance": guidance}
        cfg = self.sample_config(nfe, sampler, **overrides)
        if n < (2 if cfg.sample.sampler == "exact" else 1) or batch_size < 1:
            raise ConfigError(f"n must be >= {2 if cfg.sample.sampler == 'exact' else 1} (the exact sampler moves "
                              f"a population) and batch_size >= 1; got n={n}, batch_size={batch_size}")
        labels = self.sample_labels(n, class_)
        z = self._draw(cfg, n, seed, progress, batch_size, labels)
        bad = int((~torch.isfinite(z.flatten(1))).any(1).sum())
        if bad:  # loud, with the count: the flow diverged (a step size far too large, most often)
            warnings.warn(f"{bad} of {n} samples hold NaN or Inf values (the flow diverged); lower sample.step_size",
                          RuntimeWarning, stacklevel=2)
        if self.autoencoder is not None:  # a latent model: images from its decoder
            z = decode(z, self.autoencoder)
        return to_data_space(cfg.data, z)

    def sample_labels(self, n: int, class_: int | str | None) -> Tensor | None:
        """The labels `sample(n, class_=...)` draws: (n,) int64, or None (unconditional)."""

        try:
            return sample_labels(self.model, class_, n)
        except ValueError as err:
            raise ConfigError(str(err).replace("--class", "class_")) from None

    def _draw(self, cfg: Config, n: int, seed: int, progress: bool, batch_size: int,
              labels: Tensor | None = None) -> Tensor:
        """Model-space samples with cfg's sampler (making missing statistics in memory)."""
        from tqdm.auto import tqdm


        process = build_process(cfg.process)
        reference = None
        with thread_guard(0):  # torch's threads, or one when they would spin (torch imported first)
            if cfg.sample.sampler == "exact" and cfg.model.kernel != "linear":
                train_rows = self.model_data.train
                pick = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(0))
                reference = train_rows[pick[: cfg.sample.num_reference]].to(self.device)
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
        samples = torch.as_tensor(samples, dtype=torch.float32).cpu()
        if tuple(samples.shape[1:]) != self.data_shape:
            raise ConfigError(f"samples have shape {tuple(samples.shape[1:])} per item; this model's data has "
                              f"{self.data_shape}")
        return from_data_space(self.cfg.data, samples)

    def save_images(self, samples: Tensor, folder: str | Path) -> list[Path]:
        """One PNG per sample (000000.png, ...), 8-bit grey or RGB, for FID tools (clean-fid,
        pytorch-fid, torch-fidelity read folders of images). Image data only."""

        if len(self.data_shape) != 3:
            raise ConfigError(f"save_images needs image data; this model's data has shape {self.data_shape} "
                              "(use save_picture for a scatter plot)")
        return save_png_folder(folder, self._model_scale(samples).numpy())

    def save_picture(self, samples: Tensor, path: str | Path, title: str = "") -> Path:
        """An image grid of at most 100 samples, or a scatter plot over held-out data (pairwise
        panels for more than 2 dimensions)."""

        z = self._model_scale(samples).numpy()
        kind = "image" if len(self.data_shape) == 3 else "points"
        reference = self.data.test.numpy() if kind == "points" else None
        save_samples_picture(path, z, kind, reference, title=title or f"{self.cfg.method}, {len(z)} samples")
        return Path(path)

    def evaluate(self, samples: Tensor, metrics: typing.Sequence[str] | None = None) -> dict:
        """Diversity and distribution metrics of data-space samples against the held-out split
        (dmmd.evaluation.report.evaluate_samples; the same report as `dmmd evaluate`)."""

        metrics = tuple(metrics or METRICS)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
        z = self._model_scale(samples)
        if len(z) < 2:
            raise ConfigError(f"evaluate needs at least 2 samples, got {len(z)}")
        return evaluate_samples(z, self.data, metrics)


def sample_folder_name(cfg: Config, seed: int, num_samples: int) -> str:
    """samples-<sampler>-nfe<N>-seed<S>-<hash>: the hash (6 hex digits) covers every sample.*
    setting and the sample count, so runs with other settings never share a folder."""
    import hashlib
    import json


    settings = json.dumps({"sample": dataclasses.asdict(cfg.sample), "num_samples": num_samples}, sort_keys=True)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:6]
    return f"samples-{cfg.sample.sampler}-nfe{nfe(cfg)}-seed{seed}-{digest}"
