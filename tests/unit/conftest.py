"""Shared fixtures of the unit tests: tiny random bases of both families, a MovingShapes clip,
tiny tuned adapters, and helpers that compare UNets.

Everything is CPU and debug-size; bases are built by `debug_base` (no weights to download).
Tests that change a base (attach adapters) build their own with `fresh_base`; the
session-scoped `base` is shared and every test that uses it must leave it as it found it
(tests of `tune_clip` check exactly that).
"""

from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch

from motioncrafter.config import AdapterConfig, TuneConfig
from motioncrafter.toyworld.model import debug_base
from motioncrafter.toyworld.world import ClipSpec
from motioncrafter.toyworld.world import render as render_clip

torch.set_num_threads(1)

FAMILIES = ("unet3d", "animatediff")
PROMPT = "a red circle moves left to right on a black background"


@pytest.fixture(scope="session")
def clip():
    return render_clip(ClipSpec(colour="red", shape="circle", background="black", motion="left_to_right"))


def _build(family: str, seed: int = 0):
    with warnings.catch_warnings():  # diffusers' "modules that should be kept in float32" notice
        warnings.simplefilter("ignore")
        return debug_base(family, seed=seed)


@pytest.fixture(scope="session")
def bases() -> dict:
    return {family: _build(family) for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def base(bases, family):
    """The shared debug base of `family` (session-wide: leave it as you found it)."""
    return bases[family]


_PRISTINE: dict = {}


def _fresh(family: str, seed: int = 0):
    """A new, unshared debug base: a deep copy of a pristine one built once per (family, seed)."""
    if (family, seed) not in _PRISTINE:
        _PRISTINE[family, seed] = _build(family, seed)
    return copy.deepcopy(_PRISTINE[family, seed])


@pytest.fixture
def fresh_base():
    """Factory of new debug bases (same seed -> same weights), for tests that modify the base."""
    return _fresh


def tune_cfg(**kw) -> TuneConfig:
    kw.setdefault("steps", 2)
    kw.setdefault("progress", False)
    kw.setdefault("lambda_app", 1.0)  # the whole objective (the default switches L_app off): every term is exercised
    return TuneConfig(**kw)


@pytest.fixture(scope="session")
def tuned(bases, clip):
    """Small adapters tuned on each family, cached per (family, mode, seed, kind, rank)."""
    from motioncrafter.trainer import tune_clip

    cache: dict = {}

    def get(family: str, mode: str = "temporal_only", seed: int = 0, kind: str = "lora", rank: int = 8):
        key = (family, mode, seed, kind, rank)
        if key not in cache:
            # 3 steps at lr 1e-3 (pinned: the default is tuned for quality and may move): outputs
            # change by a few percent (LoRA) to ~30% (full), clearly visible yet small enough that
            # scaled and summed adapters act near-linearly
            cfg = tune_cfg(mode=mode, seed=seed, steps=3, lr=1e-3, spatial_lr=1e-3)
            cache[key] = tune_clip(bases[family], clip.frames, clip.caption, cfg, AdapterConfig(kind=kind, rank=rank))
        return cache[key]

    return get


# ------------------------------------------------------------------ helpers


def unet_inputs(base, seed: int = 0, frames: int = 4):
    """Fixed (latents, timestep, text) for one UNet forward pass."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, base.unet.config.in_channels, frames, 8, 8, generator=g)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        text = base.encode_prompts([PROMPT, "a blue square moves upward on a white background"])
    return latents, t, text


@torch.no_grad()
def unet_out(base, inputs) -> torch.Tensor:
    return base.predict(*inputs)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert list(after) == list(before), (
        f"state dict keys changed: +{sorted(set(after) - set(before))[:5]} -{sorted(set(before) - set(after))[:5]}"
    )
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:5]}"


def as_bytes(tensors: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in tensors.items()}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="session")
def mc():
    """The helpers above, as a fixture (test modules do not import conftest)."""
    return types.SimpleNamespace(
        unet_inputs=unet_inputs,
        unet_out=unet_out,
        snapshot=snapshot,
        assert_same_state=assert_same_state,
        as_bytes=as_bytes,
        rel_diff=rel_diff,
        tune_cfg=tune_cfg,
        PROMPT=PROMPT,
    )
