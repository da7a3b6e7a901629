"""CLIP text alignment and CLIP frame consistency, from a local CLIP model folder.

The folder is whatever `CLIPModel.save_pretrained` plus a CLIP tokenizer and
image processor wrote (e.g. a copy of openai/clip-vit-large-patch14). It is
configured by the user and never downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPModel, CLIPProcessor
from transformers.utils import ModelOutput


class ClipScorer:
    """Scores (T, H, W, 3) uint8 videos with a local CLIP model."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        self.path = Path(path)
        _check_clip_folder(self.path)
        self.device = torch.device(device)
        try:
            self.model = CLIPModel.from_pretrained(self.path, local_files_only=True).to(self.device).eval()
            self.processor = CLIPProcessor.from_pretrained(self.path, local_files_only=True)
        except OSError as err:
            raise ValueError(f"cannot load CLIP model, tokenizer or image processor from {self.path}: {err}") from err

    def text_alignment(self, frames: np.ndarray, prompt: str) -> float:
        """Mean over frames of cos(image embedding, prompt embedding), in [-1, 1]."""
        return float((self._image_embeddings(frames) @ self._text_embedding(prompt)).mean())

    def frame_consistency(self, frames: np.ndarray) -> float:
        """Mean cosine between embeddings of consecutive frames, in [-1, 1]; needs T >= 2."""
        if len(frames) < 2:
            raise ValueError(f"frame consistency needs at least 2 frames, got {len(frames)}")
        emb = self._image_embeddings(frames)
        return float((emb[1:] * emb[:-1]).sum(dim=-1).mean())

    @torch.inference_mode()
    def _image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        """(T, D) unit-norm image embeddings."""
        pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)
        return _unit(self.model.get_image_features(pixel_values=pixels))

    @torch.inference_mode()
    def _text_embedding(self, prompt: str) -> torch.Tensor:
        """(D,) unit-norm text embedding; prompts longer than the model's context are truncated."""
        tokens = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True).to(self.device)
        return _unit(self.model.get_text_features(**tokens))[0]


def _check_clip_folder(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"CLIP model folder {path} does not exist (it must be local: nothing is downloaded)")
    config = path / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type != "clip":
        found = f"model_type {model_type!r}" if config.is_file() else "no config.json"
        raise ValueError(f"{path} is not a CLIP model folder: expected model_type 'clip' in config.json, found {found}")


def _unit(features: torch.Tensor | ModelOutput) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding, 4.x the tensor itself
    emb = features if isinstance(features, torch.Tensor) else features.pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1)
