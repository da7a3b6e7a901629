"""Quality of the shipped MovingShapes base, with fixed prompts and seeds.

    python benchmarks/base_quality.py [--base DIR] [--out benchmarks/results/base.md]

Held-in linear motions: colour / shape / background accuracy of the generated
object and direction accuracy of its motion. Held-out motions (never seen in
pretraining): motion fidelity against the ground-truth clip of the same
caption, expected to be poor - that is what one-shot customization is for.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from motioncrafter.base import load_base
from motioncrafter.config import RenderConfig
from motioncrafter.metrics import direction, motion_fidelity, observe
from motioncrafter.render import render
from motioncrafter.toyworld import BASE_DIR
from motioncrafter.toyworld.world import HELD_IN_MOTIONS, HELD_OUT_MOTIONS, LINEAR_MOTIONS, render as render_clip, sample_specs


def score(base, specs, seeds, cfg) -> list[dict]:
    prompts = [s.caption for s in specs for _ in seeds]
    videos = render(base, prompts, [seed for _ in specs for seed in seeds], cfg)
    rows = []
    for i, video in enumerate(videos):
        spec = specs[i // len(seeds)]
        obs = observe(video)
        rows.append(
            {
                "motion": spec.motion,
                "colour": obs.colour == spec.colour,
                "shape": obs.shape == spec.shape,
                "background": obs.background == spec.background,
                "direction": direction(obs) == spec.motion if spec.motion in LINEAR_MOTIONS else None,
                "motion_fidelity": motion_fidelity(obs, observe(render_clip(spec).frames)),
            }
        )
    return rows


def mean(rows, key, motions) -> float:
    values = [float(r[key]) for r in rows if r["motion"] in motions and r[key] is not None]
    return float(np.mean(values)) if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(BASE_DIR))
    p.add_argument("--out", default="benchmarks/results/base.md")
    p.add_argument("--prompts", type=int, default=48, help="held-in prompts (held-out: half as many)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=25)
    args = p.parse_args()
    torch.manual_seed(0)
    base = load_base(args.base)
    cfg = RenderConfig(num_steps=args.steps, guidance_scale=4.0, max_batch=16)
    started = time.time()
    held_in = score(base, sample_specs(args.prompts, seed=2024, motions=HELD_IN_MOTIONS), args.seeds, cfg)
    held_out = score(base, sample_specs(args.prompts // 2, seed=2025, motions=HELD_OUT_MOTIONS), args.seeds, cfg)
    seconds = time.time() - started
    meta = json.loads((Path(args.base) / "toyworld.json").read_text())
    table = [
        ("colour accuracy (held-in)", mean(held_in, "colour", HELD_IN_MOTIONS), ">= 0.8"),
        ("shape accuracy (held-in)", mean(held_in, "shape", HELD_IN_MOTIONS), ""),
        ("background accuracy (held-in)", mean(held_in, "background", HELD_IN_MOTIONS), ""),
        ("direction accuracy (held-in linear)", mean(held_in, "direction", LINEAR_MOTIONS), ">= 0.7"),
        ("motion fidelity (held-in)", mean(held_in, "motion_fidelity", HELD_IN_MOTIONS), ""),
        ("motion fidelity (held-out)", mean(held_out, "motion_fidelity", HELD_OUT_MOTIONS), "expected poor"),
    ]
    per_motion = [(m, mean(held_out, "motion_fidelity", (m,))) for m in HELD_OUT_MOTIONS]
    lines = [
        "# MovingShapes base quality",
        "",
        f"Base `{args.base}` (fingerprint `{meta['fingerprint']}`, pretrained {meta['pretrain_minutes']} min on a 2-core CPU, "
        f"UNet {meta['parameters']['unet']:,} / VAE {meta['parameters']['vae']:,} / text encoder "
        f"{meta['parameters']['text_encoder']:,} parameters).",
        f"{len(held_in)} held-in and {len(held_out)} held-out videos ({args.prompts} + {args.prompts // 2} prompts x seeds "
        f"{args.seeds}), DDIM {args.steps} steps, guidance 4; {seconds:.0f} s to render and score.",
        "Command: `python benchmarks/base_quality.py`",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        *[f"| {name} | {value:.3f} | {target} |" for name, value, target in table],
        "",
        "Held-out motion fidelity per motion: " + ", ".join(f"{m} {v:.3f}" for m, v in per_motion),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
