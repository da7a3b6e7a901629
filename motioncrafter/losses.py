"""The training objective's terms, as functions of model outputs and targets.

With z_t the noised clip latents, y the model's regression target for them
(the noise for epsilon-prediction, the velocity for v-prediction), c the
clip's prompt and c~ an appearance-enhanced prompt:

  L_tmp = |y - f(z_t, t, c)|^2              all frames   -> temporal branch
  L_sp  = |y_f - f(z_t[f], t, c)|^2         one frame f  -> spatial branch
  L_app = |f(z_t, t, c~) - sg(f_base(z_t, t, c~))|^2     -> temporal branch
  L     = L_tmp + L_sp + lambda * L_app

MotionDirector's baseline replaces L_tmp by its appearance-debiased version:
both sides pass through phi(x)_i = sqrt(beta^2 + 1) x_i - beta x_anchor, with
one random anchor frame, which removes what all frames share (appearance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class NoisyClip:
    latents: torch.Tensor  # z_t (B, C, T, h, w)
    target: torch.Tensor  # y, same shape
    timesteps: torch.Tensor  # (B,)


def add_noise(scheduler, x0: torch.Tensor, generator: torch.Generator) -> NoisyClip:
    """Noise the clip at uniformly drawn timesteps; the target follows the scheduler's prediction type."""
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    zt = scheduler.add_noise(x0, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:
        raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")
    return NoisyClip(zt, target, t)


def denoising(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float())


def debias(x: torch.Tensor, anchor: int, beta: float) -> torch.Tensor:
    """MotionDirector's phi over the frame axis (dim 2) of (B, C, T, h, w)."""
    return math.sqrt(beta**2 + 1) * x - beta * x[:, :, anchor : anchor + 1]


def appearance_normalization(pred: torch.Tensor, base_pred: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), base_pred.detach().float())
