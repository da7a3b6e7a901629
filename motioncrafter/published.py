"""The published real bases, by their configs: ModelScope / ZeroScope and AnimateDiff.

`unet_config` gives each family's UNet config as published (`scale` divides every width, for
folders small enough to test with). `write_folder` saves a whole base in its published folder
layout through diffusers' own pipelines (`TextToVideoSDPipeline`, `AnimateDiffPipeline`),
with random weights: structure-faithful stand-ins for the real downloads, used by the tests
and the benchmarks (no weights can be downloaded here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FAMILIES = ("modelscope", "animatediff")

# unet/config.json of damo-vilab/text-to-video-ms-1.7b (ZeroScope v2 has the same UNet).
MODELSCOPE_UNET: dict[str, Any] = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024, attention_head_dim=64,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    norm_num_groups=32, in_channels=4, out_channels=4, sample_size=32,
)
# Stable Diffusion 1.5's UNet + guoyww/animatediff-motion-adapter-v1-5-2 (the diffusers defaults of both).
ANIMATEDIFF_UNET: dict[str, Any] = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, num_attention_heads=8,
    motion_num_attention_heads=8, motion_max_seq_length=32, use_motion_mid_block=True,
)
# text_encoder/config.json: OpenCLIP ViT-H/14's text tower (ModelScope), CLIP ViT-L/14's (SD 1.5)
TEXT: dict[str, dict[str, Any]] = {
    "modelscope": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                       hidden_act="gelu", projection_dim=512),
    "animatediff": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        hidden_act="quick_gelu", projection_dim=768),
}
# vae/config.json of both (the Stable Diffusion VAE)
VAE: dict[str, Any] = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
# scheduler/scheduler_config.json: ModelScope's DDIM; SD 1.5's PNDM (what an AnimateDiff folder built on it names)
SCHEDULER = {
    "modelscope": ("DDIMScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)),
    "animatediff": ("PNDMScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                          skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)),
}


def _narrow(channels: tuple[int, ...], scale: int) -> tuple[int, ...]:
    return tuple(max(32, c // scale // 32 * 32) for c in channels)  # multiples of norm_num_groups (32)


def unet_config(family: str, scale: int = 1) -> dict:
    if family == "modelscope":
        cfg = dict(MODELSCOPE_UNET, block_out_channels=_narrow(MODELSCOPE_UNET["block_out_channels"], scale))
        if scale > 1:  # UNet3D reads attention_head_dim as the number of heads
            cfg.update(attention_head_dim=8, cross_attention_dim=TEXT["modelscope"]["hidden_size"] // scale)
        return cfg
    if family == "animatediff":
        cfg = dict(ANIMATEDIFF_UNET, block_out_channels=_narrow(ANIMATEDIFF_UNET["block_out_channels"], scale))
        if scale > 1:
            cfg.update(cross_attention_dim=TEXT["animatediff"]["hidden_size"] // scale, num_attention_heads=4,
                       motion_num_attention_heads=4)
        return cfg
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def build_unet(family: str, scale: int = 1) -> torch.nn.Module:
    """The family's UNet as the trainer sees it (AnimateDiff: UNetMotionModel), random weights."""
    from diffusers import UNet3DConditionModel, UNetMotionModel

    cfg = unet_config(family, scale)
    return UNet3DConditionModel(**cfg) if family == "modelscope" else UNetMotionModel(**cfg)


def _tokenizer(folder: Path):
    """A CLIP BPE tokenizer over a small word list (the published one has 49,408 tokens)."""
    from transformers import CLIPTokenizer

    from motioncrafter.toyworld.model import write_tokenizer

    write_tokenizer(folder, max_tokens=77)
    return CLIPTokenizer.from_pretrained(str(folder))


def build_pipeline(family: str, scale: int = 8, tokenizer_dir: str | Path | None = None, seed: int = 0,
                   layout: str = "pipeline"):
    """A diffusers pipeline of the family, random weights, widths divided by `scale`.

    AnimateDiff `layout`: "pipeline" (AnimateDiffPipeline, which saves unet/ as a
    UNetMotionModel beside motion_adapter/) or "unet2d" (the image UNet and motion_adapter/
    kept apart, as a Stable Diffusion folder plus a downloaded motion adapter).
    """
    import diffusers
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import tempfile

    torch.manual_seed(seed)
    tok = _tokenizer(Path(tokenizer_dir or tempfile.mkdtemp(prefix="mc_tok_")))
    text: dict[str, Any] = dict(TEXT[family])
    if scale > 1:
        text.update(hidden_size=text["hidden_size"] // scale, intermediate_size=text["intermediate_size"] // scale,
                    num_hidden_layers=2, num_attention_heads=4, projection_dim=text["projection_dim"] // scale)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **text))
    vae = AutoencoderKL(**dict(VAE, block_out_channels=_narrow(VAE["block_out_channels"], scale),
                               layers_per_block=1 if scale > 1 else 2))
    name, sched_cfg = SCHEDULER[family]
    scheduler = getattr(diffusers, name)(**sched_cfg)
    parts = dict(tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=scheduler)
    if family == "modelscope":
        from diffusers import TextToVideoSDPipeline

        return TextToVideoSDPipeline(unet=build_unet(family, scale), **parts)
    if family != "animatediff":
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    from diffusers import AnimateDiffPipeline

    cfg = unet_config(family, scale)
    unet2d = UNet2DConditionModel(block_out_channels=cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
                                  cross_attention_dim=cfg["cross_attention_dim"], attention_head_dim=cfg["num_attention_heads"])
    motion = MotionAdapter(block_out_channels=cfg["block_out_channels"], motion_layers_per_block=cfg["layers_per_block"],
                           motion_num_attention_heads=cfg["motion_num_attention_heads"],
                           motion_max_seq_length=cfg["motion_max_seq_length"], use_motion_mid_block=cfg["use_motion_mid_block"])
    pipe = AnimateDiffPipeline(unet=unet2d, motion_adapter=motion, **parts)
    if layout == "unet2d":
        pipe.unet2d = unet2d  # kept for write_folder
    return pipe


def write_folder(out: str | Path, family: str, scale: int = 8, variant: str | None = None, seed: int = 0,
                 layout: str = "pipeline", safe_serialization: bool = True) -> Path:
    """Save a random-weight base in the family's published layout; `variant="fp16"` writes
    float16 `*.fp16.safetensors` files (as ModelScope ships), `safe_serialization=False`
    pickled `.bin` files (as older uploads are)."""
    import json

    out = Path(out)
    pipe = build_pipeline(family, scale, seed=seed, layout=layout)
    if variant == "fp16":
        pipe.to(torch.float16)
    pipe.save_pretrained(out, variant=variant, safe_serialization=safe_serialization)
    if layout == "unet2d":  # replace the UNetMotionModel by the image UNet, as in a Stable Diffusion folder
        import shutil

        shutil.rmtree(out / "unet")
        unet2d = pipe.unet2d.to(pipe.unet.dtype)
        unet2d.save_pretrained(out / "unet", variant=variant, safe_serialization=safe_serialization)
        index = json.loads((out / "model_index.json").read_text())
        index["unet"] = ["diffusers", "UNet2DConditionModel"]
        (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out
