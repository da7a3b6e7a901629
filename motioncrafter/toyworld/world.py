"""MovingShapes: short clips of one coloured shape moving along a known path.

Everything a clip is made of is named in its caption ("a red circle moves in a
zigzag on a black background") and its exact per-frame trajectory is returned
with it, so generated videos can be scored against ground truth from pixels
alone (see `motioncrafter.metrics`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


# Saturated object colours, far from each other and from every background, so a
# pixel's nearest palette entry is unambiguous even after a lossy codec.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 245),
    "yellow": (240, 225, 30),
    "purple": (170, 40, 220),
    "cyan": (30, 220, 230),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (8, 8, 8),
    "gray": (110, 110, 110),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")

# motion name -> caption phrase. The first six are linear (a direction), the
# rest are paths the base model never sees in pretraining (HELD_OUT_MOTIONS):
# they are what one-shot customization has to teach.
MOTIONS: dict[str, str] = {
    "left_to_right": "moves left to right",
    "right_to_left": "moves right to left",
    "upward": "moves upward",
    "downward": "moves downward",
    "diagonal_down": "moves diagonally down",
    "diagonal_up": "moves diagonally up",
    "zigzag": "moves in a zigzag",
    "circle": "moves in a circle",
    "bounce": "bounces",
    "spiral": "moves in a spiral",
    "grow": "grows",
}
LINEAR_MOTIONS = ("left_to_right", "right_to_left", "upward", "downward", "diagonal_down", "diagonal_up")
HELD_OUT_MOTIONS = ("zigzag", "circle", "bounce", "spiral", "grow")
HELD_IN_MOTIONS = tuple(m for m in MOTIONS if m not in HELD_OUT_MOTIONS)

# Unit direction (x right, y down) of each linear motion, for direction accuracy.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left_to_right": (1.0, 0.0),
    "right_to_left": (-1.0, 0.0),
    "upward": (0.0, -1.0),
    "downward": (0.0, 1.0),
    "diagonal_down": (math.sqrt(0.5), math.sqrt(0.5)),
    "diagonal_up": (math.sqrt(0.5), -math.sqrt(0.5)),
}


@dataclass(frozen=True)
class WorldConfig:
    """Clip geometry of the world (the shipped base was pretrained on the defaults; they train fast on a 2-core CPU)."""

    resolution: int = 32  # frame height and width in pixels
    num_frames: int = 8  # frames per clip
    radius: float = 0.17  # object radius, fraction of the frame
    travel: float = 0.5  # distance a linear motion covers, fraction of the frame
    jitter: float = 0.08  # max start offset, fraction of the frame
    supersample: int = 4  # anti-aliasing factor of the rasterizer

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.num_frames < 2:
            raise ValueError(f"WorldConfig: resolution must be >= 8 and num_frames >= 2, got {self.resolution}, {self.num_frames}")


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one clip."""

    colour: str
    shape: str
    background: str
    motion: str
    offset: tuple[float, float] = (0.0, 0.0)  # start jitter, fraction of the frame

    def __post_init__(self) -> None:
        for value, allowed, name in (
            (self.colour, COLOURS, "colour"),
            (self.shape, SHAPES, "shape"),
            (self.background, BACKGROUNDS, "background"),
            (self.motion, MOTIONS, "motion"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(allowed)}")

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.motion, self.background)


def caption(colour: str, shape: str, motion: str, background: str) -> str:
    return f"a {colour} {shape} {MOTIONS[motion]} on a {background} background"


@dataclass
class Clip:
    spec: ClipSpec
    frames: np.ndarray  # (T, H, W, 3) uint8
    trajectory: np.ndarray  # (T, 2) object centre in pixels, (x, y)
    scale: np.ndarray  # (T,) object radius in pixels

    @property
    def caption(self) -> str:
        return self.spec.caption


def path(motion: str, t: np.ndarray, cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object centre (x, y) and radius, in fractions of the frame, at times t in [0, 1]."""
    half = cfg.travel / 2
    r = np.full_like(t, cfg.radius)
    if motion in DIRECTIONS:
        dx, dy = DIRECTIONS[motion]
        # diagonals cover the same distance along each axis as straight moves
        sx = half * (np.sign(dx) if dx else 0.0)
        sy = half * (np.sign(dy) if dy else 0.0)
        return 0.5 - sx + 2 * sx * t, 0.5 - sy + 2 * sy * t, r
    if motion == "zigzag":
        tri = 1 - np.abs(((t * 2) % 1) * 2 - 1)  # two teeth
        return 0.5 - half + 2 * half * t, 0.5 + 0.3 * (tri - 0.5), r
    if motion == "circle":
        a = 2 * np.pi * t
        return 0.5 + 0.25 * np.cos(a), 0.5 + 0.25 * np.sin(a), r
    if motion == "bounce":
        return 0.5 - half + 2 * half * t, 0.75 - 0.5 * np.abs(np.sin(2 * np.pi * t)), r
    if motion == "spiral":
        a = 3 * np.pi * t
        rad = 0.05 + 0.25 * t
        return 0.5 + rad * np.cos(a), 0.5 + rad * np.sin(a), r
    if motion == "grow":
        return np.full_like(t, 0.5), np.full_like(t, 0.5), cfg.radius * (0.5 + 0.9 * t)
    raise ValueError(f"unknown motion {motion!r}")


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean mask of a shape centred at (cx, cy) with radius r, all in pixels."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = r * 0.85  # same area as the circle, roughly
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    # upward triangle inscribed in a circle of radius 1.15 r
    R = r * 1.15
    top, bottom = -R, R * 0.5
    half_width = (dy - top) / (bottom - top) * (R * math.sqrt(3) / 2)
    return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)


def render(spec: ClipSpec, cfg: WorldConfig = WorldConfig()) -> Clip:
    """Rasterize one clip (anti-aliased by supersampling)."""
    n, size, ss = cfg.num_frames, cfg.resolution, cfg.supersample
    t = np.linspace(0.0, 1.0, n)
    x, y, r = path(spec.motion, t, cfg)
    x, y = x + spec.offset[0], y + spec.offset[1]
    bg = np.array(BACKGROUNDS[spec.background], np.float32)
    fg = np.array(COLOURS[spec.colour], np.float32)
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        m = shape_mask(spec.shape, x[i] * size * ss, y[i] * size * ss, r[i] * size * ss, size * ss)
        cover = m.reshape(size, ss, size, ss).mean(axis=(1, 3))[..., None]
        frames[i] = np.round(bg * (1 - cover) + fg * cover).astype(np.uint8)
    return Clip(spec, frames, np.stack([x, y], 1) * size, r * size)


def sample_specs(
    count: int,
    seed: int,
    motions: tuple[str, ...] = HELD_IN_MOTIONS,
    cfg: WorldConfig = WorldConfig(),
) -> list[ClipSpec]:
    """`count` random clip specs drawn uniformly over the world, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    return [
        ClipSpec(
            colour=colours[rng.integers(len(colours))],
            shape=SHAPES[rng.integers(len(SHAPES))],
            background=backgrounds[rng.integers(len(backgrounds))],
            motion=motions[rng.integers(len(motions))],
            offset=(float(rng.uniform(-cfg.jitter, cfg.jitter)), float(rng.uniform(-cfg.jitter, cfg.jitter))),
        )
        for _ in range(count)
    ]


def write_clips(specs: list[ClipSpec], out_dir: str | Path, cfg: WorldConfig = WorldConfig(), fps: int = 8) -> Path:
    """Write each clip as MP4 plus a `manifest.jsonl` naming them (relative URIs)."""
    from motioncrafter.video import write_mp4

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, spec in enumerate(specs):
        clip = render(spec, cfg)
        motion_id = f"{i:03d}_{spec.motion}_{spec.colour}_{spec.shape}"
        write_mp4(clip.frames, out / f"{motion_id}.mp4", fps=fps)
        rows.append(
            {
                "motion_id": motion_id,
                "video_uri": f"{motion_id}.mp4",
                "prompt": spec.caption,
                "subject": f"{spec.colour} {spec.shape}",
                "toyworld": {**spec.__dict__, "offset": list(spec.offset), "trajectory": clip.trajectory.round(3).tolist()},
            }
        )
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def enhance_vocabulary() -> dict:
    """What appearance enhancement swaps in on a MovingShapes base: the world's subjects and scenes."""
    return {"subjects": [f"a {c} {s}" for c in COLOURS for s in SHAPES], "scenes": [f"on a {b} background" for b in BACKGROUNDS]}
