"""The tiny MovingShapes text-to-video base, in standard diffusers layout.

Components (all small enough to train on a 2-core CPU):
- a word-level `CLIPTokenizer` over the world's vocabulary (vocab.json + merges.txt
  written here, so nothing is downloaded),
- a 2-layer `CLIPTextModel`,
- an `AutoencoderKL` with 4x spatial downsampling,
- a `UNet3DConditionModel` (the ModelScope / ZeroScope architecture, shrunk),
- a `DDIMScheduler` with v-prediction on a cosine schedule shifted to more noise
  (`shifted_cosine_betas`, stored as `trained_betas` so stock diffusers loads it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motioncrafter.toyworld.world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class TinyBaseConfig:
    """Sizes of the tiny base. Change them and re-run pretraining."""

    text_hidden: int = 64
    text_layers: int = 2
    max_tokens: int = 16
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks -> 4x downsampling
    latent_channels: int = 16  # 4x4x3 pixels -> 16 values: colour and edges survive
    # three levels: in the 2x2 bottleneck every position touches a different corner of the frame,
    # so "where am I" (which placing an object by the prompt needs) is plain there. Changed from
    # (32, 64) together with the frozen text encoder and the shifted schedule; not ablated alone.
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_heads: int = 8
    num_train_timesteps: int = 1000
    # Divide the cosine schedule's signal-to-noise ratio by this. Measured on the first base
    # (plain cosine): a denoiser reads an 8x8x8 latent's direction from x_t alone down to
    # SNR 0.015 (t=920 of 1000), so only the last ~4% of timesteps (and one of 25 sampling
    # steps) leave direction to the prompt. Shifted by 64, that range (SNR < 0.004) starts
    # near t=700: ~30% of training steps and of sampling steps.
    snr_shift: float = 64.0


def vocabulary() -> list[str]:
    """Every word a MovingShapes caption or an enhanced prompt can use."""
    words = {"a", "on", "background", "moves", "the", "an", "and", "with", "in"}
    words |= set(COLOURS) | set(BACKGROUNDS) | set(SHAPES)
    for phrase in MOTIONS.values():
        words |= set(phrase.split())
    return sorted(words)


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: merge the lowest-ranked adjacent pair until none applies."""
    while len(pieces) > 1:
        pair = min(zip(pieces, pieces[1:]), key=lambda p: ranks.get(p, len(ranks) + 1))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
                merged.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def write_tokenizer(out_dir: str | Path, max_tokens: int = 16) -> None:
    """Write a CLIP BPE tokenizer in which every vocabulary word is a single token.

    CLIP's BPE starts from characters (the last one suffixed with `</w>`) and
    repeatedly applies the lowest-ranked merge. For each word we run that BPE
    with the merges so far and append merges (lowest priority, so words already
    whole stay whole) until the word is one token. Single characters stay in
    the vocabulary, so an unknown word still tokenizes (letter by letter).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab: list[str] = letters + [c + "</w>" for c in letters]
    ranks: dict[tuple[str, str], int] = {}
    for word in vocabulary():
        while len(pieces := _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            if pieces[0] + pieces[1] not in vocab:
                vocab.append(pieces[0] + pieces[1])
    merges = [f"{a} {b}" for a, b in ranks]
    vocab += [BOS, EOS]
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_tokens,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
                "do_lower_case": True,
            },
            indent=2,
        )
    )


def shifted_cosine_betas(num_train_timesteps: int, snr_shift: float) -> list[float]:
    """Betas of the squared-cosine schedule with every SNR divided by `snr_shift`.

    Small latents need a noisier schedule than the cosine one was tuned for (Hoogeboom
    et al. 2023, "simple diffusion"; Chen 2023): the layout is fixed early, so more steps
    must be spent at the noise levels where it is still open.
    """
    import math

    t = (np.arange(num_train_timesteps + 1) / num_train_timesteps + 0.008) / 1.008
    alpha_bar = np.cos(t * math.pi / 2) ** 2
    alpha_bar = np.clip(alpha_bar / alpha_bar[0], 1e-12, 1.0)
    snr = alpha_bar / np.maximum(1 - alpha_bar, 1e-12) / snr_shift
    shifted = snr / (1 + snr)
    betas = 1 - shifted[1:] / shifted[:-1]
    return np.clip(betas, 0, 0.999).tolist()


def build_components(cfg: TinyBaseConfig, tokenizer_dir: str | Path, seed: int = 0, family: str = "unet3d") -> dict:
    """Freshly initialised components (random weights), keyed as in `model_index.json`; the UNet of
    `family`: ModelScope's UNet3D, or AnimateDiff's UNetMotionModel (an image UNet with motion modules
    of the same widths).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=cfg.text_hidden * 2,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=4,
            max_position_embeddings=cfg.max_tokens,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    n = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=16,
        sample_size=32,
    )
    if family not in ("unet3d", "animatediff"):
        raise ValueError(f"unknown family {family!r}; expected unet3d or animatediff")
    n = len(cfg.unet_channels)
    shared = dict(sample_size=8, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
                  block_out_channels=cfg.unet_channels, layers_per_block=1, norm_num_groups=16,
                  cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.unet_heads)
    if family == "unet3d":
        unet = UNet3DConditionModel(down_block_types=("CrossAttnDownBlock3D",) * n, up_block_types=("CrossAttnUpBlock3D",) * n,
                                    **shared)
    else:
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

        unet2d = UNet2DConditionModel(down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
                                      **shared)
        motion = MotionAdapter(block_out_channels=cfg.unet_channels, motion_layers_per_block=1, motion_norm_num_groups=16,
                               motion_num_attention_heads=cfg.unet_heads, motion_max_seq_length=32)
        unet = UNetMotionModel.from_unet2d(unet2d, motion)
    scheduler = DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        trained_betas=shifted_cosine_betas(cfg.num_train_timesteps, cfg.snr_shift),
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="trailing",
    )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": unet, "scheduler": scheduler}


def debug_base(family: str = "unet3d", seed: int = 0, cfg: TinyBaseConfig | None = None):
    """A randomly initialised, debug-size `BaseModel` of either family: for tests, no weights needed."""
    import shutil
    import tempfile

    from motioncrafter.base import BaseModel

    cfg = cfg or TinyBaseConfig(text_hidden=32, vae_channels=(16, 16, 16), latent_channels=4, unet_channels=(16, 32), unet_heads=2)
    tokenizer_dir = Path(tempfile.gettempdir()) / f"mc_debug_tokenizer_{cfg.max_tokens}"
    if not tokenizer_dir.exists():  # written once, shared by every debug base (and process)
        staging = Path(tempfile.mkdtemp(dir=tokenizer_dir.parent))
        write_tokenizer(staging, cfg.max_tokens)
        try:
            staging.rename(tokenizer_dir)
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
    parts = build_components(cfg, tokenizer_dir, seed=seed, family=family)
    for name in ("text_encoder", "vae", "unet"):
        parts[name].requires_grad_(False).eval()
    from motioncrafter.toyworld.world import enhance_vocabulary

    return BaseModel(**parts, family=family, fingerprint=f"debug-{family}-{seed}", vocabulary=enhance_vocabulary())
