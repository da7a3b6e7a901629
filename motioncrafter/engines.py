"""Optimizer engines behind `tune_clip`: plain torch AdamW, or a DeepSpeed engine.

Both expose the same two calls, `backward(loss)` and `step()`, so the tuning
loop is one code path whatever the engine.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from motioncrafter.config import TuneConfig


class TorchEngine:
    """AdamW with gradient clipping, in this process only."""

    def __init__(self, param_groups: list[dict], cfg: TuneConfig):
        self.params = [p for g in param_groups for p in g["params"]]
        self.optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
        self.grad_clip = cfg.grad_clip

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def gather(self, params: list[nn.Parameter]):
        return contextlib.nullcontext()  # parameters are whole in this process

    def close(self) -> None:
        pass


def make_engine(model: nn.Module, param_groups: list[dict], cfg: TuneConfig):
    if cfg.engine == "torch":
        return TorchEngine(param_groups, cfg)
    from motioncrafter.distributed import DeepSpeedEngine

    return DeepSpeedEngine(model, param_groups, cfg)
