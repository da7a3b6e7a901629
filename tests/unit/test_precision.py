"""Mixed precision and gradient checkpointing of `tune_clip`, and the attention kernel that runs.

A bfloat16 / float16 base is tuned with float32 adapter weights under autocast (CPU autocast
supports both), and checkpointing recomputes UNet blocks in backward: it must give exactly
the adapter that plain backward gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motioncrafter.base import load_base
from motioncrafter.config import AdapterConfig, TuneConfig
from motioncrafter.toyworld import BASE_DIR
from motioncrafter.trainer import tune_clip

pytestmark = pytest.mark.filterwarnings(
    "ignore:Already found a `peft_config` attribute",
    "ignore:Converting a tensor with requires_grad=True to a scalar",
)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_checkpointing_gives_the_same_adapter(bases, family, clip, mc, monkeypatch, kind):
    base = bases[family]
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = mc.tune_cfg(mode="motioncrafter", steps=2, log_every=1)  # switches adapters and grads between passes
    plain = tune_clip(base, clip.frames, clip.caption, cfg, AdapterConfig(kind=kind))
    assert not calls
    before = mc.snapshot(base.unet)
    ckpt = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(mode="motioncrafter", steps=2, log_every=1,
                                                                  gradient_checkpointing=True), AdapterConfig(kind=kind))
    blocks = [*base.unet.down_blocks, base.unet.mid_block, *base.unet.up_blocks]
    assert len(calls) >= 2 * 3 * len(blocks)  # every block of the 3 gradient passes of each step
    assert mc.as_bytes(ckpt.adapter.tensors) == mc.as_bytes(plain.adapter.tensors)
    assert ckpt.history == plain.history
    mc.assert_same_state(base.unet, before)
    assert not any("_mc_forward" in vars(b) for b in blocks), "checkpointing left switched on"


def test_half_base_tunes_float32_adapters_and_is_left_as_it_was(fresh_base, clip, mc):
    for dtype in (torch.bfloat16, torch.float16):
        base = fresh_base("unet3d").to("cpu", dtype)
        before = mc.snapshot(base.unet)
        for kind in ("lora", "full"):
            result = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(steps=2), AdapterConfig(kind=kind))
            assert {t.dtype for t in result.adapter.tensors.values()} == {torch.float32}, (dtype, kind)
            assert all(torch.isfinite(t).all() for t in result.adapter.tensors.values())
            mc.assert_same_state(base.unet, before)  # values and dtype: the tuned branch is put back
            assert {p.dtype for p in base.unet.parameters()} == {dtype}


def test_bfloat16_tune_of_the_shipped_base_tracks_float32(clip):
    """Same clip, seed and noise draws: the per-step loss of a bfloat16 base (with checkpointing)
    stays within 4% of the float32 run's mean loss (measured: 1.2% over 40 steps) and the
    adapters point the same way."""
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        base = load_base(BASE_DIR, dtype=dtype)
        cfg = TuneConfig(mode="temporal_only", steps=6, log_every=1, progress=False, gradient_checkpointing=dtype != torch.float32)
        runs[dtype] = tune_clip(base, clip.frames, clip.caption, cfg)
    full, half = (np.array([h["tmp"] for h in runs[d].history]) for d in (torch.float32, torch.bfloat16))
    assert np.abs(full - half).max() < 0.04 * full.mean(), (full, half)
    a, b = (torch.cat([t.flatten() for k, t in sorted(runs[d].adapter.tensors.items()) if "lora_B" in k])
            for d in (torch.float32, torch.bfloat16))
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.9


def test_sdpa_is_the_attention_that_runs(bases, family, mc, monkeypatch):
    """Every diffusers Attention module goes through torch's scaled_dot_product_attention."""
    from diffusers.models.attention_processor import Attention

    base = bases[family]
    n = sum(isinstance(m, Attention) for m in base.unet.modules())
    inputs = mc.unet_inputs(base)  # (the text encoder's own attention runs here, before counting)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    mc.unet_out(base, inputs)
    assert n > 0 and len(calls) == n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_read_once_remembers_the_dtype_and_changes_no_output(fresh_base, family, mc, monkeypatch, dtype):
    import diffusers.models.modeling_utils as modeling_utils

    from motioncrafter.base import dtype_read_once

    base = fresh_base(family).to("cpu", dtype)
    unet, cls = base.unet, type(base.unet)
    inputs = mc.unet_inputs(base)
    with torch.no_grad():
        plain = mc.unet_out(base, inputs)
    reads = []
    real = modeling_utils.get_parameter_dtype
    monkeypatch.setattr(modeling_utils, "get_parameter_dtype", lambda m: reads.append(1) or real(m))
    with dtype_read_once(unet), torch.no_grad():
        assert len(reads) == 1 and unet.dtype == dtype and isinstance(unet, cls)
        outs = [mc.unet_out(base, inputs) for _ in range(2)]
    assert len(reads) == 1  # the UNet's forward read it twice without a walk
    assert all(torch.equal(out, plain) for out in outs)
    assert type(unet) is cls and unet.dtype == dtype and len(reads) == 2  # the class and its walking property again
