"""The project's batched sampler over diffusers components.

Many prompts x seeds in one call, classifier-free guidance with a negative
prompt, DDIM or DPM-Solver++ (multistep). Each sample's starting noise comes
from its own seed, so a sample is reproducible on its own, whatever batch it
was rendered in.

`cfg.adapter_schedule` scales the attached motion adapters per denoising step
(timestep-layered rendering): the early, noisy steps decide the motion, the late
ones the appearance, so e.g. `[[0, 1], [0.6, 0]]` lets the adapter shape the motion
and leaves the appearance to the base.

`cfg.guidance_split` splits classifier-free guidance over its two conditions, the
prompt and the motion adapters, as InstructPix2Pix does over its image and text, with
the adapters' weight s = `cfg.motion_guidance` and the text's g = `cfg.guidance_scale`:

  text_first     base(neg) + g (base(prompt) - base(neg)) + s (adapted(prompt) - base(prompt))
  adapter_first  base(neg) + s (adapted(neg) - base(neg)) + g (adapted(prompt) - adapted(neg))

Plain guidance, adapted(neg) + g (adapted(prompt) - adapted(neg)), is adapter_first
with s = 1. With d(x) = adapted(x) - base(x), the adapters' change, plain guidance is
d(neg) + g (d(prompt) - d(neg)) on top of the base's guided prediction: `text_first`
replaces that with s d(prompt), `adapter_first` scales its prompt-independent part
d(neg) by s. One more UNet pass per step (3 rows per sample, not 2).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from motioncrafter import adapters as ad
from motioncrafter.base import BaseModel, dtype_read_once
from motioncrafter.config import RenderConfig
from motioncrafter.progress import progress


def make_scheduler(base: BaseModel, name: str):
    """A fresh sampler over the base's schedule: "base" is the class its folder names."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cls = {"base": type(base.scheduler), "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}[name]
    return cls.from_config(base.scheduler.config)


def schedule_scale(schedule: list[list[float]], share: float) -> float:
    """The adapter scale factor `schedule` gives once `share` of the denoising steps are done."""
    factor = 1.0
    for start, scale in schedule:
        if share >= start:
            factor = scale
    return factor


def initial_noise(base: BaseModel, seeds: list[int], cfg: RenderConfig) -> torch.Tensor:
    """(N, C, T, h, w) Gaussian noise, sample i drawn from a generator seeded with seeds[i]."""
    down = 2 ** (len(base.vae.config.block_out_channels) - 1)
    shape = (base.unet.config.in_channels, cfg.num_frames, cfg.height // down, cfg.width // down)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(
        base.device, base.dtype
    )


@torch.no_grad()
def denoise(base: BaseModel, prompts: list[str], noise: torch.Tensor, cfg: RenderConfig) -> torch.Tensor:
    """Run the reverse diffusion for one batch; returns clean latents."""
    scheduler = make_scheduler(base, cfg.scheduler)
    scheduler.set_timesteps(cfg.num_steps, device=base.device)
    guided = cfg.guidance_scale != 1.0
    text = base.encode_prompts(([cfg.negative_prompt] * len(prompts) if guided else []) + list(prompts))
    latents = noise * scheduler.init_noise_sigma
    weights = ad.active_weights(base) if cfg.adapter_schedule or cfg.guidance_split != "none" else {}
    steps = scheduler.timesteps
    try:
        with dtype_read_once(base.unet):
            for i, t in enumerate(progress(steps, desc="denoise", disable=not cfg.progress, leave=False)):
                now = {name: w * schedule_scale(cfg.adapter_schedule, i / len(steps)) for name, w in weights.items()}
                model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
                n = len(latents)
                if now and cfg.guidance_split == "text_first":
                    ad.set_weights(base, dict.fromkeys(now, 0.0))
                    plain = base.predict(model_in, t, text)
                    ad.set_weights(base, now)
                    adapted = base.predict(model_in[n:], t, text[n:])
                    pred = _guided(plain, True, cfg.guidance_scale) + cfg.motion_guidance * (adapted - plain[n:])
                elif now and cfg.guidance_split == "adapter_first":
                    ad.set_weights(base, dict.fromkeys(now, 0.0))
                    base_neg = base.predict(model_in[:n], t, text[:n])
                    ad.set_weights(base, now)
                    adapted_neg, adapted = base.predict(model_in, t, text).chunk(2)
                    pred = base_neg + cfg.motion_guidance * (adapted_neg - base_neg) + cfg.guidance_scale * (adapted - adapted_neg)
                else:
                    if now:
                        ad.set_weights(base, now)
                    pred = _guided(base.predict(model_in, t, text), guided, cfg.guidance_scale)
                latents = scheduler.step(pred, t, latents).prev_sample
    finally:
        if weights:
            ad.set_weights(base, weights)
    return latents


def _guided(pred: torch.Tensor, guided: bool, scale: float) -> torch.Tensor:
    """Classifier-free guidance over a prediction whose first half is the negative prompt's."""
    if not guided:
        return pred
    uncond, cond = pred.chunk(2)
    return uncond + scale * (cond - uncond)


def render(base: BaseModel, prompts: list[str], seeds: list[int], cfg: RenderConfig = RenderConfig()) -> np.ndarray:
    """Render prompts[i] with seeds[i]; returns uint8 frames (N, T, H, W, 3)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"render: {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if not prompts:
        return np.zeros((0, cfg.num_frames, cfg.height, cfg.width, 3), np.uint8)
    noise = initial_noise(base, seeds, cfg)
    videos = []
    with vae_tiling(base.vae, cfg.vae_tiling):
        for start in range(0, len(prompts), cfg.max_batch):
            sl = slice(start, start + cfg.max_batch)
            videos.append(base.decode_latents(denoise(base, prompts[sl], noise[sl], cfg), cfg.decode_chunk))
    return np.concatenate(videos)


@contextlib.contextmanager
def vae_tiling(vae, enabled: bool):
    """diffusers' tiled decoding of the VAE while inside, when `enabled`; the resident base is left as it was."""
    if not enabled:
        yield
        return
    if not hasattr(vae, "enable_tiling"):
        raise ValueError(f"render.vae_tiling: the base's VAE ({type(vae).__name__}) has no tiled decoding")
    before = vae.use_tiling
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.use_tiling = before


def render_grid(
    base: BaseModel, prompts: list[str], seeds: list[int], cfg: RenderConfig = RenderConfig()
) -> tuple[list[tuple[str, int]], np.ndarray]:
    """Every prompt with every seed (prompt-major); returns the (prompt, seed) pairs and the videos."""
    pairs = [(p, s) for p in prompts for s in seeds]
    return pairs, render(base, [p for p, _ in pairs], [s for _, s in pairs], cfg)
