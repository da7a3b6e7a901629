"""On a CUDA GPU (skipped without one): a bf16 tune, a render, and a one-GPU nccl gang through
`motioncrafter run`. Collected everywhere, so they cannot rot unseen; `pytest -m gpu` runs them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPT = "a red circle moves left to right on a black background"


@pytest.fixture
def gpu_base():
    from motioncrafter.toyworld.model import debug_base

    return debug_base("unet3d").to("cuda", torch.bfloat16)


def test_bf16_tune_on_gpu(gpu_base) -> None:
    from motioncrafter.config import TuneConfig
    from motioncrafter.toyworld.world import ClipSpec, render
    from motioncrafter.trainer import tune_clip

    clip = render(ClipSpec("red", "circle", "black", "zigzag"))
    result = tune_clip(gpu_base, clip.frames, clip.caption, TuneConfig(steps=5, log_every=1, progress=False,
                                                                         gradient_checkpointing=True))
    assert all(np.isfinite(h["loss"]) for h in result.history) and len(result.history) == 5
    assert result.peak_memory_bytes and result.peak_memory_bytes > 0
    assert all(t.dtype == torch.float32 for t in result.adapter.tensors.values())  # fp32 adapters over a bf16 base


def test_render_on_gpu(gpu_base) -> None:
    from motioncrafter.config import RenderConfig
    from motioncrafter.render import render

    cfg = RenderConfig(num_steps=3, decode_chunk=4)
    videos = render(gpu_base, [PROMPT, PROMPT], [0, 1], cfg)
    assert videos.shape == (2, 8, 32, 32, 3) and videos.dtype == np.uint8
    assert np.abs(videos[0].astype(int) - videos[1]).mean() > 1  # the seeds differ
    again = render(gpu_base, [PROMPT, PROMPT], [0, 1], cfg)
    assert np.abs(again.astype(int) - videos).mean() < 1  # and a seed is reproducible (up to GPU kernel choices)


def test_one_gpu_nccl_gang(tmp_path, debug_base_dir) -> None:
    """The whole run with the train stage on one GPU (nccl gang of one rank, DeepSpeed engine) and
    render on it too; encoder and evaluator reserve none and run on the CPU."""
    import ray
    from pipeline_support import TINY, start_ray, write_manifest

    from pipelines.run import main

    manifest = write_manifest(tmp_path, 1)
    start_ray(num_cpus=3, num_gpus=1)
    try:
        sets = [*TINY, "pipeline.gpus_per_worker=1", "pipeline.render_gpus=1", "tune.engine=deepspeed",
                "model.dtype=bfloat16"]
        code = main(["--manifest", str(manifest), "--output", str(tmp_path / "out"), "--run-id", "gpu",
                     "--base-model", debug_base_dir] + [a for s in sets for a in ("--set", s)])
    finally:
        ray.shutdown()
    assert code == 0
    root = tmp_path / "out" / "gpu"
    assert pd.read_parquet(root / "failures").empty and len(pd.read_parquet(root / "summary")) == 1
    assert len(list((root / "adapters").iterdir())) == 1
