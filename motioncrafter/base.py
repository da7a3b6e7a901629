"""A text-to-video base model: the diffusers components and the few operations
every stage needs (encode prompts, frames <-> latents).

The components are stock diffusers / transformers modules; `BaseModel` only
keeps them together and knows the tensor layouts:
frames (B, T, H, W, 3) uint8  <->  latents (B, C, T, h, w) float.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FAMILIES = ("unet3d", "animatediff")


@dataclass
class BaseModel:
    tokenizer: Any  # a transformers CLIPTokenizer
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: Any  # a diffusers scheduler
    family: str = "unet3d"
    fingerprint: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "BaseModel":
        for module in (self.text_encoder, self.vae, self.unet):
            # a dtype only when it changes: diffusers warns on every cast, even to the dtype a model has
            same = dtype is None or next(module.parameters()).dtype == dtype
            module.to(device=device) if same else module.to(device=device, dtype=dtype)
        return self

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids padded to the tokenizer's limit; longer prompts are cut with a warning."""
        limit = self.tokenizer.model_max_length
        ids = self.tokenizer(prompts, padding="max_length", max_length=limit, truncation=False).input_ids
        for prompt, row in zip(prompts, ids):
            if len(row) > limit:
                warnings.warn(f"prompt is {len(row)} tokens, longer than the tokenizer's {limit}; truncated: {prompt!r}")
        eos = self.tokenizer.eos_token_id
        ids = [row[: limit - 1] + [eos] if len(row) > limit else row for row in ids]
        return torch.tensor(ids, device=self.device)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, D) text embeddings for cross-attention."""
        return self.text_encoder(self.tokenize(prompts)).last_hidden_state

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, unet=None) -> torch.Tensor:
        """UNet output for (B, C, T, h, w) latents; `unet` defaults to the base's own.

        AnimateDiff's UNetMotionModel folds frames into the batch and expects one
        text embedding per frame; ModelScope's UNet3D repeats them itself.
        """
        if self.family == "animatediff":
            text = text.repeat_interleave(latents.shape[2], dim=0)
        return (unet or self.unet)(latents, t, encoder_hidden_states=text).sample

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def encode_frames(self, frames: np.ndarray | torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> scaled latents (B, C, T, h, w)."""
        x = torch.as_tensor(np.asarray(frames), device=self.device)
        b, t = x.shape[:2]
        x = x.reshape(b * t, *x.shape[2:]).permute(0, 3, 1, 2).to(self.vae.dtype) / 127.5 - 1
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        z = z * self.scaling_factor
        return z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents (B, C, T, h, w) -> uint8 frames (B, T, H, W, 3)."""
        b, c, t = latents.shape[:3]
        z = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, *latents.shape[3:]) / self.scaling_factor
        x = self.vae.decode(z.to(self.vae.dtype)).sample
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).reshape(b, t, *x.shape[2:], 3).cpu().numpy()


def fingerprint_folder(folder: str | Path) -> str:
    """sha256 over the weight files of a diffusers folder (names and bytes), first 16 hex digits."""
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.safetensors")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def detect_family(folder: str | Path) -> str:
    """`unet3d` for ModelScope / ZeroScope folders, `animatediff` for AnimateDiff ones."""
    index_path = Path(folder) / "model_index.json"
    if not index_path.exists():
        raise FileNotFoundError(f"{folder}: not a diffusers model folder (no model_index.json)")
    index = json.loads(index_path.read_text())
    unet_class = (index.get("unet") or [None, None])[1]
    if unet_class == "UNet3DConditionModel":
        return "unet3d"
    if unet_class in ("UNetMotionModel", "UNet2DConditionModel") and "motion_adapter" in index:
        return "animatediff"
    raise ValueError(
        f"{folder}: unknown model family (pipeline {index.get('_class_name')!r}, unet {unet_class!r}); "
        f"supported: {', '.join(FAMILIES)}"
    )


def load_base(folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> BaseModel:
    """Load a base model from a local diffusers folder (see `motioncrafter.storage` for URIs)."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    family = detect_family(folder)
    if family == "unet3d":
        from diffusers import UNet3DConditionModel

        unet = UNet3DConditionModel.from_pretrained(folder / "unet")
    else:
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

        if (folder / "unet" / "config.json").exists() and "UNetMotionModel" in (folder / "unet" / "config.json").read_text():
            unet = UNetMotionModel.from_pretrained(folder / "unet")
        else:
            unet = UNetMotionModel.from_unet2d(
                UNet2DConditionModel.from_pretrained(folder / "unet"),
                MotionAdapter.from_pretrained(folder / "motion_adapter"),
            )
    base = BaseModel(
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        vae=AutoencoderKL.from_pretrained(folder / "vae"),
        unet=unet,
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"),
        family=family,
        fingerprint=fingerprint_folder(folder),
    )
    for module in (base.text_encoder, base.vae, base.unet):
        module.requires_grad_(False).eval()
    return base.to(device, dtype)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def open_base(cfg) -> BaseModel:
    """The base a `ModelConfig` names: the shipped MovingShapes base by default, else a local
    folder or an fsspec URI (copied once into `cfg.cache_dir`, keyed by URI and content)."""
    from motioncrafter.storage import local_copy
    from motioncrafter.toyworld import BASE_DIR

    source = cfg.base_model or str(BASE_DIR)
    folder = local_copy(source, Path(cfg.cache_dir).expanduser() / "models")
    return load_base(folder, resolve_device(cfg.device), getattr(torch, cfg.dtype))
