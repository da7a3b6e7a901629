"""Metrics: ground truth on MovingShapes (`shapes`), optical flow on any video
(`flow`), CLIP scores from a local model folder (`clip`).

`ClipScorer` is imported on first use, so importing this package does not pull
in torch and transformers.
"""

from motioncrafter.metrics.flow import flow_fidelity, flow_fields, temporal_consistency
from motioncrafter.metrics.shapes import (
    Observation,
    appearance_scores,
    diversity,
    direction,
    motion_fidelity,
    object_mask,
    observe,
)

__all__ = [
    "ClipScorer",
    "Observation",
    "appearance_scores",
    "direction",
    "diversity",
    "flow_fidelity",
    "flow_fields",
    "motion_fidelity",
    "object_mask",
    "observe",
    "temporal_consistency",
]


def __getattr__(name: str):
    if name == "ClipScorer":
        from motioncrafter.metrics.clip import ClipScorer

        return ClipScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
