"""Pretrain the tiny MovingShapes text-to-video base from scratch on a CPU.

    python -m motioncrafter.toyworld.pretrain --out motioncrafter/toyworld/base

Two stages, each gated on its own measure before the next starts (a base is
only as good as its autoencoder):
1. the `AutoencoderKL`, on frames, with the object's pixels weighted up so small
   objects keep their colour; gate: colour / shape / background accuracy of
   reconstructions;
2. the UNet (`UNet3DConditionModel`; `--family animatediff`: AnimateDiff's `UNetMotionModel`; the
   `CLIPTextModel` stays frozen at its seeded init), on cached
   latents of held-in motions only: v-prediction with the plain (unweighted) v loss on
   the base's noise-shifted schedule (see `TinyBaseConfig.snr_shift`), warm-up + cosine
   learning rate, EMA weights, 10% empty prompts for classifier-free
   guidance. Every `--eval-every` steps the EMA model renders fixed prompts and
   colour / shape / direction accuracy is appended to `curve.jsonl`.

Deterministic from `--seed`: every batch is drawn from a generator seeded by
(seed, step), so a run resumed from its checkpoint (written to `--work` every
`--ckpt-every` steps, safetensors only) continues exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from motioncrafter.base import BaseModel, fingerprint_folder
from motioncrafter.metrics.shapes import direction, observe
from motioncrafter.render import RenderConfig, render
from motioncrafter.toyworld.model import TinyBaseConfig, build_components, write_tokenizer
from motioncrafter.toyworld.world import (
    BACKGROUNDS,
    HELD_IN_MOTIONS,
    HELD_OUT_MOTIONS,
    LINEAR_MOTIONS,
    WorldConfig,
    render as render_clip,
    sample_specs,
)


def _rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, step])


def _frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1


# ----------------------------------------------------------------- stage 1: VAE


def _passes(gate: dict, threshold: float) -> bool:
    """Colour and background must survive the autoencoder. Shape is logged, not gated: at
    this CPU budget the decoder draws small objects as soft blobs (see the README)."""
    return bool(gate) and min(gate["colour"], gate["background"]) >= threshold


def train_vae(vae, args, world: WorldConfig, log) -> dict:
    """Train until the reconstructions pass the gate (checked every `vae_check_every` steps).

    The weights at each check go to `<work>/vae_last`; a restarted run continues from there.
    """
    last = Path(args.work) / "vae_last"
    start = 0
    if (last / "progress.json").exists():
        vae.load_state_dict(type(vae).from_pretrained(last).state_dict())
        start = json.loads((last / "progress.json").read_text())["step"]
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    clips_per_step = max(1, args.vae_batch // world.num_frames)
    bar = tqdm(range(start, args.vae_steps), desc="vae", initial=start, total=args.vae_steps)
    gate: dict = {}
    for step in bar:
        vae.train()
        specs = sample_specs(clips_per_step, seed=int(_rng(args.seed, step, 1).integers(2**31)), cfg=world)
        frames = np.concatenate([render_clip(s, world).frames for s in specs])
        x = _frames_to_tensor(frames)
        bg = torch.tensor([BACKGROUNDS[s.background] for s in specs], dtype=torch.float32)
        bg = bg.repeat_interleave(world.num_frames, 0)[:, :, None, None] / 127.5 - 1
        # objects cover ~10% of a frame: weight their pixels so colour and edges are not averaged away
        weight = 1 + args.vae_fg_weight * ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (weight * (recon - x) ** 2).mean() + args.vae_kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.vae_check_every == 0:
            vae.eval()
            gate = vae_gate(vae, world, args.seed)
            log({"stage": "vae", "step": step + 1, "loss": loss.item(), "gate": gate})
            vae.save_pretrained(last)
            (last / "progress.json").write_text(json.dumps({"step": step + 1}))
            if _passes(gate, args.vae_gate):
                break
    vae.eval()
    return gate or vae_gate(vae, world, args.seed)


@torch.no_grad()
def vae_gate(vae, world: WorldConfig, seed: int, count: int = 96) -> dict:
    """Colour / shape / background / direction accuracy of reconstructed clips."""
    specs = sample_specs(count, seed=seed + 999, motions=LINEAR_MOTIONS, cfg=world)
    hits = {"colour": 0, "shape": 0, "background": 0, "direction": 0}
    for spec in specs:
        clip = render_clip(spec, world)
        recon = vae.decode(vae.encode(_frames_to_tensor(clip.frames)).latent_dist.mean).sample
        frames = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        obs = observe(frames)
        hits["colour"] += obs.colour == spec.colour
        hits["shape"] += obs.shape == spec.shape
        hits["background"] += obs.background == spec.background
        hits["direction"] += direction(obs) == spec.motion
    return {k: v / count for k, v in hits.items()}


@torch.no_grad()
def encode_dataset(vae, world: WorldConfig, count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Latent means (N, C, T, h, w) and captions of `count` held-in clips."""
    specs = sample_specs(count, seed=seed + 7, motions=HELD_IN_MOTIONS, cfg=world)
    latents = []
    for start in tqdm(range(0, count, 8), desc="encode"):
        frames = np.concatenate([render_clip(s, world).frames for s in specs[start : start + 8]])
        z = vae.encode(_frames_to_tensor(frames)).latent_dist.mean
        latents.append(z.reshape(-1, world.num_frames, *z.shape[1:]).permute(0, 2, 1, 3, 4))
    # contiguous, the layout the cache reloads, so a fresh run and a run from the cache hand the
    # same tensor to training (the resume mismatch itself was the global RNG, seeded per step below)
    return torch.cat(latents).contiguous(), [s.caption for s in specs]


# ---------------------------------------------------------------- stage 2: UNet


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.unet_steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def diffusion_loss(base: BaseModel, x0: torch.Tensor, captions: list[str], gen: torch.Generator):
    """Plain v-prediction loss.

    Not min-SNR weighting: in x0 terms it weights a step by its SNR when the SNR is small,
    which starves exactly the noisy steps where the prompt decides where the object goes
    (the first base, trained that way, ignored direction words: same loss with the right
    and a wrong direction in the caption). The plain v loss weights them by 1 + SNR.
    """
    sched = base.scheduler
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    xt = sched.add_noise(x0, noise, t)
    target = sched.get_velocity(x0, noise, t)
    pred = base.predict(xt, t, base.encode_prompts(captions))  # either family's call
    return F.mse_loss(pred, target)


def eval_prompts(world: WorldConfig, count: int = 24) -> list:
    return sample_specs(count, seed=1234, motions=LINEAR_MOTIONS, cfg=world)


@torch.no_grad()
def evaluate_base(base: BaseModel, world: WorldConfig, specs, seed: int = 0, steps: int = 20) -> dict:
    """Render each spec's caption once and score colour / shape / background / direction."""
    cfg = RenderConfig(num_steps=steps, num_frames=world.num_frames, height=world.resolution, width=world.resolution, max_batch=24)
    videos = render(base, [s.caption for s in specs], [seed + i for i in range(len(specs))], cfg)
    hits = {"colour": 0, "shape": 0, "background": 0, "direction": 0}
    for spec, video in zip(specs, videos):
        obs = observe(video)
        hits["colour"] += obs.colour == spec.colour
        hits["shape"] += obs.shape == spec.shape
        hits["background"] += obs.background == spec.background
        hits["direction"] += direction(obs) == spec.motion
    return {k: v / len(specs) for k, v in hits.items()}


def _trainable(base: BaseModel) -> list[tuple[str, torch.nn.Parameter]]:
    """The UNet only. The text encoder stays frozen at its seeded random init, as real bases keep
    their (pretrained) text encoder frozen: trained jointly, it collapsed the direction words (the
    first base's "upward" and "downward" captions differed by 3% in embedding, "red" and "green" by
    75%) before the UNet had learned to use them, and the base then ignored them."""
    return [(f"unet.{n}", p) for n, p in base.unet.named_parameters()]


def save_checkpoint(path: Path, step: int, base: BaseModel, opt, ema) -> None:
    named = _trainable(base)
    tensors = {name: p.detach().contiguous() for name, p in named}
    tensors |= {f"ema.{name}": s.contiguous() for (name, _), s in zip(named, ema.shadow_params)}
    for i, (_, p) in enumerate(named):
        for key, value in opt.state.get(p, {}).items():
            tensors[f"opt.{i}.{key}"] = value.reshape(-1) if value.dim() == 0 else value.contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step), "ema_step": str(ema.optimization_step)})
    tmp.replace(path)  # a crash mid-write never leaves a torn checkpoint


def load_checkpoint(path: Path, base: BaseModel, opt, ema) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    named = _trainable(base)
    state = {}
    for i, (name, p) in enumerate(named):
        p.data.copy_(tensors[name])
        ema.shadow_params[i].copy_(tensors[f"ema.{name}"])
        if f"opt.{i}.exp_avg" in tensors:
            state[i] = {k: tensors[f"opt.{i}.{k}"] for k in ("exp_avg", "exp_avg_sq")}
            state[i]["step"] = tensors[f"opt.{i}.step"].reshape(())
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    ema.optimization_step = int(meta["ema_step"])
    return int(meta["step"])


def train_unet(base: BaseModel, data: torch.Tensor, captions: list[str], args, world: WorldConfig, work: Path, log):
    from diffusers.training_utils import EMAModel

    params = [p for _, p in _trainable(base)]
    base.text_encoder.requires_grad_(False).eval()
    base.unet.requires_grad_(True).train()
    for module in base.unet.modules():
        # UNet3D hard-codes dropout 0.1 in its temporal convolutions: noise on the very path that
        # must learn where each frame is in time; a model this small needs no regularizer
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = EMAModel(params, decay=args.ema_decay, use_ema_warmup=True, power=0.75)
    # one checkpoint per family: a work folder shared by both must not resume one UNet into the other
    ckpt = work / ("unet_ckpt.safetensors" if args.family == "unet3d" else f"unet_{args.family}_ckpt.safetensors")
    start = load_checkpoint(ckpt, base, opt, ema) if ckpt.exists() else 0
    if start:
        print(f"resuming UNet training at step {start}")
    specs = eval_prompts(world, args.eval_prompts)
    bar = tqdm(range(start, args.unet_steps), desc="unet", initial=start, total=args.unet_steps)
    losses, t0 = [], time.time()
    for step in bar:
        gen = torch.Generator().manual_seed(int(_rng(args.seed, step, 2).integers(2**62)))
        # anything that draws from torch's global RNG (dropout layers, even at p=0) is seeded
        # per step too, or a resumed run would draw differently from an uninterrupted one
        torch.manual_seed(int(_rng(args.seed, step, 3).integers(2**62)))
        idx = torch.randint(0, len(data), (args.batch,), generator=gen)
        drop = torch.rand(args.batch, generator=gen) < args.cond_dropout
        batch_captions = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss = diffusion_loss(base, data[idx], batch_captions, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = step + 1
        if done % args.ckpt_every == 0 or done == args.unet_steps:
            save_checkpoint(ckpt, done, base, opt, ema)
        if args.stop_after and done >= args.stop_after:
            save_checkpoint(ckpt, done, base, opt, ema)
            raise SystemExit(f"stopped after step {done} (--stop-after); run again to resume")
        if args.eval_prompts and (done % args.eval_every == 0 or done == args.unet_steps):
            ema.store(params)
            ema.copy_to(params)
            base.unet.eval()
            scores = evaluate_base(base, world, specs)
            ema.restore(params)
            base.unet.train()
            log({"stage": "unet", "step": done, "loss": float(np.mean(losses[-args.eval_every :])),
                 "minutes": (time.time() - t0) / 60, **scores})
    ema.copy_to(params)
    base.unet.requires_grad_(False).eval()


# ------------------------------------------------------------------- the script


def export(base: BaseModel, out: Path, meta: dict) -> str:
    """The base as its family's diffusers pipeline saves it (AnimateDiff's: unet/ a UNetMotionModel)."""
    from diffusers import AnimateDiffPipeline, TextToVideoSDPipeline

    parts = dict(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet, scheduler=base.scheduler)
    pipe = TextToVideoSDPipeline(**parts) if base.family == "unet3d" else AnimateDiffPipeline(**parts, motion_adapter=None)
    pipe.save_pretrained(str(out), safe_serialization=True)
    fingerprint = fingerprint_folder(out)
    (out / "toyworld.json").write_text(json.dumps({**meta, "fingerprint": fingerprint}, indent=2) + "\n")
    write_vocabulary(out)
    return fingerprint


def write_vocabulary(out: Path) -> None:
    """The base's own enhancement vocabulary (prompts.VOCABULARY_FILE): the world's words only."""
    from motioncrafter.prompts import VOCABULARY_FILE
    from motioncrafter.toyworld.world import enhance_vocabulary

    (out / VOCABULARY_FILE).write_text(json.dumps(enhance_vocabulary(), indent=2) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="motioncrafter/toyworld/base", help="diffusers folder to write")
    p.add_argument("--work", default=".pretrain", help="checkpoints, latents cache and logs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", choices=("unet3d", "animatediff"), default="unet3d",
                   help="the UNet: ModelScope's UNet3D (the shipped base) or AnimateDiff's UNetMotionModel")
    p.add_argument("--vae", default="", help="a trained AutoencoderKL folder to use instead of training stage 1")
    p.add_argument("--vae-steps", type=int, default=3000, help="at most; stops once the gate passes")
    p.add_argument("--vae-check-every", type=int, default=250)
    p.add_argument("--vae-batch", type=int, default=32, help="frames per VAE step")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-fg-weight", type=float, default=10.0)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--vae-gate", type=float, default=0.95, help="min colour/background accuracy of reconstructions")
    p.add_argument("--clips", type=int, default=3000, help="held-in clips encoded for UNet training")
    p.add_argument("--unet-steps", type=int, default=5000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cond-dropout", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-prompts", type=int, default=24, help="prompts rendered per evaluation (0: no evaluation)")
    p.add_argument("--stop-after", type=int, default=0, help="stop after this UNet step, as a crash would (tests resuming)")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    from diffusers import AutoencoderKL

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    world, model_cfg = WorldConfig(), TinyBaseConfig()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "curve.jsonl"

    def log(row: dict) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if row.get("stage") != "vae" or "gate" in row:
            tqdm.write(json.dumps(row))

    write_tokenizer(work / "tokenizer", model_cfg.max_tokens)
    parts = build_components(model_cfg, work / "tokenizer", seed=args.seed, family=args.family)
    t_start = time.time()

    vae_dir = Path(args.vae) if args.vae else work / "vae"
    if (vae_dir / "config.json").exists():
        parts["vae"] = AutoencoderKL.from_pretrained(vae_dir)
    elif args.vae:
        raise SystemExit(f"--vae {args.vae}: no AutoencoderKL there (config.json missing)")
    else:
        gate = train_vae(parts["vae"], args, world, log)
        if args.vae_gate and not _passes(gate, args.vae_gate):
            raise SystemExit(f"VAE gate failed: {gate} (need >= {args.vae_gate}); train it longer before the UNet")
        parts["vae"].save_pretrained(vae_dir)
    vae = parts["vae"].requires_grad_(False).eval()

    cache = work / f"latents_{args.clips}.safetensors"
    if cache.exists():
        data = load_file(str(cache))["latents"]
        captions = json.loads((work / f"captions_{args.clips}.json").read_text())
    else:
        data, captions = encode_dataset(vae, world, args.clips, args.seed)
        save_file({"latents": data.contiguous()}, str(cache))
        (work / f"captions_{args.clips}.json").write_text(json.dumps(captions))
    # unit-variance latents, the convention every diffusers VAE follows
    vae.register_to_config(scaling_factor=float(1 / data.std()))
    data = data * vae.config.scaling_factor

    base = BaseModel(**parts, family=args.family)
    train_unet(base, data, captions, args, world, work, log)
    meta = {
        "family": args.family,
        "world": asdict(world),
        "model": asdict(model_cfg),
        "held_out_motions": list(HELD_OUT_MOTIONS),
        "pretrain_args": vars(args),
        "pretrain_minutes": round((time.time() - t_start) / 60, 1),
        "parameters": {k: sum(p.numel() for p in getattr(base, k).parameters()) for k in ("text_encoder", "vae", "unet")},
    }
    print("fingerprint", export(base, out, meta))


if __name__ == "__main__":
    main()
