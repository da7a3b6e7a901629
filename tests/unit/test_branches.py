"""`motioncrafter.branches`: temporal / spatial split by module type, on tiny random UNets of both families."""

from __future__ import annotations

import pytest
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from motioncrafter import adapters as ad
from motioncrafter.branches import (
    branch_parameters,
    branch_roots,
    count_parameters,
    lora_targets,
    trainable_by_branch,
)
from motioncrafter.config import AdapterConfig
from motioncrafter.modes import MODES
from motioncrafter.trainer import MOTION, SPATIAL, _Branches

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")

TEMPORAL_TYPES = (TransformerTemporalModel, TemporalConvLayer, AnimateDiffTransformer3D)
SPATIAL_TYPES = (Transformer2DModel,)
TYPES = {"temporal": TEMPORAL_TYPES, "spatial": SPATIAL_TYPES}


def _inside(name: str, roots: list[str]) -> bool:
    return any(name.startswith(r + ".") for r in roots)


@pytest.mark.parametrize("branch", ["temporal", "spatial"])
def test_roots_are_found_by_type(base, branch):
    unet = base.unet
    modules = dict(unet.named_modules())
    roots = branch_roots(unet, branch)
    assert roots, f"no {branch} roots on {base.family}"
    assert len(set(roots)) == len(roots)
    for r in roots:
        assert isinstance(modules[r], TYPES[branch]), f"{r} is a {type(modules[r]).__name__}"
        assert not _inside(r, roots), f"root {r} is nested inside another root"
    # every module of the branch's types is a root or inside one: nothing is missed
    of_type = [n for n, m in unet.named_modules() if isinstance(m, TYPES[branch])]
    assert of_type and all(n in roots or _inside(n, roots) for n in of_type)


def test_family_specific_roots(base):
    kinds = {type(dict(base.unet.named_modules())[r]) for r in branch_roots(base.unet, "temporal")}
    if base.family == "unet3d":  # ModelScope: temporal attention and temporal convolutions
        assert kinds == {TransformerTemporalModel, TemporalConvLayer}
    else:  # AnimateDiff: motion modules only
        assert kinds == {AnimateDiffTransformer3D}


def test_unknown_branch(base):
    with pytest.raises(ValueError, match="unknown branch 'motion'"):
        branch_roots(base.unet, "motion")


def test_branches_are_disjoint_and_counted(base):
    unet = base.unet
    temporal, spatial = branch_parameters(unet, "temporal"), branch_parameters(unet, "spatial")
    assert temporal and spatial
    assert not set(temporal) & set(spatial)
    assert not {id(p) for p in temporal.values()} & {id(p) for p in spatial.values()}
    counts = count_parameters(unet)
    print(f"{base.family}: {counts}")
    total = sum(p.numel() for p in unet.parameters())
    assert counts.temporal == sum(p.numel() for p in temporal.values()) > 0
    assert counts.spatial == sum(p.numel() for p in spatial.values()) > 0
    assert counts.other > 0  # resnets, embeddings, conv_in/out belong to neither
    assert counts.temporal + counts.spatial + counts.other == total
    assert "temporal" in str(counts) and "%" in str(counts)


def test_count_parameters_refuses_overlap(base, monkeypatch):
    """A module type listed in both branches would break "every parameter in one branch"."""
    from motioncrafter import branches

    both = TEMPORAL_TYPES + SPATIAL_TYPES
    monkeypatch.setattr(branches, "_branch_types", lambda: {"temporal": both, "spatial": both})
    with pytest.raises(AssertionError, match="parameters in both branches"):
        count_parameters(base.unet)


@pytest.mark.parametrize("branch", ["temporal", "spatial"])
def test_lora_targets_are_layers_in_the_right_roots(base, branch):
    unet = base.unet
    modules = dict(unet.named_modules())
    other = "spatial" if branch == "temporal" else "temporal"
    roots, other_roots = branch_roots(unet, branch), branch_roots(unet, other)
    targets = lora_targets(unet, branch)
    assert targets and len(set(targets)) == len(targets)
    for name in targets:
        assert isinstance(modules[name], (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)), name
        assert _inside(name, roots), name
        assert not _inside(name, other_roots), name
    # every root has at least one target
    assert all(any(t.startswith(r + ".") for t in targets) for r in roots)


def test_lora_target_details(base):
    unet = base.unet
    temporal = lora_targets(unet, "temporal")
    spatial = lora_targets(unet, "spatial")
    assert any(t.endswith("attn1.to_q") for t in spatial) and any(t.endswith("attn2.to_k") for t in spatial)
    if base.family == "unet3d":
        # temporal convolutions (Conv3d) are adapted too
        assert any(isinstance(unet.get_submodule(t), nn.Conv3d) for t in temporal)
    else:
        # motion modules' proj_in / proj_out are called with a keyword peft layers do not take
        assert not [t for t in temporal if t.endswith((".proj_in", ".proj_out"))]
        assert any(t.endswith("attention_blocks.0.to_q") or ".to_q" in t for t in temporal)


def _assert_every_trainable_in_one_branch(unet, expected_temporal: set[str], expected_spatial: set[str]):
    by = trainable_by_branch(unet)
    assert by["other"] == [], by["other"][:5]
    assert set(by["temporal"]) == expected_temporal
    assert set(by["spatial"]) == expected_spatial
    assert not set(by["temporal"]) & set(by["spatial"])
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable == set(by["temporal"]) | set(by["spatial"])


def test_lora_of_both_branches_lands_in_its_branch(fresh_base, family):
    base = fresh_base(family)
    unet = base.unet
    t_targets, s_targets = lora_targets(unet, "temporal"), lora_targets(unet, "spatial")
    ad.inject_lora(unet, "t", t_targets, rank=2, alpha=2)
    ad.inject_lora(unet, "s", s_targets, rank=2, alpha=2)
    ad.set_active(unet, ["t", "s"], trainable=("t", "s"))
    t_params = {n for n, _ in unet.named_parameters() if ".lora_A.t." in n or ".lora_B.t." in n}
    s_params = {n for n, _ in unet.named_parameters() if ".lora_A.s." in n or ".lora_B.s." in n}
    assert len(t_params) == 2 * len(t_targets) and len(s_params) == 2 * len(s_targets)
    _assert_every_trainable_in_one_branch(unet, t_params, s_params)
    # roots are still found (the LoRA wrappers sit inside them)
    assert branch_roots(unet, "temporal") and branch_roots(unet, "spatial")


def test_trainer_branches_land_in_their_branch(base, family, mc):
    """The trainer's own groups: temporal LoRA -> temporal branch, spatial LoRA -> spatial branch."""
    unet = base.unet
    before = mc.snapshot(unet)
    branches = _Branches(base, MODES["motioncrafter"], AdapterConfig(rank=2, spatial_rank=2), mc.tune_cfg())
    try:
        for p in unet.parameters():
            p.requires_grad_(False)
        for group in branches.groups.values():
            for p in group.values():
                p.requires_grad_(True)
        _assert_every_trainable_in_one_branch(unet, set(branches.groups[MOTION]), set(branches.groups[SPATIAL]))
    finally:
        branches.restore()
    mc.assert_same_state(unet, before)


def test_full_branch_trainable_is_temporal(fresh_base, family):
    base = fresh_base(family)
    unet = base.unet
    for p in branch_parameters(unet, "temporal").values():
        p.requires_grad_(True)
    by = trainable_by_branch(unet)
    assert by["spatial"] == [] and by["other"] == []
    assert set(by["temporal"]) == set(branch_parameters(unet, "temporal"))
    # and a non-branch parameter is reported as "other"
    unet.conv_in.weight.requires_grad_(True)
    assert trainable_by_branch(unet)["other"] == ["conv_in.weight"]
