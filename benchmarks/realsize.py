"""Full-size tuning steps on a CPU: seconds per step and peak memory of real-size bases.

    nice -n 15 python benchmarks/realsize.py [--families modelscope animatediff] [--steps 1] [--size 256] [--frames 8]
                                             [--only fp32,bf16+ckpt] [--modes motioncrafter temporal_only]
                                             [--max-gib N] [--out benchmarks/results/realsize.md]
    python benchmarks/realsize.py --tiny --out /tmp/realsize.md     # the debug-size bases, in seconds

The bases are built from the published configs (motioncrafter.published: ModelScope / ZeroScope's
UNet3D and AnimateDiff's UNetMotionModel with their text encoders and VAEs), random weights. One
clip at `--size` pixels (latents size/8) and `--frames` frames is tuned `--steps` steps by
`tune_clip` (the default recipe, or each of `--modes`; latents given, so the VAE does not encode) under
each config: float32 or bfloat16 base, with or without gradient checkpointing, LoRA or the full temporal
branch. With several modes the report gives each config's time per step over `temporal_only`'s: what
the method costs at real size, where a one-frame pass is a small share of a clip's.

Each config runs in its own process, so its peak RSS (VmHWM, reset once the base is built and cast, so
the float32 construction does not count) is that config's alone, one after
another in one run; results are written after each. A child whose RSS passes `--max-gib`
(default: the memory available at start less 3 GiB) stops itself and is reported as not fitting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

GIB = 2**30
CONFIGS = {  # name -> (base dtype, gradient checkpointing)
    "fp32": ("float32", False),
    "fp32+ckpt": ("float32", True),
    "bf16": ("bfloat16", False),
    "bf16+ckpt": ("bfloat16", True),
}
KINDS = ("lora", "full")


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def _guard(limit: int) -> None:
    """Stop this process (exit 3, its peak on stdout) once its RSS passes `limit`: a config that
    would not fit must not push the shared machine into swap or the OOM killer."""
    def watch() -> None:
        while True:
            rss = _status("VmRSS")
            if rss > limit:
                print(json.dumps({"stopped_gib": rss / GIB}), flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def child(spec: dict) -> dict:
    """One config, in this process: build the base, tune one clip, report s/step and VmHWM."""
    import numpy as np
    import torch

    from motioncrafter.base import BaseModel
    from motioncrafter.config import AdapterConfig, TuneConfig
    from motioncrafter.trainer import tune_clip

    torch.set_num_threads(spec["threads"])
    _guard(int(spec["max_gib"] * GIB))
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(0)
    if spec["tiny"]:
        from motioncrafter.toyworld.model import debug_base

        base = debug_base({"modelscope": "unet3d", "animatediff": "animatediff"}[spec["family"]])
    else:
        from motioncrafter import published

        pipe = published.build_pipeline(spec["family"], scale=1)
        base = BaseModel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, unet=pipe.unet,
                         scheduler=pipe.scheduler, family="unet3d" if spec["family"] == "modelscope" else "animatediff")
        for module in (base.text_encoder, base.vae, base.unet):
            module.requires_grad_(False).eval()
        del pipe  # AnimateDiff's pipeline also holds its MotionAdapter, whose weights the UNetMotionModel copied
    base.to("cpu", dtype)
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the float32 build is not the config's peak
    built = _status("VmRSS")
    latent = spec["size"] // 2 ** (len(base.vae.config.block_out_channels) - 1)
    latents = torch.randn(base.unet.config.in_channels, spec["frames"], latent, latent)
    frames = np.zeros((spec["frames"], spec["size"], spec["size"], 3), np.uint8)
    tune = TuneConfig(mode=spec["mode"], steps=spec["steps"], num_frames=spec["frames"], gradient_checkpointing=spec["ckpt"],
                      progress=False, log_every=1)
    started = time.perf_counter()
    result = tune_clip(base, frames, "a dog jumps over a fence in a park", tune, AdapterConfig(kind=spec["kind"]),
                       latents=latents)
    seconds = time.perf_counter() - started
    return {"s_per_step": seconds / spec["steps"], "peak_gib": _status("VmHWM") / GIB, "base_gib": built / GIB,
            "unet_m": sum(p.numel() for p in base.unet.parameters()) / 1e6, "loss": result.history[-1]["loss"]}


def run(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    last = (proc.stdout.strip().splitlines() or ["{}"])[-1]
    try:
        out = json.loads(last)
    except json.JSONDecodeError:
        out = {}
    if proc.returncode == 3:
        return {"status": f"does not fit: stopped at {out.get('stopped_gib', 0):.1f} GiB (--max-gib {spec['max_gib']:.1f})",
                "stopped_gib": out.get("stopped_gib", 0.0)}
    if proc.returncode != 0:
        return {"status": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return out | {"status": "ok"}


def report(args, results: list[tuple[dict, dict]], wall: float) -> str:
    lines = [f"# Real-size tuning steps on a CPU (python benchmarks/realsize.py {' '.join(args.argv)})".rstrip(), "",
             f"{'Debug-size bases (--tiny)' if args.tiny else 'Published configs, random weights'}; one clip "
             f"{args.size}x{args.size}x{args.frames} (latents given), {args.steps} step(s) per config, each config in its "
             f"own process (peak = its VmHWM from the base built and cast to the config's dtype on: the resident base, text encoder and VAE included), {args.threads} torch thread(s); "
             f"wall time {wall:.0f} s.", "",
             "| base | adapter | config | mode | UNet params | s/step | peak RSS GiB | base alone GiB | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for spec, r in results:
        cells = ([f"{r['unet_m']:,.1f} M", f"{r['s_per_step']:.1f}", f"{r['peak_gib']:.2f}", f"{r['base_gib']:.2f}"]
                 if r["status"] == "ok" else [""] * 4)
        lines.append(f"| {spec['family']} | {spec['kind']} | {spec['name']} | {spec['mode']} | {' | '.join(cells)} | {r['status']} |")
    first = args.modes[0]  # the memory comparison is of the first mode's rows
    peaks = {(s["family"], s["kind"], s["name"]): r["peak_gib"] for s, r in results if r["status"] == "ok" and s["mode"] == first}
    ratios = [f"{f} {k}: fp32 {peaks[(f, k, 'fp32')]:.2f} GiB / bf16+ckpt {peaks[(f, k, 'bf16+ckpt')]:.2f} GiB = "
              f"**{peaks[(f, k, 'fp32')] / peaks[(f, k, 'bf16+ckpt')]:.2f}x**"
              for f in args.families for k in args.kinds if (f, k, "fp32") in peaks and (f, k, "bf16+ckpt") in peaks]
    lines += ["", "Peak memory, fp32 without checkpointing over bf16 with it (goal >= 2x):", ""]
    stopped = {(s["family"], s["kind"], s["name"]): r["stopped_gib"] for s, r in results if "stopped_gib" in r and s["mode"] == first}
    ratios += [f"{f} {k}: fp32 > {stopped[(f, k, 'fp32')]:.2f} GiB (stopped) / bf16+ckpt {peaks[(f, k, 'bf16+ckpt')]:.2f} GiB "
               f"= **> {stopped[(f, k, 'fp32')] / peaks[(f, k, 'bf16+ckpt')]:.2f}x** (a lower bound)"
               for f in args.families for k in args.kinds if (f, k, "fp32") in stopped and (f, k, "bf16+ckpt") in peaks]
    lines += [f"- {r}" for r in ratios] or ["- not measured (a config of the pair did not run)"]
    if len(args.modes) > 1:
        step = {(s["family"], s["kind"], s["name"], s["mode"]): r["s_per_step"] for s, r in results if r["status"] == "ok"}
        costs = [f"{f} {k} {c}: {m} {step[(f, k, c, m)]:.1f} s / temporal_only {step[(f, k, c, 'temporal_only')]:.1f} s = "
                 f"**{step[(f, k, c, m)] / step[(f, k, c, 'temporal_only')]:.2f}x**"
                 for f, k, c, m in step if m != "temporal_only" and (f, k, c, "temporal_only") in step]
        lines += ["", "Time per step over `temporal_only`'s, same config, side by side in this run:", ""]
        lines += [f"- {c}" for c in costs] or ["- not measured (a mode of the pair did not run)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="debug-size bases, 32x32x4, one step")
    parser.add_argument("--families", nargs="+", default=["modelscope", "animatediff"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--only", default=",".join(CONFIGS), help="configs to run, of " + ", ".join(CONFIGS))
    parser.add_argument("--modes", nargs="+", default=["motioncrafter"], help="tune.mode of each config (the first: memory)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--size", type=int, default=None, help="frame size in pixels (256; --tiny 32)")
    parser.add_argument("--frames", type=int, default=None, help="frames of the clip (8; --tiny 4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-gib", type=float, default=None, help="stop a config past this RSS (available - 3 GiB)")
    parser.add_argument("--out", default="benchmarks/results/realsize.md")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    args.argv = sys.argv[1:] if argv is None else argv
    args.size = args.size or (32 if args.tiny else 256)
    args.frames = args.frames or (4 if args.tiny else 8)
    max_gib = args.max_gib or (_available() - 3 * GIB) / GIB
    started, results = time.perf_counter(), []
    for family in args.families:
        for kind in args.kinds:
            for name in args.only.split(","):
                dtype, ckpt = CONFIGS[name]
                for mode in args.modes:
                    spec = dict(family=family, kind=kind, name=name, mode=mode, dtype=dtype, ckpt=ckpt, tiny=args.tiny,
                                size=args.size, frames=args.frames, steps=args.steps, threads=args.threads, max_gib=max_gib)
                    r = run(spec)
                    results.append((spec, r))
                    print(f"{family} {kind} {name} {mode}: {r['status']}"
                          + (f", {r['s_per_step']:.1f} s/step, peak {r['peak_gib']:.2f} GiB" if r["status"] == "ok" else ""), flush=True)
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(report(args, results, time.perf_counter() - started))  # after each config
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
