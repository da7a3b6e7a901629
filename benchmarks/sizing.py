"""Sizing arithmetic for real bases: parameter counts of each branch and per-GPU memory of a gang.

    python benchmarks/sizing.py [--rank 16] [--spatial-rank 8] [--out benchmarks/results/sizing.md]

The UNets are built from the published configs on the `meta` device (no weights,
no download, no memory), and the branches are selected by the same code that
tunes them (`motioncrafter.branches`), so the counts cannot drift from what a run
trains. docs/cluster.md explains the table. The memory model is what
`tune.engine=deepspeed` does (motioncrafter/distributed.py: the UNet is the
engine's model; peft keeps adapter weights in fp32 under a bf16 base):

  frozen UNet weights   2 B/param (model.dtype=bfloat16), split over the gang's N ranks under ZeRO-3
  text encoder + VAE    2 B/param, never split (outside the engine; both only encode, and are cacheable)
  trainable weights     4 B/param (fp32), split under ZeRO-3
  gradients             4 B/param, split under ZeRO-2 and 3
  AdamW m and v         8 B/param, split under ZeRO-1, 2 and 3; in CPU RAM with tune.offload
Activations are not in the table: they scale with frames x height x width x batch,
not with ZeRO, and must be measured on one GPU at the run's video size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from motioncrafter import published
from motioncrafter.branches import branch_parameters, lora_targets
from motioncrafter.config import AdapterConfig, TuneConfig
from motioncrafter.modes import MODES
from motioncrafter.trainer import with_mode_adapter

# Text encoder + VAE (frozen; only needed to encode prompts and frames, both cacheable):
# OpenCLIP ViT-H/14 text tower + SD VAE for ModelScope, CLIP ViT-L/14 text + SD VAE for AnimateDiff.
OTHER_PARAMS = {"modelscope": 354_000_000 + 83_700_000, "animatediff": 123_000_000 + 83_700_000}
GIB = 2**30


def build_unet(family: str) -> nn.Module:
    with torch.device("meta"):
        return published.build_unet(family)


def lora_size(unet: nn.Module, branch: str, rank: int) -> int:
    """Parameters peft adds for LoRA of `rank` on the branch's Linear/Conv layers (A: in->r, B: r->out)."""
    modules = dict(unet.named_modules())
    total = 0
    for name in lora_targets(unet, branch):
        layer = modules[name]
        if isinstance(layer, nn.Linear):
            total += rank * (layer.in_features + layer.out_features)
        else:  # Conv: A keeps the kernel, B is 1x1
            kernel = 1
            for k in layer.kernel_size:
                kernel *= k
            total += rank * (layer.in_channels * kernel + layer.out_channels)
    return total


def count(family: str, rank: int, spatial_rank: int) -> dict:
    unet = build_unet(family)
    numel = lambda params: sum(p.numel() for p in params)  # noqa: E731
    return {
        "unet": numel(unet.parameters()),
        "temporal": numel(branch_parameters(unet, "temporal").values()),
        "spatial": numel(branch_parameters(unet, "spatial").values()),
        "temporal_lora": lora_size(unet, "temporal", rank),
        "spatial_lora": lora_size(unet, "spatial", spatial_rank),
        "other": OTHER_PARAMS[family],
    }


def per_gpu_bytes(frozen_unet: int, other: int, trainable: int, ranks: int, zero: int, offload: bool) -> float:
    """Bytes on each GPU of a gang for weights, gradients and optimizer state (not activations)."""
    weights = (2 * frozen_unet + 4 * trainable) / (ranks if zero == 3 else 1) + 2 * other
    grads = 4 * trainable / (ranks if zero >= 2 else 1)
    optimizer = 0 if offload else 8 * trainable / (ranks if zero >= 1 else 1)
    return weights + grads + optimizer


def table(counts: dict[str, dict]) -> str:
    lines = ["| base | UNet | temporal branch | spatial branch | temporal LoRA (adapter) | spatial LoRA | text enc. + VAE |",
             "|---|---|---|---|---|---|---|"]
    for family, c in counts.items():
        m = {k: f"{v / 1e6:,.1f} M" for k, v in c.items()}
        lines.append(f"| {family} | {m['unet']} | {m['temporal']} | {m['spatial']} | {m['temporal_lora']} "
                     f"| {m['spatial_lora']} | {m['other']} |")
    lines += ["", "Weights + gradients + optimizer state per GPU (GiB): bf16 base, fp32 trainables, no activations:", "",
              "| base | trains | ranks N | ZeRO 0 | ZeRO 1 | ZeRO 2 | ZeRO 2 + offload | ZeRO 3 |", "|---|---|---|---|---|---|---|---|"]
    for family, c in counts.items():
        options = (("LoRA both branches (default)", c["temporal_lora"] + c["spatial_lora"], c["unet"]),
                   ("adapter.kind=full + spatial LoRA", c["temporal"] + c["spatial_lora"], c["unet"] - c["temporal"]))
        for trains, trainable, frozen in options:
            for ranks in (1, 2, 4):
                cells = [per_gpu_bytes(frozen, c["other"], trainable, ranks, z, False) for z in (0, 1, 2)]
                cells += [per_gpu_bytes(frozen, c["other"], trainable, ranks, 2, True),
                          per_gpu_bytes(frozen, c["other"], trainable, ranks, 3, False)]
                lines.append(f"| {family} | {trains} | {ranks} | " + " | ".join(f"{b / GIB:.2f}" for b in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = with_mode_adapter(AdapterConfig(), MODES[TuneConfig().mode])  # the ranks a default run tunes
    parser.add_argument("--rank", type=int, default=default.rank, help="adapter.rank")
    parser.add_argument("--spatial-rank", type=int, default=default.spatial_rank, help="adapter.spatial_rank")
    parser.add_argument("--out", default="benchmarks/results/sizing.md")
    args = parser.parse_args()
    counts = {f: count(f, args.rank, args.spatial_rank) for f in ("modelscope", "animatediff")}
    text = (f"# Sizing (python benchmarks/sizing.py --rank {args.rank} --spatial-rank {args.spatial_rank})\n\n"
            + table(counts))
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
