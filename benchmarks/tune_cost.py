"""Seconds per tuned clip of each mode on the shipped MovingShapes base, side by side in one process.

    python benchmarks/tune_cost.py [--variants motioncrafter temporal_only motiondirector full_finetune]
                                   [--steps 200] [--rounds 3] [--threads 1] [--out benchmarks/results/tune_cost.md]

A round tunes the first dev clip of the ablation (vague caption) once per variant, a `--steps` budget
each (the motion adapter's steps; a spatial warm-up's come on top, as a run pays them), the variants
in turn; a warm-up round first is not counted. Interleaving the rounds lets a slow spell of a shared
machine hit every variant alike, and the ratio to `temporal_only` is taken round by round before its
median: what the ablation's seconds per clip measure over a 25-minute sweep, in about six minutes.
Variants are written as in the ablation (`NAME=MODE;section.key=value...`).
The goal for the default: at most 1.5x `temporal_only`'s time (README, method).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from dataclasses import replace
from pathlib import Path

from ablation import MODES, SPLITS, parse_variant, reference_caption


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per tuned clip of each variant, one entry per counted round."""
    import torch

    from motioncrafter.base import load_base
    from motioncrafter.config import load_config
    from motioncrafter.trainer import tune_clip

    torch.set_num_threads(args.threads)
    base = load_base(args.base)
    ref = SPLITS["dev"]["clips"][0]
    clip = ref.clip()
    caption, subject = reference_caption(ref, "shape")
    configs = {}
    for variant in args.variants:
        name, mode, overrides = parse_variant(variant)
        if mode == "base":
            raise SystemExit(f"--variants {variant!r}: the base is not tuned")
        cfg = load_config(None, [f"tune.mode={mode}", *overrides])
        configs[name] = (replace(cfg.tune, steps=args.steps, progress=False), cfg.adapter, cfg.enhance)
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(args.rounds + 1):
        for name, (tune, adapter, enhance) in configs.items():
            started = time.perf_counter()
            tune_clip(base, clip.frames, caption, tune, adapter, enhance, subject=subject)
            if round_:  # round 0 warms up allocator and caches
                seconds[name].append(time.perf_counter() - started)
        if round_:
            print(f"round {round_}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
    return seconds


def report(args: argparse.Namespace, seconds: dict[str, list[float]], wall: float) -> str:
    lines = [f"# Tuning cost per clip on the shipped base (python benchmarks/tune_cost.py {shlex.join(args.argv)})".rstrip(), "",
             f"Dev clip 0 of the ablation, a {args.steps}-step budget per run (a spatial warm-up's steps on top), "
             f"{args.rounds} interleaved rounds after a warm-up one, {args.threads} torch thread(s); wall time {wall:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| variant | s / clip (median) | fastest round | over temporal_only (median of rounds) |", "|---|---|---|---|"]
    reference = seconds.get("temporal_only")
    for name, values in seconds.items():
        ratio = f"{statistics.median(v / r for v, r in zip(values, reference)):.2f}x" if reference else "-"
        lines.append(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import sys

    from motioncrafter.toyworld import BASE_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default=str(BASE_DIR))
    p.add_argument("--variants", nargs="+", default=list(MODES), help="NAME=MODE[;section.key=value...] or a bare mode")
    p.add_argument("--steps", type=int, default=200, help="the tuning budget (tune.steps)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/tune_cost.md")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    started = time.perf_counter()
    seconds = measure(args)
    text = report(args, seconds, time.perf_counter() - started)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
