"""The training objective's terms, as functions of model outputs and targets.

With z_t the noised clip latents, y the model's regression target for them
(the noise for epsilon-prediction, the velocity for v-prediction), c the
clip's prompt and c~ an appearance-enhanced prompt:

  L_tmp = |y - f(z_t, t, c)|^2              all frames   -> temporal branch
  L_sp  = |y_f - f(z_t[f], t, c)|^2         one frame f  -> spatial branch
  L_app = D(f(z_t, t, c~), sg f_base(z_t, t, c~))        -> temporal branch
  L     = L_tmp + L_sp + lambda * L_app

`tune.app_loss` chooses the comparison D:
  output  |f - f_base|^2 on the whole prediction. Against the same noisy latents
          this is, to first order, a regression onto (y + lambda f_base)/(1 + lambda):
          it pulls the adapter back toward the base where L_tmp asks it to move.
  static  |mean_T f - mean_T f_base|^2: only the frame-constant part (what a still
          image of the clip would show). Its gradient w.r.t. f is the same for every
          frame, so it is orthogonal to the frame-varying part that carries motion.
  stats   per-frame channel mean / std of every spatial module's output
          (Transformer2DModel), tuned vs frozen: statistics of what is drawn, which
          barely move when the content moves.

`tune.temporal_loss` chooses L_tmp:
  plain     the denoising loss above.
  debiased  MotionDirector's: plain plus its appearance-debiased version, both sides
            through phi(x)_i = sqrt(beta^2 + 1) x_i - beta x_anchor with one random
            anchor frame, which damps what all frames share (appearance).
  centered  the denoising loss on the frame-varying part only, x - mean_T x: exactly the
            complement of `static` below, so L_tmp(centered) + L_app(static) splits the
            prediction into a part fitted to the clip (motion) and a part held to the base.

Terms other than `denoising` return one value per sample (B,), so a term can be applied
to the samples whose timestep lies in its range (`masked_mean`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class NoisyClip:
    latents: torch.Tensor  # z_t (B, C, T, h, w)
    target: torch.Tensor  # y, same shape
    timesteps: torch.Tensor  # (B,)


def allowed_timesteps(num_train: int, ranges: list[list[float]]) -> torch.Tensor:
    """Training timesteps inside the union of `ranges` ([start, end) shares of the schedule)."""
    t = torch.arange(num_train)
    keep = torch.zeros(num_train, dtype=torch.bool)
    for start, end in ranges:
        keep |= in_range(t, [start, end], num_train)
    return t[keep]


def in_range(t: torch.Tensor, share: list[float], num_train: int) -> torch.Tensor:
    """(B,) bool: timesteps in [start, end) of the schedule, as shares (1 = the noisiest end)."""
    return (t >= share[0] * num_train) & (t < share[1] * num_train)


def add_noise(scheduler, x0: torch.Tensor, generator: torch.Generator, ranges: list[list[float]] | None = None) -> NoisyClip:
    """Noise the clip at timesteps drawn uniformly from `ranges` (default: the whole schedule);
    the target follows the scheduler's prediction type."""
    num_train = scheduler.config.num_train_timesteps
    allowed = allowed_timesteps(num_train, ranges or [[0.0, 1.0]])
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = allowed[torch.randint(0, len(allowed), (x0.shape[0],), generator=generator)].to(x0.device)
    zt = scheduler.add_noise(x0, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:
        raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")
    return NoisyClip(zt, target, t)


def per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared error of each sample."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def denoising(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The batch mean of `per_sample`."""
    return per_sample(pred, target).mean()


def debias(x: torch.Tensor, anchor: int, beta: float) -> torch.Tensor:
    """MotionDirector's phi over the frame axis (dim 2) of (B, C, T, h, w)."""
    return math.sqrt(beta**2 + 1) * x - beta * x[:, :, anchor : anchor + 1]


def centered(x: torch.Tensor) -> torch.Tensor:
    """The frame-varying part of (B, C, T, h, w): what is left after the temporal mean."""
    return x - x.mean(2, keepdim=True)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return values[mask].mean()


# ---------------------------------------------------------------- appearance normalization


def appearance_output(pred: torch.Tensor, base_pred: torch.Tensor) -> torch.Tensor:
    return per_sample(pred, base_pred.detach())


def appearance_static(pred: torch.Tensor, base_pred: torch.Tensor) -> torch.Tensor:
    """Compare only the temporal means (frame axis 2): the frame-constant part of each prediction."""
    return per_sample(pred.mean(2), base_pred.detach().mean(2))


def appearance_stats(tuned: list[torch.Tensor], base: list[torch.Tensor], batch: int) -> torch.Tensor:
    """Per-sample distance of spatial-feature statistics, summed over the hooked modules.

    Each entry is one module's (B*T, C, 2) per-frame channel (mean, std); frames are
    folded into the batch sample-major by both video UNet families.
    """
    total = torch.zeros(batch, device=tuned[0].device if tuned else "cpu")
    for a, b in zip(tuned, base, strict=True):
        total = total + per_sample(a.reshape(batch, -1), b.detach().reshape(batch, -1))
    return total


class SpatialStats:
    """Forward hooks on every `Transformer2DModel` that record per-frame channel (mean, std)
    of its output while `recording`; `take()` returns and clears what was recorded."""

    def __init__(self, *unets: nn.Module):
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        self.recording = False
        self.records: list = []
        self.handles = [
            m.register_forward_hook(self._hook) for unet in unets for m in unet.modules() if isinstance(m, Transformer2DModel)
        ]

    def _hook(self, module, args, output) -> None:
        if self.recording:
            h = output[0] if isinstance(output, tuple) else output.sample
            h = h.float().flatten(2)  # (B*T, C, h*w)
            self.records.append(torch.stack([h.mean(-1), h.std(-1)], dim=-1))

    @contextmanager
    def record(self):
        self.recording = True
        try:
            yield
        finally:
            self.recording = False

    def take(self) -> list[torch.Tensor]:
        records, self.records = self.records, []
        return records

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
