"""Weight-free metrics for any video, from OpenCV Farneback optical flow.

Unlike `motioncrafter.metrics.shapes`, nothing here assumes one object on a flat
background, so these apply to real base models' videos too. Flow is computed on
grayscale frames resized to `size` x `size` (non-square videos are squashed), so
flow vectors are in pixels of that grid. An object whose luminance is close to
its background's (e.g. MovingShapes' purple on gray) gives weak flow: the
metrics below use cosine similarities, which ignore the overall flow magnitude.
"""

from __future__ import annotations

import cv2
import numpy as np

# Below this RMS flow (pixels of the resized grid) a video counts as static.
_STILL = 1e-3


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    # area averaging when shrinking (no aliasing), bilinear when enlarging
    interp = cv2.INTER_AREA if max(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def flow_fields(frames: np.ndarray, size: int = 64) -> np.ndarray:
    """(T-1, size, size, 2) float32 Farneback flow (dx, dy) from each frame to the next.

    `frames` is (T, H, W, 3) uint8 RGB. Flow at pixel p of pair t says where p's
    content of frame t lies in frame t+1: frame_{t+1}(p + flow) ~ frame_t(p).
    """
    if len(frames) < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {len(frames)}")
    gray = [_resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size) for f in frames]
    # 3 pyramid levels with a 15-pixel window follow motions of several pixels per frame at size 64
    return np.stack(
        [cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0) for a, b in zip(gray[:-1], gray[1:])]
    )


def _still(x: np.ndarray) -> bool:
    return float(np.sqrt(np.mean(x * x))) < _STILL


def _motion_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two flattened flows clipped to [0, 1]; 1 if both are static, 0 if only one is."""
    if _still(a) or _still(b):
        return float(_still(a) and _still(b))
    cos = float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))
    return min(1.0, max(0.0, cos))  # the upper clip only absorbs float rounding


def flow_fidelity(generated: np.ndarray, reference: np.ndarray, size: int = 64, invariant: bool = False) -> float:
    """Similarity in [0, 1] of the motion of two (T, H, W, 3) uint8 videos.

    With F the (T-1, size, size, 2) flow fields of each video, truncated to the
    first min(T_gen, T_ref) - 1 frame pairs (as `shapes.motion_fidelity` does):
        dense (default):  cos(F_gen, F_ref) clipped to [0, 1], F flattened over time, space and (dx, dy)
        invariant=True:   the same on the per-pair mean flow vectors (T-1, 2)
    One cosine over the whole video, so pairs with more motion weigh more and
    near-still pairs (whose flow direction is noise) hardly count.
    Both: 1 for the same video, 0 for the time-reversed one, 0 for a static video
    against a moving one, 1 for two static ones; speed is ignored (cosine).
    Dense: 0 for motion in other places, so a shifted copy scores lower.
    Invariant: ignores where the motion happens (a shifted copy still scores ~1),
    0 for a perpendicular translation, but sees only net translation: motions
    whose flow cancels out (growing vs shrinking, rotation about the centre)
    count as static.
    """
    n = min(len(generated), len(reference))
    fg, fr = flow_fields(generated[:n], size), flow_fields(reference[:n], size)
    if invariant:
        fg, fr = fg.mean(axis=(1, 2)), fr.mean(axis=(1, 2))
    return _motion_cosine(fg, fr)


def temporal_consistency(frames: np.ndarray, size: int = 64, warp: bool = False) -> float:
    """1 - mean absolute difference between consecutive frames / 255, in [0, 1].

    `frames` is (T, H, W, 3) uint8 with T >= 2.
    warp=False: raw frames, so any change counts, motion included: 1 for a
    static video, about 2/3 for uniform random noise.
    warp=True: frames resized to `size`, and each next frame is warped back onto
    the previous one along the Farneback flow first, so motion the flow explains
    is not penalised, only flicker and appearing/vanishing content.
    """
    diffs = _warped_differences(frames, size) if warp else np.abs(np.diff(frames.astype(np.float32), axis=0))
    return float(1.0 - diffs.mean() / 255.0)


def _warped_differences(frames: np.ndarray, size: int) -> np.ndarray:
    """|frame_t - frame_{t+1} sampled at p + flow_t(p)| at `size` x `size`, per pair."""
    rgb = [_resize(f, size).astype(np.float32) for f in frames]
    xs, ys = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    diffs = []
    for prev, nxt, flow in zip(rgb[:-1], rgb[1:], flow_fields(frames, size)):
        back = cv2.remap(nxt, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
        diffs.append(np.abs(back - prev))
    return np.stack(diffs)
