"""The DeepSpeed engine behind `tune_clip(..., tune.engine="deepspeed")`.

Every rank tunes the same clip with its own noise draws; DeepSpeed averages the
gradients, so every rank ends with the same adapter. What each ZeRO stage
shards, for this workload (a frozen base plus small trainable adapters):

  stage 0  nothing: plain data parallelism (gradients all-reduced)
  stage 1  the optimizer state (Adam moments of the adapter weights)
  stage 2  + the gradients of the adapter weights
  stage 3  + the parameters themselves, the frozen base's included: the only
           stage that cuts the memory of the base model, which dominates here
           (a LoRA adapter and its optimizer state are a few MB)
  offload  (stages 1-3) the optimizer state and its update live in CPU memory

Works on CPU (gloo) and GPU (nccl). Engines are made per clip and released
completely (`close`): hooks removed and, after ZeRO-3, the parameters gathered
back into plain tensors, so the resident base is usable without DeepSpeed again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import types

import torch
from torch import nn

from motioncrafter.config import TuneConfig
from motioncrafter.engines import lr_schedule


def _import_deepspeed(device_type: str = "cpu"):
    # DeepSpeed's accelerator follows the device the model is on (set once, at the process's first
    # engine), not torch.cuda.is_available(): a CPU worker on a GPU node must stay on the CPU.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device_type == "cuda" else "cpu")
    import deepspeed
    import deepspeed.ops

    # DeepSpeed JIT-compiles a shared-memory all-reduce for inference (~100 s on a
    # small CPU) whenever it sets up communication; training never uses it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def init_distributed(device_type: str = "cpu") -> None:
    """Join (or, alone, create) the process group; Ray Train and torchrun set the env already."""
    deepspeed = _import_deepspeed(device_type)
    if torch.distributed.is_initialized():
        return
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)  # LOCAL_RANK missing makes DeepSpeed try MPI discovery
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if device_type == "cuda" else "gloo")


def free_port() -> int:
    """A TCP port nothing listens on now, for a process group of this machine alone."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ds_config(cfg: TuneConfig, world_size: int, dtype: torch.dtype = torch.float32) -> dict:
    """`dtype` is the frozen base's: over bfloat16 / float16 DeepSpeed's own mixed precision runs
    (the module in that dtype, float32 master weights of the trainable ones in its optimizer,
    dynamic loss scaling for float16)."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload and cfg.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_micro_batch_size_per_gpu": cfg.batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.batch * world_size,
        "gradient_clipping": cfg.grad_clip,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16, "loss_scale": 0},  # 0: dynamic
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # torch AdamW with offload; DeepSpeedCPUAdam needs a C++ build
        "steps_per_print": 10**9,
    }


class _AdamWOverTunedGroups(torch.optim.AdamW):
    """torch's AdamW that leaves a group alone on a step that did not tune it.

    The trainer switches requires_grad off for a group no pass of the step tuned (the
    spatial LoRA between `spatial_every` steps, MotionDirector's masked steps), which is
    all torch's AdamW needs to skip it. ZeRO 1-3 hand this optimizer flat float32 copies
    of each group instead, with a gradient zero-filled where none came, so Adam's
    momentum would move the group; the model's own parameters, kept here per group
    before ZeRO swaps in its copies, still say which groups were tuned. Kept by the
    group's identity: ZeRO edits each group in place but steps them one at a time,
    `param_groups` then a list of that group alone.
    """

    def __init__(self, param_groups: list[dict], **kwargs):
        super().__init__(param_groups, **kwargs)
        self.model_params = {id(group): list(group["params"]) for group in self.param_groups}

    @torch.no_grad()
    def step(self, closure=None):
        # the untuned groups step with no parameters; their gradient buffers are left as they are
        # (with offload ZeRO keeps them for the next step's copies)
        untuned = [(group, group["params"]) for group in self.param_groups
                   if not any(p.requires_grad for p in self.model_params[id(group)])]
        for group, _ in untuned:
            group["params"] = []
        try:
            return super().step(closure)
        finally:
            for group, params in untuned:
                group["params"] = params


class DeepSpeedEngine:
    """`deepspeed.initialize` around the UNet, with a torch AdamW over the trainable groups."""

    def __init__(self, model: nn.Module, param_groups: list[dict], cfg: TuneConfig, dtype: torch.dtype = torch.float32):
        device = next(model.parameters()).device
        deepspeed = _import_deepspeed(device.type)
        init_distributed(device.type)
        self.model, self.stage = model, cfg.zero_stage
        optimizer = _AdamWOverTunedGroups(param_groups, weight_decay=cfg.weight_decay)
        # on a GPU the engine keeps the model on the one it is on (pipelines.devices chose it), not cuda:LOCAL_RANK
        args = types.SimpleNamespace(device_rank=device.index or 0) if device.type == "cuda" else None
        self.engine, *_ = deepspeed.initialize(
            args=args, model=model, optimizer=optimizer, lr_scheduler=lr_schedule(cfg),
            config=ds_config(cfg, torch.distributed.get_world_size(), dtype),
        )

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()  # clips, steps, zeroes the gradients and steps the lr schedule

    def gather(self, params: list[nn.Parameter]):
        """Full parameters on every rank while inside (ZeRO-3 keeps only a shard otherwise)."""
        if self.stage == 3:
            return _import_deepspeed().zero.GatheredParameters(params, modifier_rank=None)
        return contextlib.nullcontext()

    def close(self) -> None:
        engine = self.engine
        engine.destroy()
        for name in ("module_forward_pre_hook", "module_forward_post_hook"):  # destroy() leaves these behind
            handle = getattr(engine, name, None)
            if handle is not None:
                handle.remove()
                setattr(engine, name, None)
        unregister = getattr(engine.optimizer, "unregister_grad_acc_post_hooks", None)  # ZeRO 1-3 only
        if unregister:
            unregister()
        if self.stage == 3:
            _unshard(self.model)
            _restore_torch_linear()
        self.engine = None


def _restore_torch_linear() -> None:
    """Put torch's `nn.functional.linear` back: ZeRO-3 swaps in its own and leaves it there (DeepSpeed: "This
    will persist unless manually reset"), so every later linear layer of the process, tuning on the torch
    engine included, would run DeepSpeed's (found: checkpointed tuning no longer gave plain tuning's adapter)."""
    from deepspeed.runtime.zero.partition_parameters import InsertPostInitMethodToModuleSubClasses

    original = getattr(InsertPostInitMethodToModuleSubClasses, "linear_bk", None)
    if original is not None:
        torch.nn.functional.linear = original


def _unshard(model: nn.Module) -> None:
    """Replace ZeRO-3 partitioned parameters by plain full ones, on every rank."""
    deepspeed = _import_deepspeed()
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        full = {id(p): p.detach().clone() for p in params}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(full[id(p)], requires_grad=p.requires_grad))
