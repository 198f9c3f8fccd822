"""DDPM baseline on the DMMD backbones: epsilon-prediction training, ancestral (DDPM) and DDIM sampling.

The baseline uses the continuous-time VP process of `dmmd.math.noising.VPProcess` (alpha_t, sigma_t
in float64, t in [t_min, t_max]) and the same backbone family as DMMD (`build_eps_net`): the
FeatureMLP with feature_dim = prod(data shape), or the U-Net with its 'epsilon' head.

Notation: abar(t) = alpha_t^2, 1 - abar(t) = sigma_t^2; a step goes from time t to s < t.

Training (Ho et al. 2020, epsilon prediction):

    t ~ U[t_min, t_max] per sample,  eps ~ N(0, I),  x_t = alpha_t x_0 + sigma_t eps
    loss = mean over batch and coordinates of (eps_theta(x_t, t) - eps)^2
         = E ||eps_theta(x_t, t) - eps||^2 / D          (D = coordinates per sample)

Prediction of the clean sample:  x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t).

DDPM ancestral step (posterior q(x_s | x_t, x_0 = x0_hat), variance 'fixed_small'):

    beta_ts    = 1 - abar_t / abar_s
    mean       = sqrt(abar_s) beta_ts / (1 - abar_t) * x0_hat
               + sqrt(abar_t / abar_s) (1 - abar_s) / (1 - abar_t) * x_t
    beta_tilde = (1 - abar_s) / (1 - abar_t) * beta_ts
    x_s        = mean + sqrt(beta_tilde) * noise

DDIM step (Song et al. 2021, eq. 12 and 16):

    sigma_ts = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)
    x_s      = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma_ts^2) eps + sigma_ts * noise

eta = 0 is the deterministic DDIM sampler, eta = 1 is the DDPM step above. With noise=None either
step returns its mean (no noise term). The coefficients are computed in float64 and folded into
one coefficient for x_t and one for eps before being cast to the data's dtype, which avoids
dividing by sqrt(abar_t) (about 0.0066 at t = 1) in float32.

Sampling (`sample`): particles start from the prior N(0, I) at t_max and take ancestral or DDIM
steps along the uniform grid of `num_steps` times t_max = t_0 > ... > t_{n-1} = t_min
(`dmmd.math.noising.time_grid(process, num_steps)`). As in diffusers, the last step never adds noise:

  * final_denoise=True (default): the n - 1 grid steps are all stochastic (for DDPM, or DDIM with
    eta > 0), then one more step from t_min to clean data (abar = 1), which for both samplers is
    x0_hat(x_{t_min}) without noise. This is exactly diffusers' loop whose last timestep is 0
    (previous alpha_cumprod = 1, no noise at t = 0); see tests/test_ddpm.py for the mapping.
  * final_denoise=False: the loop ends at t_min and its last step (into t_min) returns the step's
    mean without noise.

Each particle's noise comes from its own generator in a `dmmd.methods.mmd_flow.ParticleNoise`, and the
networks act on each sample separately, so sample i depends only on its own seed and index.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dmmd.config import ModelConfig
from dmmd.math.conditioning import guided_output
from dmmd.math.noising import Process, time_grid
from dmmd.methods.discriminator import num_classes_of
from dmmd.methods.mmd_flow import ParticleNoise
from dmmd.nets.mlp import FeatureMLP, distinct_times, per_input
from dmmd.nets.unet import UNet

METHODS = ("ddpm", "ddim")


# --------------------------------------------------------------------------------------- networks


class EpsMLP(nn.Module):
    """The FeatureMLP with feature_dim = prod(data_shape), its output reshaped to the input's shape,
    plus a skip path:  out = body(x, t) + g(t) x,  g a learned scalar (a linear map of the body's
    time embedding, zero at initialisation).

    The body's output passes through its width-wide hidden layers, so it has rank <= width in x:
    with width < prod(data_shape) (Fashion-MNIST: 512 < 784) it cannot return eps ~ x_t at high
    noise (or the velocity ~ x_t of flow matching), and DDPM's reverse chain multiplies the
    directions it misses by about 1 / alpha(t_max) (~150): saturated noise once x0 is clipped.
    """

    def __init__(self, data_shape: tuple[int, ...], width: int = 256, depth: int = 3, time_dim: int = 128,
                 num_classes: int = 0):
        super().__init__()
        self.data_shape = tuple(data_shape)
        dim = math.prod(self.data_shape)
        self.body = FeatureMLP(dim, dim, width, depth, time_dim, num_classes)
        self.skip = nn.Linear(time_dim, 1)  # created after the body: its initial weights are unchanged
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        times, index = distinct_times(t, x.shape[0], x.device)
        gain = per_input(self.skip(self.body.time(times)), index)  # once per distinct time, as the body's FiLM
        out = self.body(x, t) if y is None else self.body(x, t, y)
        return out.reshape(x.shape) + gain.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) * x


def add_missing_skip(state: dict, prefix: str = "module.") -> dict:
    """An EpsMLP state saved before the skip path existed (no `skip.*` keys) with the skip filled
    with zeros: g(t) = 0, exactly the network it was trained as. Other states are returned as is."""
    time_out = state.get(f"{prefix}body.time.mlp.2.weight")
    if time_out is None or f"{prefix}skip.weight" in state or f"{prefix}body.out.2.weight" not in state:
        return state
    return {**state, f"{prefix}skip.weight": time_out.new_zeros(1, time_out.shape[0]),
            f"{prefix}skip.bias": time_out.new_zeros(1)}


def build_eps_net(model_cfg: ModelConfig, data_shape: tuple[int, ...]) -> nn.Module:
    """eps_theta(x, t) on DMMD's backbone: (N, *data_shape) -> (N, *data_shape).

    'mlp': FeatureMLP(prod(data_shape), prod(data_shape), width, depth, time_dim), reshaped.
    'unet': UNet(..., head='epsilon') with DMMD's base_channels / channel_mults / num_res_blocks /
    attn_resolutions (its time embedding width is 4 * base_channels, as for DMMD).
    """

    data_shape, num_classes = tuple(data_shape), num_classes_of(model_cfg)
    if model_cfg.backbone == "mlp":
        return EpsMLP(data_shape, model_cfg.width, model_cfg.depth, model_cfg.time_dim, num_classes)
    if model_cfg.backbone == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"the unet backbone needs image data (C, H, W), got shape {data_shape}")
        return UNet(data_shape, model_cfg.base_channels, model_cfg.channel_mults, model_cfg.num_res_blocks,
                    model_cfg.attn_resolutions, head="epsilon", feature_dim=model_cfg.feature_dim,
                    num_classes=num_classes)
    raise ValueError(f"model.backbone must be 'mlp' or 'unet', got {model_cfg.backbone!r}")


# --------------------------------------------------------------------------------------- schedule


def _require_vp(process: Process) -> None:
    if not (hasattr(process, "alpha") and hasattr(process, "sigma")):
        raise ValueError(f"DDPM needs a Gaussian (VP) process with alpha(t) and sigma(t); "
                         f"got {type(process).__name__}")


def _times(t: Tensor | float, n: int) -> Tensor:
    """A scalar or (n,) time as an (n,) float64 tensor."""
    t = torch.as_tensor(t, dtype=torch.float64)
    t = t.expand(n) if t.ndim == 0 else t.reshape(-1)
    if t.shape != (n,):
        raise ValueError(f"time must be a scalar or have {n} entries, got shape {tuple(t.shape)}")
    return t


def alpha_bar(process: Process, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """(abar_t, 1 - abar_t) = (alpha_t^2, sigma_t^2) in float64 (sigma keeps 1 - abar accurate at small t)."""
    _require_vp(process)
    t = torch.as_tensor(t, dtype=torch.float64)
    return process.alpha(t) ** 2, process.sigma(t) ** 2


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """(N,) float64 coefficients -> (N, 1, ..., 1) in like's dtype and device."""
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _pair(process: Process, t, s, n: int):
    """Schedule values at t and s (each (n,) float64); checks s < t."""
    t, s = _times(t, n), _times(s, n)
    if not bool((s < t).all()):
        raise ValueError("a reverse step needs s < t")
    (abar_t, one_t), (abar_s, one_s) = alpha_bar(process, t), alpha_bar(process, s)
    return abar_t, one_t, abar_s, one_s


def predict_x0(eps: Tensor, x_t: Tensor, t: Tensor | float, process: Process) -> Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    abar_t, one_t = alpha_bar(process, _times(t, x_t.shape[0]))
    return _bcast(abar_t.rsqrt(), x_t) * x_t - _bcast((one_t / abar_t).sqrt(), x_t) * eps


# ------------------------------------------------------------------------------------------ steps


def ddpm_step(eps: Tensor, x_t: Tensor, t: Tensor | float, s: Tensor | float, noise: Tensor | None = None,
              *, process: Process, clip: float | None = None) -> Tensor:
    """Ancestral step t -> s < t: a draw from q(x_s | x_t, x0_hat) with x0_hat from eps.

    noise: N(0, I) of x_t's shape, or None for the posterior mean. t, s: scalars or (N,) times.
    For s = 0 (abar_s = 1) the step returns x0_hat. clip: x0_hat is clamped to [-clip, clip]
    before the posterior mean is formed (diffusers' clip_sample=True with clip_sample_range).
    """
    abar_t, one_t, abar_s, one_s = _pair(process, t, s, x_t.shape[0])
    beta_ts = 1.0 - abar_t / abar_s
    c_x0 = abar_s.sqrt() * beta_ts / one_t
    c_xt = (abar_t / abar_s).sqrt() * one_s / one_t
    if clip is not None:
        x0_hat = predict_x0(eps, x_t, t, process).clamp(-clip, clip)
        out = _bcast(c_x0, x_t) * x0_hat + _bcast(c_xt, x_t) * x_t
    else:  # mean = c_x0 * x0_hat + c_xt * x_t, with x0_hat expanded: (c_x0 / sqrt(abar_t) + c_xt) x_t - ... eps
        out = _bcast(c_x0 / abar_t.sqrt() + c_xt, x_t) * x_t - _bcast(c_x0 * (one_t / abar_t).sqrt(), x_t) * eps
    if noise is not None:
        out = out + _bcast((one_s / one_t * beta_ts).sqrt(), x_t) * noise
    return out


def ddim_step(eps: Tensor, x_t: Tensor, t: Tensor | float, s: Tensor | float, eta: float = 0.0,
              noise: Tensor | None = None, *, process: Process, clip: float | None = None,
              clipped_eps: bool = False) -> Tensor:
    """DDIM step t -> s < t (Song et al. eq. 12); eta in [0, 1] scales the injected noise.

    noise: N(0, I) of x_t's shape for eta > 0, or None for the step's mean (no noise term).
    clip: x0_hat clamped to [-clip, clip]; the direction term keeps the network's eps, as in
    diffusers' DDIMScheduler with clip_sample=True and use_clipped_model_output=False, or, with
    clipped_eps=True (use_clipped_model_output=True), the eps that the clipped x0_hat implies:
    eps' = (x_t - sqrt(abar_t) clip(x0_hat)) / sqrt(1 - abar_t).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1], got {eta}")
    abar_t, one_t, abar_s, one_s = _pair(process, t, s, x_t.shape[0])
    std = eta * (one_s / one_t * (1.0 - abar_t / abar_s)).sqrt()
    direction = (one_s - std**2).clamp(min=0.0).sqrt()
    # sqrt(abar_s) x0_hat + direction eps, with x0_hat expanded.
    if clip is not None:
        x0_hat = predict_x0(eps, x_t, t, process).clamp(-clip, clip)
        if clipped_eps:
            eps = (x_t - _bcast(abar_t.sqrt(), x_t) * x0_hat) / _bcast(one_t.sqrt(), x_t)
        out = _bcast(abar_s.sqrt(), x_t) * x0_hat + _bcast(direction, x_t) * eps
    else:
        c_eps = direction - (abar_s * one_t / abar_t).sqrt()
        out = _bcast((abar_s / abar_t).sqrt(), x_t) * x_t + _bcast(c_eps, x_t) * eps
    if noise is not None and eta > 0:
        out = out + _bcast(std, x_t) * noise
    return out


# --------------------------------------------------------------------------------------- training


def ddpm_loss(net: nn.Module, x0: Tensor, process: Process, generator: torch.Generator | None = None,
              y: Tensor | None = None) -> tuple[Tensor, dict]:
    """Epsilon-prediction loss on a batch x0 (N, ...); returns (loss, {"mse": detached loss}).

    Draws, in this order from `generator` on x0's device: t = t_min + (t_max - t_min) U (N,
    float64), then eps ~ N(0, I) in x0's dtype. loss = mean((net(x_t, t) - eps)^2) over batch and
    coordinates, x_t = alpha_t x0 + sigma_t eps. y: (N,) labels of a conditional net.
    """
    _require_vp(process)
    n = x0.shape[0]
    u = torch.rand(n, generator=generator, device=x0.device, dtype=torch.float64)
    t = process.t_min + (process.t_max - process.t_min) * u
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = _bcast(process.alpha(t), x0) * x0 + _bcast(process.sigma(t), x0) * eps
    loss = ((net(x_t, t) if y is None else net(x_t, t, y)) - eps).square().mean()
    return loss, {"mse": loss.detach()}


# --------------------------------------------------------------------------------------- sampling


def num_evaluations(num_steps: int, final_denoise: bool = True, repeats: int = 1) -> int:
    """Network evaluations (progress updates) that `sample` makes; with inpainting's resampling
    every step but the one that ends the chain runs `repeats` times."""
    steps = num_steps - 1 + int(final_denoise)
    return steps if steps == 0 else (steps - 1) * repeats + 1


def _eps(net: nn.Module, x: Tensor, t: float, chunk_size: int | None, y: Tensor | None = None,
         guidance: float = 0.0) -> Tensor:

    if chunk_size is None or x.shape[0] <= chunk_size:
        return guided_output(net, x, t, y, guidance)
    return torch.cat([guided_output(net, x[i:i + chunk_size], t, None if y is None else y[i:i + chunk_size], guidance)
                      for i in range(0, x.shape[0], chunk_size)])


def sample(net: nn.Module, z: Tensor, process: Process, num_steps: int, method: str = "ddpm",
           noise: ParticleNoise | None = None, progress=None, *, eta: float = 0.0,
           final_denoise: bool = True, chunk_size: int | None = None, clip: float | None = None,
           clipped_eps: bool = False, known=None, y: Tensor | None = None, guidance: float = 0.0) -> Tensor:
    """Run the reverse chain from z (N, ...) drawn from the prior N(0, I) at t_max.

    Steps along time_grid(process, num_steps) (uniform, t_max -> t_min) with `ddpm_step` or
    `ddim_step` (eta for DDIM only). final_denoise=True adds a last, noise-free step from t_min to
    x0_hat (num_steps network evaluations in all); final_denoise=False returns x at t_min, the last
    step into t_min taken without noise (num_steps - 1 evaluations). noise: a ParticleNoise for z's
    particles, needed by DDPM and DDIM with eta > 0; it is drawn once per stochastic step.
    clip: clamp every predicted clean sample (and the final one) to [-clip, clip], as the reference
    implementations do for data of known range (diffusers' clip_sample=True); None: no clipping.
    clipped_eps: DDIM's direction term uses the eps of the clipped x0 (see `ddim_step`).
    progress: anything with update(1), called after each network evaluation. chunk_size bounds the
    batch of one network call. Returns a new tensor.
    known: inpainting (dmmd.math.inpaint): before each step from t, x <- known(x, t) sets the known
    pixels to their forward-noised copy at t (RePaint's replacement); the result ends with
    known(x, None), the known pixels exact. A hook with repeats U > 1 (RePaint's resampling) runs
    every step but the one that ends the chain U times, with x <- known.jump(x, s, t) (the forward
    transition back from s to t) in between.
    y: (N,) labels for a conditional net, with classifier-free guidance
    eps = (1 + guidance) eps(x, t, y) - guidance eps(x, t, null).
    """
    _require_vp(process)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "ddpm" and eta:
        raise ValueError("eta is a DDIM setting; DDPM is DDIM with eta = 1")
    stochastic = method == "ddpm" or eta > 0
    if stochastic and noise is None:
        raise ValueError(f"{method} sampling{' with eta > 0' if method == 'ddim' else ''} needs a ParticleNoise")
    grid = time_grid(process, num_steps).tolist()
    x = z.detach().clone()
    repeats = getattr(known, "repeats", 1)
    with torch.no_grad():
        for k in range(num_steps - 1):
            t, s = grid[k], grid[k + 1]
            last = k == num_steps - 2 and not final_denoise
            for u in range(1 if last else repeats):
                if u:  # resampling: back from s's noise to t's
                    x = known.jump(x, s, t)
                if known is not None:
                    x = known(x, t)
                eps = _eps(net, x, t, chunk_size, y, guidance)
                e = noise.draw().to(device=x.device, dtype=x.dtype) if stochastic and not last else None
                if method == "ddpm":
                    x = ddpm_step(eps, x, t, s, e, process=process, clip=clip)
                else:
                    x = ddim_step(eps, x, t, s, eta, e, process=process, clip=clip, clipped_eps=clipped_eps)
                if progress is not None:
                    progress.update(1)
        if final_denoise:
            if known is not None:
                x = known(x, grid[-1])
            x = predict_x0(_eps(net, x, grid[-1], chunk_size, y, guidance), x, grid[-1], process)
            if clip is not None:
                x = x.clamp(-clip, clip)
            if progress is not None:
                progress.update(1)
    return x if known is None else known(x, None)
