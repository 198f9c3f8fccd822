"""The config's types: one dataclass per section, each field with its default and what it means.

dmmd.config loads, overrides and checks them; import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    scale: str = "auto"  # file: auto (images to [-1, 1], far-from-unit vectors standardised) | none | LO,HI (maps [LO, HI] to [-1, 1])


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
    levels: str = "uniform"  # DMMD's training levels: uniform in [t_min, t_max] | sampler_grid (drawn from the T levels of sample.num_levels on sample.grid)
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
    step_size: float = 0.1  # eta (step_norm = "gradient": r, the rms move of a coordinate per step in units of sigma_t)
    step_norm: str = "fixed"  # DMMD step: fixed (z + eta grad) | gradient (z + r sigma_t grad / rms(grad), rms of the exact run)
    kernel_step_size: float = 0.0  # exact sampler with rbf/rq kernels (pairwise repulsion): its own eta; 0 = step_size
    grid: str = "uniform"  # uniform | log_sigma | log_snr (levels evenly in t, log sigma_t or log alpha_t^2 / sigma_t^2)
    inject: float = 0.1  # c_inj: gradient taken at z + c_inj sigma_t u (0 = off)
    renoise: float = 0.0  # c_re: c_re sigma_t N(0, I) added after each level but the last (0 = off)
    leave_one_out: bool = False  # exact sampler: drop a particle's own term
    chunk_size: int = 1024  # particles per forward/backward chunk (bounds memory)
    num_reference: int = 2000  # exact sampler, non-linear kernels: data points used as reference
    replay_particles: int = 2000  # population of the exact run that reading (c) replays
    calibration_rows: int = 10000  # training rows (a fixed random subset) the level statistics average over; 0 = all
    num_steps: int = 100  # ddpm/ddim/euler/heun: network evaluations (NFE; heun takes (NFE + 1) // 2 steps)
    ddim_eta: float = 0.0  # ddim: 0 deterministic, 1 = ancestral
    step_size_power: float = 0.7  # --nfe N for DMMD: eta = step_size (steps_per_level / N_s)^power (num_levels / T) for the new T x N_s (gradient steps: sqrt(num_levels / T))
    nfe_levels: int = 0  # --nfe N for DMMD: T = nfe_levels levels of N / T steps when N is a multiple of it; 0: N x 1 up to N = 20, else 10 x N / 10
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
