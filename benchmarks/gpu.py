"""The GPU benchmark: a ModelScope-size base, one clip tuned and rendered at two video sizes.

    python benchmarks/gpu.py [--steps 150] [--probe-steps 10] [--budget-s 450] [--out benchmarks/results/gpu.md]
    python benchmarks/gpu.py --tiny --out /tmp/gpu_tiny.md       # the same code on a CPU, in seconds

A random-weight base in ModelScope / ZeroScope's published configs (motioncrafter.published:
the 1.4 B-parameter UNet3DConditionModel, its text encoder and VAE), built on the device. One
MovingShapes-like clip (a square crossing the frame) is tuned with the default recipe
(LoRA on both branches, `tune_clip`) at 256x256x16 and at ZeroScope's 576x320x24:

- the headline tunes: bfloat16 base (float32 LoRA under autocast), with and without gradient
  checkpointing, `--steps` steps each (goals: <= 30 s per 150-step tune at 256x256x16, <= 16 GB);
- the memory sweep: float32 and float16 bases, with and without checkpointing, and the DeepSpeed
  engine at ZeRO 0-3 on one GPU, `--probe-steps` steps each (peak memory is reached at step 1;
  their s/step is measured, their 150-step time is s/step x 150 and marked so);
- model FLOPs utilisation: one step's FLOPs counted by torch.utils.flop_counter.FlopCounterMode
  (checkpointing off: the recomputed forward is not model work), over the bf16 row's s/step and
  the GPU's dense bf16 peak (`--peak-tflops`, else the table below by device name);
- render seconds per video: 25 DDIM steps with guidance, the tuned adapter attached, bf16.

A row that runs out of memory is reported as such; rows not started within `--budget-s` are
listed as skipped; `--engines torch` leaves the DeepSpeed rows out. `--tiny` swaps in the unit tests'
debug-size UNet3D base, one 32x32x4 video size and a few steps: tests/unit/test_gpu_benchmark.py runs it
(torch rows; the DeepSpeed rows are the same call with another engine, which tests/integration/test_deepspeed.py covers).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from motioncrafter import published
from motioncrafter.adapters import attach, detach
from motioncrafter.base import BaseModel, set_gradient_checkpointing
from motioncrafter.config import RenderConfig, TuneConfig
from motioncrafter.render import render
from motioncrafter.trainer import tune_clip

GIB = 2**30
PROMPT = "a red square moves left to right on a black background"
# Dense bf16 tensor-core peaks (TFLOP/s), from the vendors' data sheets, by a substring of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0,
                    "L4": 121.0, "RTX 4090": 165.0, "A6000": 155.0, "A5000": 111.0}


@dataclass(frozen=True)
class Size:
    height: int
    width: int
    frames: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"


@dataclass(frozen=True)
class Row:
    size: Size
    dtype: str  # the frozen base's
    checkpointing: bool
    engine: str = "torch"
    zero_stage: int = 0
    headline: bool = False  # runs --steps steps (else --probe-steps)

    @property
    def label(self) -> str:
        engine = f"deepspeed ZeRO-{self.zero_stage}" if self.engine == "deepspeed" else "torch"
        return f"{self.dtype} | {'yes' if self.checkpointing else 'no'} | {engine}"


def rows_for(size: Size) -> list[Row]:
    return [
        Row(size, "bfloat16", False, headline=True),
        Row(size, "bfloat16", True, headline=True),
        Row(size, "float32", False),
        Row(size, "float32", True),
        Row(size, "float16", True),
        # ZeRO rows without checkpointing: ZeRO-3 cannot be combined with it (TuneConfig refuses)
        *[Row(size, "bfloat16", False, "deepspeed", stage) for stage in (0, 1, 2, 3)],
    ]


def build_base(device: str, tiny: bool) -> BaseModel:
    """ModelScope's published configs, random weights, built on `device`, float32; `tiny`: the unit
    tests' debug-size UNet3D base (published widths / 16 still costs ~10 s a step on a loaded 2-core CPU)."""
    if tiny:
        from motioncrafter.toyworld.model import debug_base

        return debug_base("unet3d").to(device)
    with torch.device(device):
        pipe = published.build_pipeline("modelscope", scale=1)
    base = BaseModel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, unet=pipe.unet,
                     scheduler=pipe.scheduler, family="unet3d", fingerprint="random-modelscope")
    for module in (base.text_encoder, base.vae, base.unet):
        module.requires_grad_(False).eval()
    return base.to(device)


def moving_square(size: Size) -> np.ndarray:
    """uint8 (T, H, W, 3): a red square crossing a black frame left to right."""
    frames = np.zeros((size.frames, size.height, size.width, 3), np.uint8)
    side = max(4, size.height // 4)
    top = (size.height - side) // 2
    for t in range(size.frames):
        left = round(t * (size.width - side) / max(1, size.frames - 1))
        frames[t, top : top + side, left : left + side, 0] = 230
    return frames


def _reset(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if device.startswith("cuda") else None


def tune_config(row: Row, steps: int) -> TuneConfig:
    return TuneConfig(steps=steps, num_frames=row.size.frames, gradient_checkpointing=row.checkpointing,
                      engine=row.engine, zero_stage=row.zero_stage, progress=False, log_every=max(1, steps))


def run_row(base: BaseModel, row: Row, steps: int, device: str) -> dict:
    """One tune of the clip at the row's settings: seconds, s/step, peak memory, final loss (or the OOM)."""
    base.to(device, getattr(torch, row.dtype))
    frames = moving_square(row.size)
    _reset(device)
    try:
        started = time.perf_counter()
        result = tune_clip(base, frames, PROMPT, tune_config(row, steps))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    except torch.OutOfMemoryError:
        _reset(device)
        return {"row": row, "steps": steps, "failed": True, "peak_gib": None}
    except Exception as err:  # a row that fails is reported as such; the others still run
        _reset(device)
        return {"row": row, "steps": steps, "failed": True, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    loss = result.history[-1]["loss"] if result.history else float("nan")
    return {"row": row, "steps": steps, "seconds": seconds, "s_per_step": seconds / steps, "peak_gib": _peak(device),
            "loss": loss, "adapter": result.adapter, "failed": False}


def count_flops(base: BaseModel, size: Size, device: str, checkpointing: bool) -> float:
    """FLOPs of one tuning step (bf16 base, LoRA), counted by torch's FlopCounterMode over the whole
    of `tune_clip` with one step: forward and backward of every pass of the recipe."""
    from torch.utils.flop_counter import FlopCounterMode

    base.to(device, torch.bfloat16)
    row = Row(size, "bfloat16", checkpointing)
    _reset(device)
    counter = FlopCounterMode(display=False)
    with counter:
        tune_clip(base, moving_square(size), PROMPT, tune_config(row, 1))
    return float(counter.get_total_flops())


def render_seconds(base: BaseModel, adapter, size: Size, device: str, videos: int) -> dict:
    """Seconds per video: `videos` seeds of one prompt in one batch, the tuned adapter attached, bf16."""
    base.to(device, torch.bfloat16)
    set_gradient_checkpointing(base.unet, False)
    cfg = RenderConfig(num_frames=size.frames, height=size.height, width=size.width, max_batch=videos)
    attach(base, adapter, "bench")
    _reset(device)
    try:
        render(base, [PROMPT], [0], replace(cfg, num_steps=1))  # warm-up: kernels, allocator
        _reset(device)
        started = time.perf_counter()
        out = render(base, [PROMPT] * videos, list(range(videos)), cfg)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    except torch.OutOfMemoryError:
        return {"size": size, "failed": True}
    finally:
        detach(base, "bench")
    assert out.shape == (videos, size.frames, size.height, size.width, 3)
    return {"size": size, "failed": False, "s_per_video": seconds / videos, "peak_gib": _peak(device), "videos": videos,
            "steps": cfg.num_steps}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def peak_tflops(device: str, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given (--peak-tflops)"
    if not device.startswith("cuda"):
        return None, "none known for a CPU"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value, f"{key} data sheet, dense bf16"
    return None, f"unknown for {name!r}: pass --peak-tflops"


def report(args, device: str, params: int, results: list[dict], skipped: list[Row], flops: dict, renders: list[dict],
           peak: tuple[float | None, str], wall: float) -> str:
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()})"
    lines = [f"# GPU benchmark (python benchmarks/gpu.py {' '.join(args.argv)})".rstrip(), "",
             f"Device: {name}; torch {torch.__version__}. Base: "
             f"{'the debug-size UNet3D base (--tiny)' if args.tiny else 'ModelScope published configs'}, random weights, "
             f"UNet {params / 1e6:,.1f} M parameters. "
             f"Recipe: tune_clip defaults (LoRA on both branches, spatial pass every step). Wall time {wall:.0f} s.", "",
             "## Tuning one clip", "",
             f"Headline rows run {args.steps} steps; the others {args.probe_steps} (their time for {args.steps} steps is "
             f"s/step x {args.steps}, marked *). Peak: torch.cuda.max_memory_allocated over the tune.", "",
             f"| video (WxHxT) | base dtype | checkpointing | engine | steps | s/step | s per {args.steps} steps | peak GiB | final loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        row = r["row"]
        if r["failed"]:
            lines.append(f"| {row.size} | {row.label} | {r['steps']} | {r.get('error', 'out of memory')} | | | |")
            continue
        total = f"{r['seconds']:.1f}" if r["steps"] == args.steps else f"{r['s_per_step'] * args.steps:.1f}*"
        lines.append(f"| {row.size} | {row.label} | {r['steps']} | {r['s_per_step']:.3f} | {total} | {_fmt(r['peak_gib'])} | {r['loss']:.4f} |")
    for row in skipped:
        lines.append(f"| {row.size} | {row.label} | skipped: --budget-s {args.budget_s:.0f} reached | | | | |")
    lines += ["", "## Model FLOPs utilisation", "",
              f"One step's FLOPs by FlopCounterMode (bf16, LoRA); achieved = FLOPs / s/step of the bf16 row with the "
              f"same checkpointing; peak {_fmt(peak[0], 0)} TFLOP/s ({peak[1]}). With checkpointing the count includes "
              f"the recomputed forward, so that figure is hardware, not model, FLOPs utilisation.", "",
              "| video (WxHxT) | counted with checkpointing | GFLOPs per step | achieved TFLOP/s | utilisation |", "|---|---|---|---|---|"]
    for (size, ckpt), total in flops.items():
        match = [r for r in results if r["row"] == Row(size, "bfloat16", ckpt, headline=True) and not r["failed"]]
        achieved = total / match[0]["s_per_step"] / 1e12 if match else None
        util = f"{100 * achieved / peak[0]:.3g} %" if achieved is not None and peak[0] else "—"
        lines.append(f"| {size} | {'yes (HFU)' if ckpt else 'no (MFU)'} | {total / 1e9:,.1f} | "
                     f"{'—' if achieved is None else f'{achieved:.3g}'} | {util} |")
    lines += ["", "## Rendering", "", "bf16 base, the tuned adapter attached, 25 DDIM steps, guidance 4 (the UNet sees "
              "2 rows per video), decode_chunk 16; after a one-step warm-up.", "",
              "| video (WxHxT) | videos in the batch | s per video | peak GiB |", "|---|---|---|---|"]
    for r in renders:
        if r["failed"]:
            lines.append(f"| {r['size']} | | out of memory | |")
        else:
            lines.append(f"| {r['size']} | {r['videos']} | {r['s_per_video']:.2f} | {_fmt(r['peak_gib'])} |")
    goal = [r for r in results if r["row"] == Row(args.sizes[0], "bfloat16", True, headline=True) and not r["failed"]]
    if goal and not args.tiny:
        g = goal[0]
        lines += ["", f"Goals at {args.sizes[0]} (bf16 + checkpointing): {g['seconds']:.1f} s per {args.steps}-step tune "
                  f"(goal <= 30 s: {'met' if g['seconds'] <= 30 else 'not met'}), peak {_fmt(g['peak_gib'])} GiB "
                  f"(goal <= 16: {'met' if (g['peak_gib'] or 0) <= 16 else 'not met'})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="reduced-width base, small frames, few steps (runs on a CPU)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the headline tunes (150; --tiny 2)")
    parser.add_argument("--probe-steps", type=int, default=None, help="steps of the memory-sweep rows (10; --tiny 1)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no further row after this many seconds")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for the utilisation")
    parser.add_argument("--engines", default="torch,deepspeed", help="which engines' rows to run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/gpu.md")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.steps = args.steps or (2 if args.tiny else 150)
    args.probe_steps = args.probe_steps or (1 if args.tiny else 10)
    args.sizes = [Size(32, 32, 4)] if args.tiny else [Size(256, 256, 16), Size(320, 576, 24)]
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 rows are float32, not TF32
    started = time.perf_counter()
    torch.manual_seed(0)
    base = build_base(args.device, args.tiny)
    params = sum(p.numel() for p in base.unet.parameters())
    results, skipped, flops, renders = [], [], {}, []
    for size in args.sizes:
        for row in rows_for(size):
            if row.engine not in args.engines.split(","):
                continue
            if time.perf_counter() - started > args.budget_s:
                skipped.append(row)
                continue
            r = run_row(base, row, args.steps if row.headline else args.probe_steps, args.device)
            results.append(r)
            print(f"{size} {row.label}: " + (r.get("error", "out of memory") if r["failed"] else
                  f"{r['s_per_step']:.3f} s/step, peak {_fmt(r['peak_gib'])} GiB"), flush=True)
        fits = [r for r in results if r["row"] == Row(size, "bfloat16", False, headline=True) and not r["failed"]]
        try:
            flops[(size, not fits)] = count_flops(base, size, args.device, checkpointing=not fits)
        except torch.OutOfMemoryError:
            _reset(args.device)
        adapters = [r["adapter"] for r in results if r["row"].size == size and not r["failed"]]
        if adapters:
            renders.append(render_seconds(base, adapters[0], size, args.device, videos=2))
    text = report(args, args.device, params, [{k: v for k, v in r.items() if k != "adapter"} for r in results],
                  skipped, flops, renders, peak_tflops(args.device, args.peak_tflops), time.perf_counter() - started)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
