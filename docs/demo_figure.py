"""The README's picture: one demo motion's reference clip above its generated videos, a row of frames each.

    python docs/demo_figure.py [--run runs/demo] [--motion 000_zigzag_red_circle] [--out docs/demo.png]

Run after `make demo`; reads the run's summary/, results/ and videos as they are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from motioncrafter.video import read_video

SCALE, LABEL_WIDTH, PAD = 3, 330, 4


def strip(frames: np.ndarray) -> Image.Image:
    """The frames side by side, scaled up without smoothing (they are 32x32)."""
    row = np.concatenate([np.pad(f, ((PAD, PAD), (PAD, PAD), (0, 0)), constant_values=255) for f in frames], axis=1)
    image = Image.fromarray(row)
    return image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)


def figure(run: Path, motion_id: str) -> Image.Image:
    results = pd.read_parquet(run / "results")
    results = results[results.motion_id == motion_id].sort_values(["prompt", "seed"])
    reference = iio.imread(run / "videos" / motion_id / "reference.gif")[..., :3]
    summary = pd.read_parquet(run / "summary").set_index("motion_id")
    rows = [(f"reference: {summary.prompt[motion_id]}", strip(reference))]
    rows += [(f"{r.prompt} (seed {r.seed}; motion fidelity {r.motion_fidelity:.2f})", strip(read_video(r.video_uri)))
             for r in results.itertuples()]
    width = LABEL_WIDTH + max(s.width for _, s in rows)
    canvas = Image.new("RGB", (width, sum(s.height for _, s in rows)), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for label, image in rows:
        canvas.paste(image, (LABEL_WIDTH, y))
        draw.text((8, y + image.height // 2 - 6), label, fill="black")
        y += image.height
    return canvas


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--motion", default="000_zigzag_red_circle")
    p.add_argument("--out", default="docs/demo.png")
    args = p.parse_args()
    figure(Path(args.run), args.motion).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
