"""The ablation: MotionCrafter vs its baselines on MovingShapes, same clips, seeds and budget.

    python benchmarks/ablation.py                       # full: 8 clips x 4 prompts x 2 seeds
    python benchmarks/ablation.py --clips 2 --steps 60  # reduced

For every reference clip (5 of the 8 with motions held out of pretraining) each
mode tunes an adapter with the same step budget and seed, then renders the
clip's evaluation prompts (colour / shape / background changed, same motion
phrase) with the same seeds; the base without adapter renders them too. Each
mode runs in its own process, so its peak memory (max RSS) is its own.
Writes benchmarks/results/ablation.md and ablation.parquet.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

MODES = ("base", "motioncrafter", "temporal_only", "motiondirector", "full_finetune")
# (colour, shape, background, motion): 5 held-out motions first, then 3 held-in ones
REFERENCES = [
    ("red", "circle", "black", "zigzag"),
    ("blue", "square", "white", "circle"),
    ("green", "triangle", "gray", "bounce"),
    ("yellow", "circle", "black", "spiral"),
    ("purple", "square", "gray", "grow"),
    ("cyan", "triangle", "white", "left_to_right"),
    ("red", "square", "gray", "upward"),
    ("blue", "circle", "black", "diagonal_down"),
]


def eval_prompts(reference: tuple, count: int) -> list[str]:
    """Prompts that change colour, shape and/or background of the reference, keeping its motion."""
    from motioncrafter.toyworld.world import BACKGROUNDS, COLOURS, SHAPES, caption

    colour, shape, background, motion = reference
    other = lambda options, value, k: [o for o in options if o != value][k % (len(options) - 1)]  # noqa: E731
    variants = [
        (other(COLOURS, colour, 0), shape, background),
        (colour, other(SHAPES, shape, 0), other(BACKGROUNDS, background, 0)),
        (other(COLOURS, colour, 1), other(SHAPES, shape, 1), background),
        (other(COLOURS, colour, 2), other(SHAPES, shape, 0), other(BACKGROUNDS, background, 1)),
        (other(COLOURS, colour, 3), shape, other(BACKGROUNDS, background, 0)),
    ]
    return [caption(c, s, motion, b) for c, s, b in variants[:count]]


def run_mode(mode: str, args: argparse.Namespace) -> list[dict]:
    """Tune (unless `base`), render and score every reference clip; runs in its own process."""
    import torch

    from motioncrafter.adapters import attach, detach
    from motioncrafter.base import load_base
    from motioncrafter.config import Config
    from motioncrafter.evaluate import score_video
    from motioncrafter.render import render
    from motioncrafter.toyworld.world import HELD_OUT_MOTIONS, ClipSpec, render as render_clip
    from motioncrafter.trainer import tune_clip

    torch.set_num_threads(args.threads)
    cfg = Config()
    base = load_base(args.base)
    tune = replace(cfg.tune, mode=mode if mode != "base" else "motioncrafter", steps=args.steps, progress=False,
                   lambda_app=args.lambda_app, lr=args.lr)
    adapter_cfg = replace(cfg.adapter, rank=args.rank, alpha=float(args.rank))
    render_cfg = replace(cfg.render, num_steps=args.render_steps)
    rows = []
    for ref in REFERENCES[: args.clips]:
        clip = render_clip(ClipSpec(*ref))
        seconds, size = 0.0, 0
        if mode != "base":
            result = tune_clip(base, clip.frames, clip.caption, tune, adapter_cfg, cfg.enhance)
            seconds, size = result.seconds, result.adapter.nbytes()
            attach(base, result.adapter, "motion")
        prompts = eval_prompts(ref, args.prompts)
        pairs = [(p, s) for p in prompts for s in range(args.seeds)]
        videos = render(base, [p for p, _ in pairs], [s for _, s in pairs], render_cfg)
        if mode != "base":
            detach(base, "motion")
        for (prompt, seed), video in zip(pairs, videos):
            rows.append({
                "mode": mode, "reference": clip.caption, "motion": ref[3], "held_out": ref[3] in HELD_OUT_MOTIONS,
                "prompt": prompt, "seed": seed, "tune_seconds": seconds, "adapter_bytes": size,
                **score_video(video, prompt, clip.frames, clip.caption),
                "_video": video,
            })
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_rss_mb"] = rss_mb
    return rows


def _worker(mode, args, queue):
    queue.put(run_mode(mode, args))


def summarize(rows: list[dict]):
    import pandas as pd

    from motioncrafter.metrics import diversity

    df = pd.DataFrame([{k: v for k, v in r.items() if k != "_video"} for r in rows])
    table = []
    for mode in [m for m in MODES if m in set(df["mode"])]:
        d = df[df["mode"] == mode]
        held = d[d["held_out"]]
        divs = [
            diversity([r["_video"] for r in rows if r["mode"] == mode and r["prompt"] == p and r["reference"] == ref])
            for ref, p in d[["reference", "prompt"]].drop_duplicates().itertuples(index=False)
        ]
        per_clip = d.drop_duplicates("reference")
        table.append({
            "mode": mode,
            "motion fidelity (held-out)": held["motion_fidelity"].mean(),
            "motion fidelity (all)": d["motion_fidelity"].mean(),
            "flow fidelity (all)": d["flow_fidelity"].mean(),
            "appearance acc": d["appearance_acc"].mean(),
            "leakage": d["leakage"].mean(),
            "diversity": float(np.nanmean(divs)),
            "s / clip": per_clip["tune_seconds"].mean(),
            "adapter KB": per_clip["adapter_bytes"].mean() / 1024,
            "peak RSS MB": d["peak_rss_mb"].iloc[0],
        })
    return df, pd.DataFrame(table)


def markdown(table, args, wall: float) -> str:
    from motioncrafter.base import fingerprint_folder

    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join([
        "# Ablation on MovingShapes",
        "",
        f"{args.clips} reference clips ({min(args.clips, 5)} with held-out motions) x {args.prompts} evaluation prompts x "
        f"{args.seeds} seeds; every mode tunes {args.steps} steps (seed 0, lambda_app {args.lambda_app}, lr {args.lr}, "
        f"rank {args.rank}), renders with "
        f"DDIM {args.render_steps} steps, guidance 4. Wall time {wall / 60:.1f} min on this machine.",
        f"Base: fingerprint `{fingerprint_folder(args.base)}`.",
        f"Command: `python benchmarks/ablation.py --clips {args.clips} --prompts {args.prompts} --seeds {args.seeds} "
        f"--steps {args.steps} --lambda-app {args.lambda_app} --lr {args.lr} --rank {args.rank}`",
        "",
        *lines,
        "",
        "motion fidelity: trajectory similarity to the reference in [0, 1] (1 = same motion, 0 = reversed or static); "
        "appearance acc: colour / shape / background as the prompt asks; leakage: how often an attribute the prompt "
        "changed shows the reference's value instead; diversity: mean pixel difference between seeds of one prompt; "
        "peak RSS: the mode's own process (base + tuning + rendering).",
        "",
    ])


def parse_args(argv=None) -> argparse.Namespace:
    from motioncrafter.toyworld import BASE_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(BASE_DIR))
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--render-steps", type=int, default=25)
    p.add_argument("--lambda-app", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3, help="tune.lr: learning rate of the motion adapter")
    p.add_argument("--rank", type=int, default=8, help="adapter.rank (alpha = rank, scale 1)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/ablation.md")
    return p.parse_args(argv)


def run(args: argparse.Namespace):
    ctx = mp.get_context("spawn")
    rows = []
    for mode in args.modes:
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(mode, args, queue))
        proc.start()
        rows += queue.get()
        proc.join()
        print(f"{mode}: done", flush=True)
    return summarize(rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.time()
    df, table = run(args)
    text = markdown(table, args, time.time() - started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    df.to_parquet(out.with_suffix(".parquet"))
    print(text)


if __name__ == "__main__":
    main()
