"""Write manifests/demo.jsonl and its clips (manifests/demo/*.mp4): MovingShapes reference clips.

    python manifests/make_demo.py

Five clips show motions the shipped base never saw in pretraining (zigzag, circle,
bounce, spiral, grow), one a motion it knows (left to right). Each row's
eval_prompts ask for the same motion with another colour, shape or background,
so the run measures motion fidelity and appearance leakage with ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

from motioncrafter.toyworld.world import ClipSpec, caption, write_clips

HERE = Path(__file__).parent
SPECS = [
    # (reference clip, appearances to render it with)
    (ClipSpec("red", "circle", "black", "zigzag"), [("blue", "square", "white"), ("yellow", "triangle", "gray"), ("green", "circle", "black")]),
    (ClipSpec("blue", "square", "white", "circle"), [("red", "circle", "black"), ("cyan", "triangle", "gray"), ("blue", "square", "black")]),
    (ClipSpec("yellow", "triangle", "gray", "bounce"), [("purple", "circle", "white"), ("green", "square", "black")]),
    (ClipSpec("green", "circle", "black", "spiral"), [("red", "square", "gray"), ("yellow", "circle", "white")]),
    (ClipSpec("purple", "square", "gray", "grow"), [("cyan", "circle", "black"), ("red", "triangle", "white")]),
    (ClipSpec("cyan", "triangle", "black", "left_to_right"), [("yellow", "square", "white"), ("purple", "circle", "gray")]),
]


def main() -> None:
    specs = [spec for spec, _ in SPECS]
    rows = [json.loads(line) for line in write_clips(specs, HERE / "demo").read_text().splitlines()]
    (HERE / "demo" / "manifest.jsonl").unlink()  # demo.jsonl below is the manifest
    with open(HERE / "demo.jsonl", "w") as f:
        for row, (spec, looks) in zip(rows, SPECS):
            row["video_uri"] = f"demo/{row['video_uri']}"  # relative to this manifest
            row["eval_prompts"] = [caption(c, s, spec.motion, b) for c, s, b in looks]
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
