"""The device a Ray task, actor or Ray Train worker computes on: a GPU only if Ray reserved one for it.

Ray (2.60 here) no longer hides the node's GPUs from a worker that reserved none
(`CUDA_VISIBLE_DEVICES` is left as it was, ray-project/ray#54868), so `torch.cuda.is_available()`
says nothing about what this worker may use: a CPU-reserved encoder, renderer or gang worker
that trusted it would take `cuda:0` from the worker that did reserve it. Every stage that
opens the base or a metric model asks `worker_device` instead.
"""

from __future__ import annotations

import logging
import os

import ray

from motioncrafter.base import BaseModel, open_base, resolve_device
from motioncrafter.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


def reserved_gpus() -> list[str] | None:
    """The GPU ids Ray reserved for this worker ([] for none); None outside Ray, where nothing is reserved."""
    if not ray.is_initialized():  # (get_runtime_context() would start a Ray instance)
        return None
    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def worker_device(requested: str) -> str:
    """`model.device` (auto | cpu | cuda | cuda:N) as this worker may use it.

    No GPU reserved: "cpu", whatever was asked ("cuda" is logged, not obeyed). A reservation:
    "cpu" stays, anything else is the reserved GPU as torch numbers it in this process (Ray sets
    `CUDA_VISIBLE_DEVICES` to the node's GPUs its workers share, as Ray Train's `get_device`
    reads them), "cuda:N" the N-th reserved one. Outside Ray the library's rule (`resolve_device`).
    """
    gpus = reserved_gpus()
    if gpus is None:
        return resolve_device(requested)
    if requested == "cpu":
        return "cpu"
    if not gpus:
        if requested != "auto":
            log.warning("model.device=%r, but Ray reserved no GPU for this worker: it runs on the CPU "
                        "(reserve one with pipeline.gpus_per_worker / encode_gpus / render_gpus / evaluate_gpus)", requested)
        return "cpu"
    n = int(requested.partition(":")[2] or 0) if requested.startswith("cuda") else 0
    if n >= len(gpus):
        raise ConfigError(f"model.device: {requested!r}, but Ray reserved {len(gpus)} GPU(s) for this worker ({', '.join(gpus)})")
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    if not visible:  # Ray was told not to set it (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES): torch counts as Ray does
        return f"cuda:{int(gpus[n])}"
    if gpus[n] not in visible:
        raise RuntimeError(f"Ray reserved GPU {gpus[n]} for this worker, but CUDA_VISIBLE_DEVICES={','.join(visible)} hides it")
    return f"cuda:{visible.index(gpus[n])}"  # Ray's ids are the node's; torch counts the visible ones


def open_worker_base(model: ModelConfig) -> BaseModel:
    """The base, opened on the device this worker may use: every stage's actors and gang ranks open it so."""
    return open_base(model, worker_device(model.device))
