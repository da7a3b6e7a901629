"""Ground-truth metrics for MovingShapes videos, computed from pixels alone.

A MovingShapes frame is one object on a flat background, so the object is the
set of pixels far from the background colour (the median of the frame border).
From that mask come the centroid trajectory, the colour class (nearest palette
colour) and the shape class (how much of its bounding box the object fills).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from motioncrafter.toyworld.world import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, shape_mask

_PALETTE = np.array(list(COLOURS.values()), np.float32)
_BG_PALETTE = np.array(list(BACKGROUNDS.values()), np.float32)
# area / radius^2 of each shape as the rasterizer draws it (see world.shape_mask)
_AREA_PER_RADIUS2 = {"circle": math.pi, "square": 4 * 0.85**2, "triangle": 0.75 * math.sqrt(3) * 1.15**2}


@dataclass
class Observation:
    """What can be read off one generated video."""

    trajectory: np.ndarray  # (T, 2) centroid (x, y) in pixels, NaN where no object
    size: np.ndarray  # (T,) equivalent radius sqrt(area / pi) in pixels
    colour: str | None  # nearest palette colour of the object, None if no object
    shape: str | None
    background: str

    @property
    def found(self) -> bool:
        return self.colour is not None


def _background_rgb(frame: np.ndarray) -> np.ndarray:
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def object_mask(frames: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """(T, H, W) bool: pixels whose colour is more than `threshold` from the background."""
    masks = []
    for frame in frames:
        dist = np.linalg.norm(frame.astype(np.float32) - _background_rgb(frame), axis=-1)
        masks.append(dist > threshold)
    return np.stack(masks)


def _shape_of(mask: np.ndarray) -> str | None:
    """The shape whose template, centred on the object with the same area, overlaps it best (IoU).

    Template matching stays right on blurred or slightly deformed objects (generated
    frames, codec output), where a bounding-box fill ratio does not.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) < 4:
        return None
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    best, best_iou = None, -1.0
    for shape in SHAPES:
        radius = math.sqrt(len(xs) / _AREA_PER_RADIUS2[shape])
        template = shape_mask(shape, cx, cy, radius, mask.shape[0])
        iou = (template & mask).sum() / max(1, (template | mask).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def observe(frames: np.ndarray, min_pixels: int = 4) -> Observation:
    """Read the object's trajectory, size, colour and shape from (T, H, W, 3) uint8 frames."""
    masks = object_mask(frames)
    area = masks.sum(axis=(1, 2)).astype(np.float32)
    traj = np.full((len(frames), 2), np.nan, np.float32)
    colours, shapes = [], []
    for i, (frame, mask) in enumerate(zip(frames, masks)):
        if area[i] < min_pixels:
            continue
        ys, xs = np.nonzero(mask)
        traj[i] = xs.mean() + 0.5, ys.mean() + 0.5
        rgb = np.median(frame[mask].astype(np.float32), axis=0)
        colours.append(int(np.argmin(np.linalg.norm(_PALETTE - rgb, axis=1))))
        shapes.append(_shape_of(mask))
    bg = np.median(np.stack([_background_rgb(f) for f in frames]), axis=0)
    background = list(BACKGROUNDS)[int(np.argmin(np.linalg.norm(_BG_PALETTE - bg, axis=1)))]
    colour = list(COLOURS)[max(set(colours), key=colours.count)] if colours else None
    shapes = [s for s in shapes if s]
    shape = max(set(shapes), key=shapes.count) if shapes else None
    return Observation(traj, np.sqrt(area / math.pi), colour, shape, background)


def _displacements(obs: Observation) -> np.ndarray | None:
    """(T, 3): position and size relative to the first frame; gaps filled linearly."""
    feats = np.concatenate([obs.trajectory, obs.size[:, None]], axis=1)
    ok = ~np.isnan(feats[:, 0])
    if ok.sum() < 2:
        return None
    t = np.arange(len(feats))
    feats = np.stack([np.interp(t, t[ok], feats[ok, k]) for k in range(3)], axis=1)
    return feats - feats[0]


def motion_fidelity(generated: Observation, reference: Observation) -> float:
    """Similarity of two object motions, in [0, 1], invariant to where the object starts.

    With D the (T, 3) displacement of centre and size from frame 0:
        fidelity = 1 - ||D_gen - D_ref|| / (||D_gen|| + ||D_ref||)
    1 for the same motion, 1 - 1/sqrt(2) ~ 0.29 for a motion at right angles of
    equal extent, 0 for the reversed motion or a static object against a moving
    reference (and for a video with no object). Two static videos score 1.
    """
    dg, dr = _displacements(generated), _displacements(reference)
    if dg is None or dr is None:
        return 0.0
    n = min(len(dg), len(dr))
    dg, dr = dg[:n], dr[:n]
    denom = np.linalg.norm(dg) + np.linalg.norm(dr)
    if denom < 1e-6:
        return 1.0
    return float(np.clip(1 - np.linalg.norm(dg - dr) / denom, 0.0, 1.0))


def direction(obs: Observation, min_travel: float = 2.0) -> str | None:
    """The linear motion whose direction is nearest the net displacement, None if it barely moved."""
    d = _displacements(obs)
    if d is None or np.linalg.norm(d[-1, :2]) < min_travel:
        return None
    v = d[-1, :2] / np.linalg.norm(d[-1, :2])
    return max(DIRECTIONS, key=lambda m: float(np.dot(v, DIRECTIONS[m])))


def appearance_scores(generated: Observation, asked: dict, reference: dict | None = None) -> dict:
    """Appearance accuracy (does the video show what the prompt asks) and leakage.

    `asked` and `reference` map "colour" / "shape" / "background" to names.
    Leakage counts, among attributes where the prompt asks for something other
    than the reference clip shows, how often the video shows the reference's value.
    Returns per-attribute 0/1 scores and the means; leakage is NaN when no
    attribute differs from the reference.
    """
    seen = {"colour": generated.colour, "shape": generated.shape, "background": generated.background}
    out = {f"{k}_acc": float(seen[k] == v) for k, v in asked.items()}
    out["appearance_acc"] = float(np.mean(list(out.values())))
    if reference is not None:
        changed = [k for k in asked if asked[k] != reference.get(k)]
        leaks = [float(seen[k] == reference[k]) for k in changed]
        out["leakage"] = float(np.mean(leaks)) if leaks else float("nan")
    return out


def diversity(videos: list[np.ndarray]) -> float:
    """Mean pairwise mean-absolute pixel difference (0..1) between samples of one prompt."""
    if len(videos) < 2:
        return float("nan")
    return float(
        np.mean([np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255 for a, b in combinations(videos, 2)])
    )
