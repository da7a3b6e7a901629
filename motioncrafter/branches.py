"""Split a video UNet into its temporal and spatial branches, by module type.

Temporal branch: the modules that mix information across frames -
  `TransformerTemporalModel` (ModelScope / ZeroScope temporal attention),
  `TemporalConvLayer` (their temporal convolutions) and
  `AnimateDiffTransformer3D` (AnimateDiff motion modules).
Spatial branch: per-frame attention, `Transformer2DModel` (self-attention over
  the pixels of one frame and cross-attention to the prompt). That is where a
  clip's appearance is easiest to memorize, so it gets its own path. ResNet
  blocks, embeddings and conv_in/out belong to neither: they stay frozen in every
  mode but `full_finetune`, unless the spatial path also takes the ResNet blocks
  (`adapter.spatial_targets`: they too work on one frame at a time).

Selecting by type rather than by name lists keeps this correct for any config of
either family (tested on tiny random configs of both).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

BRANCHES = ("temporal", "spatial")


def _branch_types() -> dict[str, tuple[type, ...]]:
    """The branches by module type, and "resnet": the ResNet blocks, in neither branch."""
    from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return {
        "temporal": (TransformerTemporalModel, TemporalConvLayer, AnimateDiffTransformer3D),
        "spatial": (Transformer2DModel,),
        "resnet": (ResnetBlock2D,),
    }


def branch_roots(unet: nn.Module, branch: str) -> list[str]:
    """Names of the outermost modules of `branch` (a module inside another root is not repeated)."""
    kinds = _branch_types()
    if branch not in kinds:
        raise ValueError(f"unknown branch {branch!r}; expected one of {tuple(kinds)}")
    types = kinds[branch]
    roots: list[str] = []
    for name, module in unet.named_modules():
        if isinstance(module, types) and not any(name.startswith(r + ".") for r in roots):
            roots.append(name)
    return roots


# attention projections by their diffusers names (`Attention.to_q` ... `to_out.0`)
_ATTENTION_LAYERS = {"qk": (".to_q", ".to_k"), "qkvo": (".to_q", ".to_k", ".to_v", ".to_out.0")}


def lora_targets(unet: nn.Module, branch: str, layers: str = "all") -> list[str]:
    """Full names of the Linear / Conv layers inside `branch`: what LoRA is attached to.

    `layers`: "all" of them, or only the attention projections: "qkvo" (query, key,
    value, output) or "qk" (query and key: where attention looks, which is the motion).

    Temporal convolutions (Conv3d) are included: on ModelScope-style UNets they
    carry half of the temporal modelling. Left out: AnimateDiff motion modules'
    `proj_in` / `proj_out`, which diffusers calls as `proj_in(input=...)`, a
    keyword peft's LoRA layers do not take.
    """
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    roots = branch_roots(unet, branch)
    layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    keyword_called = {
        f"{name}.{child}"
        for name, module in unet.named_modules()
        if isinstance(module, AnimateDiffTransformer3D)
        for child in ("proj_in", "proj_out")
    }
    if layers != "all" and layers not in _ATTENTION_LAYERS:
        raise ValueError(f"unknown LoRA layer set {layers!r}; expected all, qkvo or qk")
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, layer_types)
        and any(name.startswith(r + ".") for r in roots)
        and name not in keyword_called
        and (layers == "all" or name.endswith(_ATTENTION_LAYERS[layers]))
    ]


def branch_parameters(unet: nn.Module, branch: str) -> dict[str, nn.Parameter]:
    """Every parameter of `branch`, by full name (used for full-branch tuning)."""
    roots = branch_roots(unet, branch)
    return {n: p for n, p in unet.named_parameters() if any(n.startswith(r + ".") for r in roots)}


@dataclass
class BranchCounts:
    temporal: int
    spatial: int
    other: int

    def __str__(self) -> str:
        total = self.temporal + self.spatial + self.other
        return (
            f"temporal {self.temporal:,} ({self.temporal / total:.1%}), spatial {self.spatial:,} "
            f"({self.spatial / total:.1%}), neither {self.other:,} ({self.other / total:.1%})"
        )


def count_parameters(unet: nn.Module) -> BranchCounts:
    """Parameter counts of the temporal branch, the spatial branch and the rest."""
    temporal = set(branch_parameters(unet, "temporal"))
    spatial = set(branch_parameters(unet, "spatial"))
    overlap = temporal & spatial
    if overlap:  # a module type in both lists would make "exactly one branch" false
        raise AssertionError(f"parameters in both branches: {sorted(overlap)[:5]}")
    sizes = {n: p.numel() for n, p in unet.named_parameters()}
    t = sum(sizes[n] for n in temporal)
    s = sum(sizes[n] for n in spatial)
    return BranchCounts(t, s, sum(sizes.values()) - t - s)


def trainable_by_branch(module: nn.Module) -> dict[str, list[str]]:
    """Names of parameters with requires_grad, grouped by the branch whose root contains them."""
    roots = {b: branch_roots(module, b) for b in BRANCHES}
    out: dict[str, list[str]] = {"temporal": [], "spatial": [], "other": []}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        owner = [b for b in BRANCHES if any(name.startswith(r + ".") for r in roots[b])]
        out[owner[0] if len(owner) == 1 else "other"].append(name)
    return out
