"""Optimizer engines behind `tune_clip`: plain torch AdamW, or a DeepSpeed engine.

Both expose the same two calls, `backward(loss)` and `step()`, so the tuning
loop is one code path whatever the engine. Both step the same learning-rate
schedule (`lr_schedule`) after each optimizer step.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from motioncrafter.config import TuneConfig


def lr_schedule(cfg: TuneConfig):
    """optimizer -> its schedule: a linear warm-up over `tune.warmup_steps`, then constant (so the
    adapter after k steps is the one a k-step run gives, whatever the budget)."""
    from diffusers.optimization import get_constant_schedule_with_warmup

    return lambda optimizer: get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)


class TorchEngine:
    """AdamW with gradient clipping, in this process only.

    Over a bfloat16 / float16 base the trainable weights are made float32 (the diffusers
    training scripts' `cast_training_params`; `BaseModel.predict` runs under autocast), and
    float16 scales the loss (`torch.amp.GradScaler`) so small gradients do not flush to zero.
    """

    def __init__(self, param_groups: list[dict], cfg: TuneConfig, dtype: torch.dtype = torch.float32):
        self.params = [p for g in param_groups for p in g["params"]]
        for p in self.params:
            p.data = p.data.float()
        # foreach: one multi-tensor update instead of a Python loop over the adapter's hundreds of small
        # tensors (torch picks it by itself only on CUDA); the same numbers as the loop
        self.optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay, foreach=True)
        self.schedule = lr_schedule(cfg)(self.optimizer)
        self.grad_clip = cfg.grad_clip
        device = self.params[0].device.type if self.params else "cpu"
        self.scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)  # skipped when float16 gradients overflowed
        self.scaler.update()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def gather(self, params: list[nn.Parameter]):
        return contextlib.nullcontext()  # parameters are whole in this process

    def close(self) -> None:
        pass


def make_engine(model: nn.Module, param_groups: list[dict], cfg: TuneConfig, dtype: torch.dtype = torch.float32):
    """`dtype`: the frozen base's (`BaseModel.dtype`); it picks the mixed precision."""
    if cfg.engine == "torch":
        return TorchEngine(param_groups, cfg, dtype)
    from motioncrafter.distributed import DeepSpeedEngine

    return DeepSpeedEngine(model, param_groups, cfg, dtype)
