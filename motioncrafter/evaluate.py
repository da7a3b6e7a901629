"""Score generated videos against their reference clip: one video, then one motion.

Ground-truth MovingShapes metrics apply when both the video's prompt and the
reference's prompt are MovingShapes captions (their colour / shape /
background / motion words can be read back); optical-flow and frame-difference
metrics apply to any video; CLIP metrics when a local CLIP model is configured.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from functools import lru_cache

import numpy as np

from motioncrafter.config import MetricsConfig
from motioncrafter.metrics import appearance_scores, diversity, flow_fidelity, motion_fidelity, observe, temporal_consistency
from motioncrafter.toyworld.world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES


@lru_cache(maxsize=1)
def _caption_pattern() -> re.Pattern:
    alt = lambda words: "|".join(sorted(map(re.escape, words), key=len, reverse=True))  # noqa: E731
    return re.compile(
        rf"^an? (?P<colour>{alt(COLOURS)}) (?P<shape>{alt(SHAPES)})(?: (?P<motion>{alt(MOTIONS.values())}))?"
        rf".*? on an? (?P<background>{alt(BACKGROUNDS)}) background\.?$"
    )


def parse_caption(prompt: str) -> dict | None:
    """The MovingShapes attributes a prompt names, or None if it is not a MovingShapes caption."""
    match = _caption_pattern().match(prompt.strip().lower())
    if not match:
        return None
    found = match.groupdict()
    phrase = found.pop("motion")
    found["motion"] = next((m for m, p in MOTIONS.items() if p == phrase), None)
    return found


def score_video(
    video: np.ndarray,
    prompt: str,
    reference: np.ndarray,
    reference_prompt: str,
    cfg: MetricsConfig = MetricsConfig(),
    clip_scorer=None,
    reference_attributes: dict | None = None,
) -> dict[str, float]:
    """Metrics of one generated video (uint8 (T, H, W, 3)) against the reference clip it imitates.

    The reference's colour / shape / background (for leakage) are read from its caption, or
    given as `reference_attributes` when its caption leaves them out ("a circle moves in a zigzag")."""
    row = {
        "flow_fidelity": flow_fidelity(video, reference, cfg.flow_size),
        "flow_fidelity_invariant": flow_fidelity(video, reference, cfg.flow_size, invariant=True),
        "temporal_consistency": temporal_consistency(video, cfg.flow_size),
    }
    asked, shown = parse_caption(prompt), reference_attributes or parse_caption(reference_prompt)
    if asked and shown:
        generated = observe(video)
        keys = ("colour", "shape", "background")
        row["motion_fidelity"] = motion_fidelity(generated, observe(reference))
        row["object_found"] = float(generated.found)
        row |= appearance_scores(generated, {k: asked[k] for k in keys}, {k: shown[k] for k in keys})
    if clip_scorer is not None:
        row["clip_text_alignment"] = clip_scorer.text_alignment(video, prompt)
        row["clip_frame_consistency"] = clip_scorer.frame_consistency(video)
    return row


def summarize(rows: list[dict], prompts: list[str], videos: list[np.ndarray]) -> dict[str, float]:
    """Per-motion aggregates: the NaN-aware mean of every per-video metric, plus diversity
    (mean pairwise difference between seeds of the same prompt, averaged over prompts)."""
    out: dict[str, float] = {}
    for key in sorted({k for r in rows for k in r}):
        values = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    by_prompt: dict[str, list[np.ndarray]] = defaultdict(list)
    for prompt, video in zip(prompts, videos):
        by_prompt[prompt].append(video)
    scores = [d for d in (diversity(v) for v in by_prompt.values()) if not math.isnan(d)]
    out["diversity"] = float(np.mean(scores)) if scores else float("nan")
    return out
