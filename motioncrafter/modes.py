"""Tuning modes as data: what each one trains and which loss terms it uses.

  mode            trains            temporal loss      lr     LoRA rank   spatial path   appearance norm.
  motioncrafter   temporal branch   plain + debiased   5e-3   16          yes            yes (lambda 0 by default)
  temporal_only   temporal branch   plain              3e-3   8           no             no
  motiondirector  temporal branch   plain + debiased   3e-3   8           yes (off 20%)  no
  full_finetune   the whole UNet    plain              3e-3   -           no             no

The temporal loss, learning rate and rank are each mode's recipe, chosen on the dev clips
(benchmarks/results/ablation_dev.md); `tune.temporal_loss`, `tune.lr` and `adapter.rank` override them.

MotionDirector's published recipe (its train.py): the temporal loss is the plain
denoising loss plus the appearance-debiased one, and on 20% of the steps the spatial
LoRA is masked and its loss skipped (`spatial_skip`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    trains_unet: bool = False  # the whole UNet, not just the temporal branch
    spatial_path: bool = False  # a spatial LoRA tuned on single frames, discarded after tuning
    temporal_loss: str = "plain"  # plain | debiased (plain + MotionDirector's) | centered; see `losses`
    spatial_skip: float = 0.0  # share of steps on which the spatial LoRA is masked and not tuned
    appearance_norm: bool = False  # appearance normalization against the frozen base
    lr: float = 3e-3  # of the tuned weights, unless `tune.lr` sets one
    rank: int = 8  # of the motion adapter's LoRA, unless `adapter.rank` sets one


TEMPORAL_LOSSES = ("plain", "debiased", "centered")

MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("motioncrafter", spatial_path=True, appearance_norm=True, temporal_loss="debiased", lr=5e-3, rank=16),
        Mode("temporal_only"),
        Mode("motiondirector", spatial_path=True, temporal_loss="debiased", spatial_skip=0.2),
        Mode("full_finetune", trains_unet=True),
    )
}
