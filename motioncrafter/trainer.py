"""`tune_clip`: one reference clip -> one motion adapter.

Every mode runs through the same loop; a mode only decides which adapters
exist and which loss terms are on (see `losses` for the formulas):

  mode            trained                    loss terms
  motioncrafter   temporal LoRA + spatial    L_tmp + L_sp + lambda * L_app
  temporal_only   temporal LoRA              L_tmp
  motiondirector  temporal LoRA + spatial    L_tmp (appearance-debiased) + L_sp
  full_finetune   the whole UNet             L_tmp

The spatial path's LoRA sits in the temporal path too, frozen there (the
parallel architecture: it soaks up the clip's appearance so the temporal branch
does not have to); it is thrown away after tuning. For L_app the frozen base is
the same UNet with its adapters switched off (LoRA), or a frozen copy of the
UNet when the temporal branch is tuned in full.

The base model is left exactly as it was: injected layers are removed and
tuned weights restored when the call returns.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from motioncrafter import adapters as ad
from motioncrafter import losses
from motioncrafter.base import BaseModel
from motioncrafter.branches import branch_parameters, lora_targets
from motioncrafter.config import AdapterConfig, EnhanceConfig, TuneConfig
from motioncrafter.engines import make_engine
from motioncrafter.prompts import enhance

MOTION, SPATIAL = "_tune_motion", "_tune_spatial"


@dataclass
class TuneResult:
    adapter: ad.Adapter
    history: list[dict] = field(default_factory=list)  # loss components every `log_every` steps
    seconds: float = 0.0
    peak_memory_bytes: int | None = None  # accelerator peak; None on CPU


def clip_hash(frames: np.ndarray) -> str:
    """Content hash of decoded frames: the adapter's link to its reference clip."""
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()[:16]


def _frame_indices(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """`num_frames` frames spread over the clip."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got shape {frames.shape}")
    if len(frames) < num_frames:
        raise ValueError(f"the clip has {len(frames)} frames; tuning needs at least {num_frames} (tune.num_frames)")
    return np.linspace(0, len(frames) - 1, num_frames).round().astype(int)


class _Branches:
    """The trainable groups of one tuning run and how to switch them per forward pass."""

    def __init__(self, base: BaseModel, mode: str, acfg: AdapterConfig, tcfg: TuneConfig):
        unet = base.unet
        self.base = base
        self.unet, self.mode, self.kind = unet, mode, "full" if mode == "full_finetune" else acfg.kind
        self.frozen_copy = None
        self.lora: dict[str, dict] = {}
        torch.manual_seed(tcfg.seed)  # LoRA initialisation
        if mode == "full_finetune":
            self.groups = {MOTION: dict(unet.named_parameters())}
        elif self.kind == "full":
            if mode == "motioncrafter":  # a frozen base for L_app, before any weight moves
                self.frozen_copy = copy.deepcopy(unet).requires_grad_(False)
            self.groups = {MOTION: branch_parameters(unet, "temporal")}
        else:
            self.lora[MOTION] = ad.inject_lora(unet, MOTION, lora_targets(unet, "temporal"), acfg.rank, acfg.alpha)
            self.groups = {MOTION: {n: p for n, p in unet.named_parameters() if f".{MOTION}." in n}}
        if mode in ("motioncrafter", "motiondirector"):
            targets = lora_targets(unet, "spatial")
            self.lora[SPATIAL] = ad.inject_lora(unet, SPATIAL, targets, acfg.spatial_rank, acfg.spatial_rank)
            self.groups[SPATIAL] = {n: p for n, p in unet.named_parameters() if f".{SPATIAL}." in n}
        self.original = {n: p.detach().clone() for n, p in self.groups[MOTION].items()} if self.kind == "full" else {}

    def param_groups(self, tcfg: TuneConfig) -> list[dict]:
        lrs = {MOTION: tcfg.lr, SPATIAL: tcfg.spatial_lr}
        return [{"params": list(ps.values()), "lr": lrs[g]} for g, ps in self.groups.items()]

    def forward(self, active: list[str], train: str | None, x, t, text) -> torch.Tensor:
        """UNet prediction with only `active` adapters on and only group `train` receiving gradients."""
        if self.lora:
            ad.set_active(self.unet, [a for a in active if a in self.lora])
        for group, params in self.groups.items():
            for p in params.values():
                p.requires_grad_(group == train)
        return self.base.predict(x, t, text)

    def enable_grads(self) -> None:
        """Turn every group's requires_grad back on before backward.

        Which group a loss term reaches is fixed when `forward` records its graph, but
        autograd skips a leaf whose requires_grad is off at backward time: a group switched
        off by a later forward pass would silently get no gradient at all.
        """
        for params in self.groups.values():
            for p in params.values():
                p.requires_grad_(True)

    @torch.no_grad()
    def base_forward(self, x, t, text) -> torch.Tensor:
        if self.frozen_copy is not None:
            return self.base.predict(x, t, text, unet=self.frozen_copy)
        with ad.base_only(self.unet):
            return self.base.predict(x, t, text)

    def export(self, gather) -> dict[str, torch.Tensor]:
        """The motion adapter's tensors (full weights, or peft's LoRA state dict)."""
        with gather(list(self.groups[MOTION].values())):
            if self.kind == "full":
                return {n: p.detach().clone().cpu() for n, p in self.groups[MOTION].items()}
            return ad.lora_state_dict(self.unet, MOTION)

    def restore(self) -> None:
        """Leave the base as it was: remove tuning LoRAs, put full weights back, freeze."""
        for name in self.lora:
            ad.delete_lora(self.unet, name)
        with torch.no_grad():
            for n, p in self.groups[MOTION].items():
                if n in self.original:
                    p.copy_(self.original[n])
        self.unet.requires_grad_(False)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def tune_clip(
    base: BaseModel,
    frames: np.ndarray,
    prompt: str,
    tune: TuneConfig = TuneConfig(),
    adapter: AdapterConfig = AdapterConfig(),
    enhance_cfg: EnhanceConfig | None = None,
    subject: str | None = None,
    latents: torch.Tensor | None = None,
) -> TuneResult:
    """Learn the motion of `frames` (uint8 (T, H, W, 3)) captioned `prompt`; returns the motion adapter.

    `latents`: the clip's latents (C, T, h, w) as `base.encode_frames` gives them (the
    pipeline caches them at ingest); with them the VAE does not run again here.

    Deterministic given `tune.seed`. Under torch.distributed (DeepSpeed engine,
    several ranks) every rank tunes the same clip with its own noise draws and
    gradients are averaged; every rank returns the same adapter.
    """
    if not prompt or not prompt.strip():
        raise ValueError("tune_clip: the prompt is empty")
    frames = np.asarray(frames)
    idx = _frame_indices(frames, tune.num_frames)
    frames = frames[idx]
    enhance_cfg = enhance_cfg or EnhanceConfig()
    rank, world = _rank_and_world()
    started = time.time()
    if base.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(base.device)

    unet = base.unet
    was_training = unet.training
    with torch.no_grad():
        x0 = base.encode_frames(frames[None]) if latents is None else torch.as_tensor(latents, device=base.device)[None, :, idx]
        x0 = x0.repeat(tune.batch, 1, 1, 1, 1)
        text = base.encode_prompts([prompt]).repeat(tune.batch, 1, 1)
    branches = _Branches(base, tune.mode, adapter, tune)
    engine = make_engine(unet, branches.param_groups(tune), tune)
    gen = torch.Generator().manual_seed(tune.seed * 1_000_003 + rank)  # ranks draw different noise
    prompt_rng = random.Random(tune.seed * 7919 + rank)
    has_spatial, use_app = SPATIAL in branches.groups, tune.mode == "motioncrafter" and tune.lambda_app > 0
    history: list[dict] = []
    bar = tqdm(range(tune.steps), desc=f"tune {tune.mode}", disable=not tune.progress or rank != 0, leave=False)
    try:
        unet.train()
        for step in bar:
            noisy = losses.add_noise(base.scheduler, x0, gen)
            zt, y, t = noisy.latents, noisy.target, noisy.timesteps
            active = [MOTION, SPATIAL] if has_spatial else [MOTION]
            pred = branches.forward(active, MOTION, zt, t, text)
            if tune.mode == "motiondirector":
                anchor = int(torch.randint(0, zt.shape[2], (1,), generator=gen))
                parts = {"tmp": losses.denoising(losses.debias(pred, anchor, tune.beta), losses.debias(y, anchor, tune.beta))}
            else:
                parts = {"tmp": losses.denoising(pred, y)}
            if has_spatial:
                f = int(torch.randint(0, zt.shape[2], (1,), generator=gen))
                one = slice(f, f + 1)
                pred_f = branches.forward([SPATIAL], SPATIAL, zt[:, :, one], t, text)
                parts["sp"] = losses.denoising(pred_f, y[:, :, one])
            if use_app:
                text_e = base.encode_prompts([enhance(prompt, prompt_rng, enhance_cfg, subject)] * tune.batch)
                reference = branches.base_forward(zt, t, text_e)
                parts["app"] = losses.appearance_normalization(branches.forward([MOTION], MOTION, zt, t, text_e), reference)
            loss = parts["tmp"] + parts.get("sp", 0.0) + tune.lambda_app * parts.get("app", 0.0)
            branches.enable_grads()
            engine.backward(loss)
            engine.step()
            if step % tune.log_every == 0 or step == tune.steps - 1:
                row = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
                history.append(row)
                bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "step"})
        tensors = branches.export(engine.gather)
    finally:
        engine.close()
        branches.restore()
        unet.train(was_training)

    seconds = time.time() - started
    meta = {
        "kind": branches.kind,
        "mode": tune.mode,
        "family": base.family,
        "base_fingerprint": base.fingerprint,
        "lora": branches.lora.get(MOTION),
        "rank": adapter.rank if branches.kind == "lora" else None,
        "targets": sorted(branches.lora[MOTION]["target_modules"]) if MOTION in branches.lora else sorted(tensors),
        "tune_config": asdict(tune),
        "adapter_config": asdict(adapter),
        "reference": {"prompt": prompt, "subject": subject, "clip_sha256": clip_hash(frames)},
        "train_seconds": round(seconds, 3),
        "world_size": world,
    }
    peak = torch.cuda.max_memory_allocated(base.device) if base.device.type == "cuda" else None
    return TuneResult(ad.Adapter(tensors, meta), history, seconds, peak)

