"""A text-to-video base model: the diffusers components and the few operations
every stage needs (encode prompts, frames <-> latents).

The components are stock diffusers / transformers modules; `BaseModel` only
keeps them together and knows the tensor layouts:
frames (B, T, H, W, 3) uint8  <->  latents (B, C, T, h, w) float.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.utils.checkpoint

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
    vocabulary: dict | None = None  # the base's own appearance-enhancement words (prompts.read_vocabulary)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The frozen base's dtype. Read off the text encoder, which is never tuned: tuned UNet
        weights are kept in float32 over a bfloat16 / float16 base (see `predict`)."""
        return next(self.text_encoder.parameters()).dtype

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
        with self.autocast():
            out = (unet or self.unet)(latents, t, encoder_hidden_states=text).sample
        return out.to(latents.dtype)

    def autocast(self):
        """Mixed precision over a bfloat16 / float16 base (the diffusers training-script convention):
        trainable weights stay float32, every op runs in the base's dtype. Off for a float32 base."""
        half = self.dtype in (torch.bfloat16, torch.float16)
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=half)

    @functools.cached_property
    def noise_scheduler(self):
        """The scheduler that noises training latents: DDPM over the folder's schedule (betas,
        prediction type), whatever class the folder samples with (Euler's add_noise, say,
        scales differently)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler.config)

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

    def decode_latents(self, latents: torch.Tensor, chunk: int = 0) -> np.ndarray:
        """Scaled latents (B, C, T, h, w) -> uint8 frames (B, T, H, W, 3).

        `chunk` frames per VAE call (0: all B x T at once), each moved off the device as uint8
        before the next: at real resolutions the decoder's full-size activations, not the UNet's,
        are what a render's memory peaks on (AnimateDiffPipeline's `decode_chunk_size`)."""
        b, c, t = latents.shape[:3]
        z = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, *latents.shape[3:]) / self.scaling_factor
        step = chunk or len(z)
        parts = []
        for i in range(0, len(z), step):
            x = self.vae.decode(z[i : i + step].to(self.vae.dtype)).sample
            parts.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
        x = torch.cat(parts)
        return x.permute(0, 2, 3, 1).reshape(b, t, *x.shape[2:], 3).numpy()


@contextlib.contextmanager
def dtype_read_once(model: torch.nn.Module):
    """Inside the block, `model.dtype` is read once and remembered; nothing inside may change it.

    diffusers' `ModelMixin.dtype` walks every submodule (for layerwise-casting hooks) on each
    read, and the UNet's forward reads it once per call: with a tuning run's LoRA layers
    that walk was ~10% of a tuning step on the tiny base (upstream keeps it uncached,
    diffusers PR 13571). A property is looked up on the class, so the model is given a
    subclass for the duration; the result of every call is the same.
    """
    cls, dtype = type(model), model.dtype
    model.__class__ = type(cls.__name__, (cls,), {"dtype": property(lambda self: dtype), "__module__": cls.__module__})
    try:
        yield
    finally:
        model.__class__ = cls


def set_gradient_checkpointing(unet: torch.nn.Module, enabled: bool) -> None:
    """Recompute each UNet block's activations in backward instead of keeping them.

    One mechanism for both families, per down / mid / up block: diffusers' UNet3DConditionModel
    declares no checkpointing support (0.42: `_supports_gradient_checkpointing = False`, and its
    3D blocks never read the flag). Non-reentrant `torch.utils.checkpoint`; while a block is
    recomputed its active LoRA adapters, their base layers' weights and the requires_grad flags
    are put back as they were in its forward: tuning switches all three between the passes of one
    step (`trainer._Branches`; the weights where a frozen LoRA runs merged into them), and a
    recomputation that differs from the forward is wrong (torch raises only when it notices).
    """
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        patched = "_mc_forward" in vars(block)
        if enabled and not patched:
            block._mc_forward = block.forward
            block.forward = functools.partial(_checkpointed, block)
        elif not enabled and patched:
            del block._mc_forward, block.forward  # the class's forward again


def _checkpointed(block: torch.nn.Module, *args, **kwargs):
    if not torch.is_grad_enabled():
        return block._mc_forward(*args, **kwargs)
    from peft.tuners.tuners_utils import BaseTunerLayer

    params = list(block.parameters())
    layers = [m for m in block.modules() if isinstance(m, BaseTunerLayer)]

    def state():
        return ([list(m.active_adapters) for m in layers], [m.get_base_layer().weight for m in layers],
                [p.requires_grad for p in params])

    def set_state(active, weights, flags):
        for layer, names, weight in zip(layers, active, weights):
            layer.set_adapter(names)  # (peft's set_adapter switches requires_grad too: set after)
            layer.get_base_layer().weight = weight
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)

    in_forward = state()

    @contextlib.contextmanager
    def as_in_forward():
        now = state()
        set_state(*in_forward)
        try:
            yield
        finally:
            set_state(*now)

    return torch.utils.checkpoint.checkpoint(
        block._mc_forward, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), as_in_forward()), **kwargs
    )


# Every file a model's weights can come in, pickled ones too: two bases that differ only in
# their .bin files must not share a fingerprint (and adapters could not tell them apart).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".gguf")


def fingerprint_folder(folder: str | Path) -> str:
    """sha256 over the weight files of a diffusers folder (names and bytes), first 16 hex digits."""
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        h.update(str(path.relative_to(root)).encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


_SAFE = re.compile(r"^(?:diffusion_pytorch_model|model)(?:\.(?P<variant>\w+))?(?:-\d{5}-of-\d{5})?\.safetensors$")


def weights_variant(component: Path) -> str | None:
    """The `variant` to load a component folder with: None when it has plain safetensors weights,
    else the one variant it ships (ModelScope: `*.fp16.safetensors` only). Refuses pickled-only
    components: nothing a user hands in is unpickled."""
    names = sorted(p.name for p in component.iterdir() if p.is_file())
    variants = {m["variant"] for m in map(_SAFE.match, names) if m}
    if None in variants:
        return None
    if len(variants) == 1:
        return variants.pop()
    if variants:
        raise ValueError(f"{component}: several weight variants {sorted(variants)} and no plain weights; keep one")
    pickled = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    if pickled:
        config = json.loads((component / "config.json").read_text()) if (component / "config.json").exists() else {}
        cls = config.get("_class_name") or (config.get("architectures") or ["<its class>"])[0]
        raise ValueError(
            f"{component}: only pickled weights ({', '.join(pickled)}); MotionCrafter loads safetensors only and never "
            f"unpickles a model file. Convert it once, where you trust the file: "
            f"`{cls}.from_pretrained('{component}').save_pretrained('{component}', safe_serialization=True)` "
            f"(add variant='fp16' to both for *.fp16.bin files)"
        )
    raise FileNotFoundError(f"{component}: no weights (expected diffusion_pytorch_model.safetensors or model.safetensors)")


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
    """Load a base model from a local diffusers folder (see `motioncrafter.storage` for URIs).

    Published layouts: ModelScope / ZeroScope (`TextToVideoSDPipeline`, with or without the
    `fp16` variant), AnimateDiff as `AnimateDiffPipeline` saves it (unet/ a UNetMotionModel)
    or as an image UNet beside motion_adapter/. Safetensors only; the scheduler is the class
    the folder names (what `render.scheduler = "base"` samples with).
    """
    import diffusers
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from motioncrafter.prompts import read_vocabulary

    folder = Path(folder)
    family = detect_family(folder)

    def load(cls, name: str):
        path = folder / name
        if not path.is_dir():
            raise FileNotFoundError(f"{folder}: no {name}/ folder, which a {family} base needs")
        return cls.from_pretrained(path, variant=weights_variant(path), use_safetensors=True, torch_dtype=dtype)

    if family == "unet3d":
        unet = load(diffusers.UNet3DConditionModel, "unet")
    elif json.loads((folder / "unet" / "config.json").read_text()).get("_class_name") == "UNetMotionModel":
        unet = load(diffusers.UNetMotionModel, "unet")
    else:
        unet = diffusers.UNetMotionModel.from_unet2d(load(diffusers.UNet2DConditionModel, "unet"),
                                                     load(diffusers.MotionAdapter, "motion_adapter")).to(dtype)
    sched_cfg = diffusers.DDIMScheduler.load_config(folder / "scheduler")
    sched_cls: Any = getattr(diffusers, str(sched_cfg.get("_class_name")), None)
    if not (isinstance(sched_cls, type) and issubclass(sched_cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{folder}/scheduler: {sched_cfg.get('_class_name')!r} is not a diffusers scheduler")
    base = BaseModel(
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=load(CLIPTextModel, "text_encoder"),
        vae=load(AutoencoderKL, "vae"),
        unet=unet,
        scheduler=cast(Any, sched_cls).from_config(sched_cfg),
        family=family,
        fingerprint=fingerprint_folder(folder),
        vocabulary=read_vocabulary(folder),
    )
    for module in (base.text_encoder, base.vae, base.unet):
        module.requires_grad_(False).eval()
    return base.to(device, dtype)


def resolve_device(name: str) -> str:
    """`model.device` outside Ray: "auto" is the first GPU if torch sees one."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def open_base(cfg, device: str | None = None) -> BaseModel:
    """The base a `ModelConfig` names: the shipped MovingShapes base by default, else a local
    folder or an fsspec URI (copied once into `cfg.cache_dir`, keyed by URI and content).
    On `device` when given (a Ray worker's: `pipelines.devices.worker_device`), else `cfg.device`."""
    from motioncrafter.storage import local_copy
    from motioncrafter.toyworld import BASE_DIR

    source = cfg.base_model or str(BASE_DIR)
    folder = local_copy(source, Path(cfg.cache_dir).expanduser() / "models")
    return load_base(folder, device or resolve_device(cfg.device), getattr(torch, cfg.dtype))
