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
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message says how to fix it."""


@dataclass
class DataConfig:
    name: str = "digits"  # digits | eight_gaussians | two_moons | checkerboard | swiss_roll | mnist | fashion_mnist | cifar10 | file | folder
    root: str = ""  # mnist/fashion_mnist/cifar10: folder of the files (fashion_mnist default: Debian's /usr/share/datasets/fashion-mnist); file: a .npy/.npz (array "x"); folder: a tree of images
    num_points: int = 20000  # toy sets: points drawn for training
    image_size: int = 64  # folder: output size
    crop: str = "resize_center_crop"  # folder: resize_center_crop (LSUN, CelebA-HQ) | center_crop_resize (CelebA)
    crop_size: int = 140  # folder with center_crop_resize: the centre crop before resizing (CelebA: 140)
    flip: bool = False  # folder: random horizontal flips
    workers: int = 4  # folder: decoding threads
    in_memory: int = 5000  # folder: images held in memory for calibration, diagnostics and the test split


@dataclass
class ProcessConfig:
    kind: str = "vp"  # vp | blur
    schedule: str = "linear"  # VP schedule: linear | cosine
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0
    blur_max_width: float = 4.0
    blur_noise_std: float = 0.05


@dataclass
class ModelConfig:
    backbone: str = "mlp"  # mlp | unet
    feature_dim: int = 128
    width: int = 256  # mlp hidden width
    depth: int = 3  # mlp residual blocks
    time_dim: int = 128
    base_channels: int = 32  # unet
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    head: str = "flatten"  # unet feature head: flatten | pool
    kernel: str = "linear"  # linear | rbf | rq
    rq_dot_weight: float = 0.0
    init_width: float = 1.0  # rbf: initial width sigma(t)
    objective: str = "mmd"  # mmd | kale
    latent: str = ""  # an autoencoder folder (dmmd train-autoencoder --out AE): train and sample in its latents (docs/latent.md)
    latent_id: str = ""  # set by dmmd train: sha256 of that autoencoder's weights; sampling refuses another
    conditional: bool = False  # class-conditional: the data set's labels enter beside t (docs/conditional.md)
    num_classes: int = 0  # conditional: set by dmmd train from the labels (0 = not yet known)
    pixel_features: int = 0  # dmmd, mlp: k of the feature_dim features are per-pixel quadratics (x*x) Q^T + x L^T, so the witness gradient reaches directions outside inp.weight's row space (rank <= width); 0 = off (docs/pixel_features.md)


@dataclass
class AutoencoderConfig:
    latent_dim: int = 32  # latent values per image
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # stride-2 conv widths of the encoder (mirrored)
    steps: int = 6000
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    latent_l2: float = 1e-4  # weight of mean ||e(x)||^2 beside the reconstruction MSE
    log_every: int = 200
    checkpoint_every: int = 1000


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 128
    num_levels: int = 2  # N_n noise levels per step
    lambda_gp: float = 1.0
    lambda_l2: float = 0.1
    gp_fraction: float = 1.0  # share of each level's interpolates the gradient penalty sees, in (0, 1]
    gp_every: int = 1  # lazy regularisation (StyleGAN2's lazy R1, docs/gpu.md): the penalty only on steps k, 2k, ... (1-based, as logged), weighted k lambda_gp
    gp_lazy: str = "scale"  # with gp_every = k > 1: scale (above) | reuse (the penalty at weight 1 on steps 1, k+1, ...; its gradient kept and added again on the k-1 steps after, docs/method.md)
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2  # keep the last K periodic checkpoints (the final one is always kept)
    best_by: str = "val_loss"  # also keep checkpoints/best.pt, the lowest held-out loss at a checkpoint | none
    on_nonfinite: str = "stop"  # a non-finite loss or gradient: stop (keep the last good checkpoint) | skip the step
    threads: int = 0  # CPU threads for training (torch.set_num_threads); 0 = torch's default
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast of the loss; weights and optimizer stay float32)
    channels_last: bool = False  # image backbones: channels-last weights and batches (faster convs on CUDA)
    compile: bool = False  # torch.compile the network; not with the gradient penalty (double backward)
    p_uncond: float = 0.1  # model.conditional: share of training rows whose label is replaced by the null label


@dataclass
class SampleConfig:
    sampler: str = "approx"  # exact | approx | kale (DMMD); ddpm | ddim (method = ddpm); euler | heun (method = fm)
    reading: str = "replay"  # approx particle term: own | data_noised | replay (readings (a), (b), (c) in docs/sampling.md)
    num_levels: int = 10  # T
    steps_per_level: int = 10  # N_s
    step_size: float = 0.1  # eta
    kernel_step_size: float = 0.0  # exact sampler with rbf/rq kernels (pairwise repulsion): its own eta; 0 = step_size
    grid: str = "uniform"  # uniform | log_sigma
    inject: float = 0.1  # c_inj: gradient taken at z + c_inj sigma_t u (0 = off)
    renoise: float = 0.0  # c_re: c_re sigma_t N(0, I) added after each level but the last (0 = off)
    leave_one_out: bool = False  # exact sampler: drop a particle's own term
    chunk_size: int = 1024  # particles per forward/backward chunk (bounds memory)
    num_reference: int = 2000  # exact sampler, non-linear kernels: data points used as reference
    replay_particles: int = 2000  # population of the exact run that reading (c) replays
    num_steps: int = 100  # ddpm/ddim/euler/heun: network evaluations (NFE; heun takes (NFE + 1) // 2 steps)
    ddim_eta: float = 0.0  # ddim: 0 deterministic, 1 = ancestral
    step_size_power: float = 0.7  # --nfe N for DMMD: eta = step_size (steps_per_level / N_s)^power (num_levels / T) for the new T x N_s
    ddim_clipped_eps: bool = True  # ddim with clip_x0: step with the eps of the clipped x0 (diffusers' use_clipped_model_output; digits FD 17 vs 74 at NFE 100)
    guidance: float = 0.5  # conditional models: guidance weight w (DMMD: target mu(t,y) + w (mu(t,y) - mu(t,null)); fm/ddpm: (1 + w) cond - w uncond); defaults per method in GUIDANCE_DEFAULTS
    clip_x0: str = "auto"  # ddpm/ddim: clip the predicted clean sample to [-1, 1] (diffusers' clip_sample): auto = on for image data | on | off


@dataclass
class Config:
    method: str = "dmmd"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)


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
    "train.best_by": ("val_loss", "none"),
    "train.precision": ("fp32", "bf16"),
    "sample.sampler": ("exact", "approx", "kale", "ddpm", "ddim", "euler", "heun"),
    "sample.clip_x0": ("auto", "on", "off"),
    "sample.reading": ("own", "data_noised", "replay"),
    "sample.grid": ("uniform", "log_sigma"),
}
POSITIVE = {"data.num_points", "data.image_size", "data.crop_size", "data.workers", "data.in_memory", "model.feature_dim", "model.width", "model.depth",
            "model.time_dim", "model.base_channels", "model.num_res_blocks", "model.init_width",
            "train.steps", "train.batch_size", "train.num_levels", "train.gp_every", "train.lr", "train.log_every",
            "train.checkpoint_every", "train.keep_checkpoints", "sample.num_levels", "sample.steps_per_level", "sample.step_size",
            "sample.chunk_size", "sample.num_reference", "sample.replay_particles", "sample.num_steps", "process.beta_max",
            "process.beta_min", "process.blur_max_width"}
NON_NEGATIVE = {"train.threads", "train.lambda_gp", "train.lambda_l2", "train.grad_clip", "sample.inject", "sample.renoise",
                "model.rq_dot_weight", "process.blur_noise_std", "seed",
                "sample.kernel_step_size", "sample.ddim_eta", "sample.step_size_power", "model.num_classes",
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
