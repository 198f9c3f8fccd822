"""Typed configuration: dataclasses, TOML/JSON files as data, checked `section.key=value` overrides.

Every choice the paper leaves open is a field here, never a constant in the code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import typing
from pathlib import Path

# the config's types live in dmmd.schema; they are part of this module's interface
from dmmd.schema import (  # noqa: F401
    AutoencoderConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    ProcessConfig,
    SampleConfig,
    TrainConfig,
)

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")  # train.device and `dmmd sample --device`

CHOICES = {
    "method": ("dmmd", "ddpm", "fm"),
    "data.name": ("digits", "eight_gaussians", "two_moons", "checkerboard", "swiss_roll", "mnist", "fashion_mnist", "cifar10", "file", "folder"),
    "data.crop": ("resize_center_crop", "center_crop_resize"),
    "process.kind": ("vp", "blur"),
    "process.schedule": ("linear", "cosine"),
    "model.backbone": ("mlp", "unet"),
    "model.head": ("flatten", "pool"),
    "model.kernel": ("linear", "rbf", "rq"),
    "model.objective": ("mmd", "kale"),
    "train.on_nonfinite": ("stop", "skip"),
    "train.gp_lazy": ("scale", "reuse"),
    "train.levels": ("uniform", "sampler_grid"),
    "train.best_by": ("val_loss", "none"),
    "train.precision": ("fp32", "bf16"),
    "sample.sampler": ("exact", "approx", "kale", "ddpm", "ddim", "euler", "heun"),
    "sample.clip_x0": ("auto", "on", "off"),
    "sample.reading": ("own", "data_noised", "replay"),
    "sample.step_norm": ("fixed", "gradient"),
    "sample.grid": ("uniform", "log_sigma", "log_snr"),
}
POSITIVE = {"data.num_points", "data.image_size", "data.crop_size", "data.workers", "data.in_memory", "model.feature_dim", "model.width", "model.depth",
            "model.time_dim", "model.base_channels", "model.num_res_blocks", "model.init_width",
            "train.steps", "train.batch_size", "train.num_levels", "train.gp_every", "train.lr", "train.log_every",
            "train.checkpoint_every", "train.keep_checkpoints", "sample.num_levels", "sample.steps_per_level", "sample.step_size",
            "sample.chunk_size", "sample.num_reference", "sample.replay_particles", "sample.num_steps", "process.beta_max",
            "process.beta_min", "process.blur_max_width"}
NON_NEGATIVE = {"train.threads", "train.lambda_gp", "train.lambda_l2", "train.grad_clip", "sample.inject", "sample.renoise",
                "model.rq_dot_weight", "process.blur_noise_std", "seed",
                "sample.kernel_step_size", "sample.calibration_rows", "sample.ddim_eta", "sample.step_size_power", "model.num_classes", "sample.nfe_levels",
                "sample.guidance", "model.pixel_features"}
UNIT_INTERVAL = {"train.ema_decay", "train.beta1", "train.beta2"}
POSITIVE |= {"autoencoder.latent_dim", "autoencoder.steps", "autoencoder.batch_size", "autoencoder.lr",
             "autoencoder.log_every", "autoencoder.checkpoint_every"}
NON_NEGATIVE |= {"autoencoder.latent_l2"}
SAMPLERS = {"dmmd": ("exact", "approx", "kale"), "ddpm": ("ddpm", "ddim"), "fm": ("euler", "heun")}
# The KALE flow collapses above eta = 0.02 without noise (in an earlier probe, injection and re-noising of
# 0.3 sigma_t at eta 0.02 passed every 8-Gaussians criterion); applied to model.objective = 'kale'
# for the keys a file or --set leaves out.
KALE_SAMPLE_DEFAULTS = {"sample.sampler": "kale", "sample.step_size": 0.02, "sample.inject": 0.3, "sample.renoise": 0.3}
# sample.guidance per method for the files and --set that leave it out: the lowest FD-digits against
# the training split over w in 0, 0.5, 1, 2, 4 (benchmarks/results/conditional_digits.md, docs/conditional.md)
GUIDANCE_DEFAULTS = {"dmmd": 0.5, "fm": 0.5, "ddpm": 1.0}


def _sections(cfg: Config):
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                yield f"{f.name}.{g.name}", value, g
        else:
            yield f.name, cfg, f


def valid_keys() -> list[str]:
    return [key for key, _, _ in _sections(Config())]


def _coerce(key: str, value, annotation: str):
    """Convert value (from TOML, JSON or a `--set` string) to the field's declared type."""
    kind = str(annotation)
    from_text = isinstance(value, str) and kind != "str"
    try:
        if kind == "bool":
            if from_text:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind == "int":
            if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind == "list[int]":
            if from_text:
                value = json.loads(value if value.strip().startswith("[") else f"[{value}]")
            if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                raise ValueError
            return [int(v) for v in value]
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    raise ConfigError(f"{key} must be of type {kind}, got {value!r}")


def set_value(cfg: Config, key: str, value) -> None:
    fields = {k: (obj, f) for k, obj, f in _sections(cfg)}
    if key not in fields:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(fields)}")
    obj, f = fields[key]
    setattr(obj, f.name, _coerce(key, value, f.type))


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def from_dict(tree: dict) -> Config:
    cfg = Config()
    for key, value in _flatten(tree).items():
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


def stored_run(cfg: Config, tree: dict | None = None) -> Config:
    """The config of a run that training wrote (its config.json or checkpoint), in place: training
    records the map an array file was scaled with, so an "auto" there comes from a run made before
    data.scale existed, which used the file's values as they are ("none"). tree: the stored sections
    (a checkpoint's); a run written before sample.calibration_rows existed calibrates on all rows, as
    it did, so statistics it makes on demand match its stored ones."""
    if cfg.data.name == "file" and cfg.data.scale == "auto":
        cfg.data.scale = "none"
    if tree is not None and "calibration_rows" not in (tree.get("sample") or {}):
        cfg.sample.calibration_rows = 0
    return cfg


MAX_SEED = 2**32 - 1  # the seeds the random streams take without wrapping
MAX_FILE_BYTES = 1 << 20  # a config is a few hundred bytes


def read_tree(path: Path) -> dict:
    """The sections of a TOML (or .json) config file; a one-line ConfigError for anything else
    (not a regular file, binary, too large, nested too deeply, not an object of sections)."""
    kind = "JSON" if path.suffix == ".json" else "TOML"
    if path.exists() and not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_FILE_BYTES >> 20} MiB; a dmmd config is a few hundred bytes")
    try:
        text = raw.decode("utf-8")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
        tree = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (a binary file?)") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid {kind}: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply to be a dmmd config") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold sections of key = value settings, found a {type(tree).__name__}")
    for section, body in tree.items():
        if isinstance(body, dict) and any(isinstance(v, dict) for v in body.values()):
            raise ConfigError(f"config file {path}: section {section!r} nests deeper than section.key")
    return tree


def check_flag(key: str, value):
    """A command-line flag's value checked by the rules of the config key it mirrors (one
    validation per value: `--seed -1` fails like `--set seed=-1`); returned as the key's type."""
    cfg = Config()
    set_value(cfg, key, value)
    validate(cfg)
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def load(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the file (TOML or JSON), then `key=value` overrides; validated."""
    tree: dict = {}
    if path is not None:
        tree = read_tree(Path(path))
    cfg = Config()
    in_file, overridden = set(_flatten(tree)), set()
    for key, value in _flatten(tree).items():
        set_value(cfg, key, value)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        set_value(cfg, key.strip(), value.strip())
        overridden.add(key.strip())
    apply_method_defaults(cfg, in_file, overridden)
    validate(cfg)
    return cfg


def apply_method_defaults(cfg: Config, in_file: set[str] = frozenset(), overridden: set[str] = frozenset()) -> None:
    """Defaults that depend on other keys: a sampler that fits the method (ddpm for DDPM, euler for
    flow matching) unless --set chose one (a preset's DMMD sampler gives way to `method=fm`), and
    KALE's own flow settings for the keys --set does not give (nor the file, if it asks for KALE)."""
    if "sample.sampler" not in overridden and cfg.sample.sampler not in SAMPLERS[cfg.method]:
        cfg.sample.sampler = SAMPLERS[cfg.method][0]
    if "sample.guidance" not in overridden | in_file:
        cfg.sample.guidance = GUIDANCE_DEFAULTS[cfg.method]
    if cfg.model.objective == "kale":
        # a preset's flow settings are for the MMD flow unless the preset itself is a KALE one
        explicit = overridden | (in_file if "model.objective" in in_file else set())
        for key, value in KALE_SAMPLE_DEFAULTS.items():
            if key not in explicit:
                set_value(cfg, key, value)


def parse_range(scale: str) -> tuple[float, float] | None:
    """(lo, hi) of a data.scale "LO,HI", None for "none" and "auto"; ConfigError when malformed."""
    if scale in ("none", "auto"):
        return None
    try:
        lo, hi = (float(v) for v in scale.split(","))
    except ValueError:
        raise ConfigError(f"data.scale must be auto, none or LO,HI (e.g. 0,255), got {scale!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"data.scale {scale!r}: need finite LO < HI")
    return lo, hi


def _check_scale(d: DataConfig) -> None:
    """data.scale: auto, none or LO,HI (finite, LO < HI); other data sets than files keep their own map."""
    if d.scale != "auto" and d.name != "file":
        raise ConfigError(f"data.scale applies to data.name = 'file'; {d.name!r} has its own scaling (leave auto)")
    parse_range(d.scale)


def validate(cfg: Config) -> None:
    for key, obj, f in _sections(cfg):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if isinstance(value, int) and not -2**63 < value < 2**63:
            raise ConfigError(f"{key} must be below 2**63 in magnitude, got {str(value)[:30]}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{key} must be one of {', '.join(CHOICES[key])}; got {value!r}")
        if key in POSITIVE and not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
        if key in NON_NEGATIVE and not value >= 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
        if key in UNIT_INTERVAL and not 0 <= value < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    p = cfg.process
    if not 0 <= p.t_min < p.t_max <= 1:
        raise ConfigError(f"need 0 <= process.t_min < process.t_max <= 1, got {p.t_min} and {p.t_max}")
    if p.beta_min > p.beta_max:
        raise ConfigError(f"process.beta_min ({p.beta_min}) must not exceed process.beta_max ({p.beta_max})")
    if not DEVICE_PATTERN.match(cfg.train.device):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {cfg.train.device!r}")
    if cfg.train.compile and cfg.method == "dmmd" and cfg.train.lambda_gp > 0:
        raise ConfigError("train.compile needs method = 'ddpm' or train.lambda_gp = 0: torch.compile does not "
                          "support the double backward of DMMD's gradient penalty (sampling can compile: "
                          "dmmd sample --compile)")
    if not 0 < cfg.train.gp_fraction <= 1:
        raise ConfigError(f"train.gp_fraction must be in (0, 1], got {cfg.train.gp_fraction}")
    if cfg.seed > MAX_SEED:  # larger seeds would wrap onto smaller ones (the same samples)
        raise ConfigError(f"seed must be at most 2**32 - 1 = {MAX_SEED}, got {cfg.seed}")
    _check_scale(cfg.data)
    if cfg.train.batch_size < 2:
        raise ConfigError("train.batch_size must be >= 2 (the unbiased MMD needs two samples per set)")
    samplers = SAMPLERS[cfg.method]
    if cfg.sample.sampler not in samplers:
        raise ConfigError(f"method = {cfg.method!r} samples with sample.sampler = "
                          + " or ".join(repr(s) for s in samplers) + f"; got {cfg.sample.sampler!r}")
    if cfg.method == "ddpm" and cfg.process.kind != "vp":
        raise ConfigError("method = 'ddpm' needs the Gaussian process (process.kind = 'vp')")
    if cfg.model.objective == "kale" and cfg.sample.sampler != "kale":
        raise ConfigError("model.objective = 'kale' needs sample.sampler = 'kale'")
    if cfg.sample.sampler == "approx" and cfg.model.kernel != "linear":
        raise ConfigError(f"sample.sampler = 'approx' needs model.kernel = 'linear' (got {cfg.model.kernel!r}); "
                          "use sample.sampler = 'exact'")
    if cfg.sample.step_norm == "gradient" and cfg.method == "dmmd" and (
            cfg.model.conditional or cfg.sample.sampler == "kale"
            or (cfg.sample.sampler == "approx" and cfg.sample.reading != "replay")):
        raise ConfigError("sample.step_norm = 'gradient' needs the exact sampler or the approx sampler with "
                          "sample.reading = 'replay' (whose exact run records the step scales), on an unconditional "
                          "model; use sample.step_norm = 'fixed'")
    mults = cfg.model.channel_mults
    if not 1 <= len(mults) <= 8 or min(mults) < 1:
        raise ConfigError(f"model.channel_mults must be 1 to 8 positive width multipliers (one per U-Net resolution), "
                          f"got {mults}")
    if not cfg.autoencoder.channels or min(cfg.autoencoder.channels) < 1:
        raise ConfigError(f"autoencoder.channels must be a non-empty list of positive widths, got {cfg.autoencoder.channels}")
    if not 0 <= cfg.train.p_uncond <= 1:
        raise ConfigError(f"train.p_uncond must be in [0, 1], got {cfg.train.p_uncond}")
    if cfg.model.conditional and cfg.method == "dmmd" and (cfg.model.kernel != "linear" or cfg.model.objective != "mmd"):
        raise ConfigError("model.conditional with method = 'dmmd' needs model.kernel = 'linear' and model.objective = "
                          f"'mmd' (per-class mean features); got {cfg.model.kernel!r} and {cfg.model.objective!r}")
    if cfg.model.latent and cfg.model.backbone != "mlp":
        raise ConfigError(f"model.latent needs model.backbone = 'mlp' (latents are vectors), got {cfg.model.backbone!r}")
    if cfg.model.pixel_features and (cfg.model.backbone != "mlp" or cfg.model.pixel_features >= cfg.model.feature_dim):
        raise ConfigError("model.pixel_features needs model.backbone = 'mlp' and fewer than model.feature_dim = "
                          f"{cfg.model.feature_dim} features; got {cfg.model.pixel_features} with {cfg.model.backbone!r}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2)
