"""`tune_clip`: one reference clip -> one motion adapter.

Every mode runs through the same loop; a mode (`motioncrafter.modes`) only
decides which adapters exist and which loss terms are on (see `losses`):

  mode            trained                    loss terms
  motioncrafter   temporal LoRA + spatial    L_tmp + L_tmp(appearance-debiased) + L_sp + lambda * L_app
  temporal_only   temporal LoRA              L_tmp
  motiondirector  temporal LoRA + spatial    L_tmp + L_tmp(appearance-debiased) + L_sp
  full_finetune   the whole UNet             L_tmp

`tune.temporal_loss` overrides the mode's form of L_tmp, `tune.lr` its learning rate
and `adapter.rank` its LoRA rank; `tune.spatial_every` tunes the spatial LoRA on every
k-th step only (it stays on in every temporal pass).
`tune.spatial_pass` chooses how the spatial path is tuned: `frame` (MotionDirector's
and the paper's) by L_sp in a pass of its own on one random frame, `joint` by L_tmp
in the temporal pass itself (one UNet call per step instead of two).

The spatial path's LoRA sits in the temporal path too, frozen there (the
parallel architecture: it soaks up the clip's appearance so the temporal branch
does not have to), added into the weights it wraps for that pass; it is thrown
away after tuning. For L_app the frozen base is
the same UNet with its adapters switched off (LoRA), or a frozen copy of the
UNet when the temporal branch is tuned in full.

`tune.augment` shows each step the clip in one of its views (`clip_views`): the same
motion in other colours, so the look is not there to learn (off: on the dev clips it
cost the motion as well), or moved elsewhere in the frame, so its place is not.

`tune.spatial_warmup` tunes the spatial LoRA alone for that many steps first, so the
clip's look is taken up before the motion adapter starts learning; `tune.spatial_freeze`
then keeps it as it is, folded into the weights, so the motion adapter's steps run one
UNet call each with no spatial LoRA layers in it.

Timestep-layered tuning: each term applies on its own range of the training
schedule (`tune.motion_timesteps`, `tune.appearance_timesteps`); a step draws its
timestep from the union, so with disjoint ranges a step pays for one term only.

The base model is left exactly as it was: injected layers are removed and
tuned weights restored when the call returns; the caller's RNG state too.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import random
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from motioncrafter import adapters as ad
from motioncrafter import losses
from motioncrafter.base import BaseModel, dtype_read_once, set_gradient_checkpointing
from motioncrafter.branches import branch_parameters, lora_targets
from motioncrafter.config import AUGMENTS, AdapterConfig, EnhanceConfig, TuneConfig
from motioncrafter.engines import make_engine
from motioncrafter.modes import MODES, Mode
from motioncrafter.progress import progress
from motioncrafter.prompts import enhance, vocabulary_for
from motioncrafter.runformat import AdapterMeta, AdapterReference

MOTION, SPATIAL = "_tune_motion", "_tune_spatial"


@dataclass
class TuneResult:
    adapter: ad.Adapter
    history: list[dict] = field(default_factory=list)  # loss components every `log_every` steps (negative: the spatial warm-up's)
    seconds: float = 0.0
    peak_memory_bytes: int | None = None  # accelerator peak; None on CPU
    snapshots: dict[int, ad.Adapter] = field(default_factory=dict)  # the adapter after each of `snapshot_at` steps


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


def clip_views(frames: np.ndarray, augment: str) -> np.ndarray:
    """The clip (T, H, W, 3) as `tune.augment` shows it, the original first: (V, T, H, W, 3).

    `channels`: its 6 RGB channel orders (hue moves, grays stay); `colour`: those and
    their negatives (255 - x: dark and light swap, so backgrounds move too). Every colour
    view has the clip's exact motion in other colours (a colour with two equal channels
    has fewer distinct orders: views may repeat), so the look the prompt leaves out is
    not there to memorize. On MovingShapes it cost the motion too (dev sweeps 23-24).

    `shift`: the clip moved by an eighth of its size in each of the 8 directions, its
    edge pixels repeated into the uncovered border: the same motion starting elsewhere,
    so where the clip's object stands is not there to memorize (motion fidelity does not
    ask for it, and seeds that all start where the clip did are less diverse). On
    MovingShapes it kept the seeds' diversity and cost a third of the motion (dev sweep 35).
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augmentation {augment!r}; expected one of {AUGMENTS}")
    if augment == "none":
        return frames[None]
    if augment == "shift":
        height, width = frames.shape[1:3]
        s = max(1, min(height, width) // 8)
        padded = np.pad(frames, ((0, 0), (s, s), (s, s), (0, 0)), mode="edge")
        offsets = [(0, 0)] + [(dy, dx) for dy in (-s, 0, s) for dx in (-s, 0, s) if (dy, dx) != (0, 0)]
        return np.stack([padded[:, s - dy:s - dy + height, s - dx:s - dx + width] for dy, dx in offsets])
    views = [frames[..., list(order)] for order in itertools.permutations(range(3))]
    if augment == "colour":
        views += [255 - v for v in views]
    return np.stack(views)


class _Branches:
    """The trainable groups of one tuning run and how to switch them per forward pass."""

    def __init__(self, base: BaseModel, mode: Mode, acfg: AdapterConfig, tcfg: TuneConfig):
        self.adapter = acfg = with_mode_adapter(acfg, mode)
        unet = base.unet
        self.base = base
        self.unet, self.kind = unet, "full" if mode.trains_unet else acfg.kind
        self.frozen_copy = None
        self.lora: dict[str, dict] = {}
        if mode.trains_unet:
            self.groups = {MOTION: dict(unet.named_parameters())}
        elif self.kind == "full":
            if mode.appearance_norm and tcfg.lambda_app > 0:  # a frozen base for L_app, before any weight moves
                self.frozen_copy = copy.deepcopy(unet).requires_grad_(False)
            self.groups = {MOTION: branch_parameters(unet, "temporal")}
        else:
            targets = lora_targets(unet, "temporal", acfg.targets)
            self.lora[MOTION] = ad.inject_lora(unet, MOTION, targets, acfg.rank, acfg.alpha, acfg.dropout)
            self.groups = {MOTION: {n: p for n, p in unet.named_parameters() if f".{MOTION}." in n}}
        if mode.spatial_path:
            targets = lora_targets(unet, "spatial") + (lora_targets(unet, "resnet") if acfg.spatial_targets == "resnets" else [])
            self.lora[SPATIAL] = ad.inject_lora(unet, SPATIAL, targets, acfg.spatial_rank, acfg.spatial_rank, acfg.dropout)
            self.groups[SPATIAL] = {n: p for n, p in unet.named_parameters() if f".{SPATIAL}." in n}
        self.original = {n: p.detach().clone() for n, p in self.groups[MOTION].items()} if self.kind == "full" else {}
        self.folded: dict[str, torch.Tensor] = {}  # weight name -> its value before `fold_spatial`
        self.layers = ad.tuner_layers(unet) if self.lora else []  # found once: `forward` switches on every pass
        # a pass that does not tune the spatial LoRA runs it inside the weights (`ad.merged_into_weights`);
        # not where dropout makes it differ, nor under ZeRO-3, whose weights are partitioned
        self.merge_frozen_spatial = acfg.dropout == 0 and not (tcfg.engine == "deepspeed" and tcfg.zero_stage == 3)
        self.tuned: set[str] = set()  # the groups some pass of the current step tunes (`forward`'s `train`)
        self.agree_across_ranks = tcfg.engine == "deepspeed" and _rank_and_world()[1] > 1

    def param_groups(self, tcfg: TuneConfig, only: list[str] | None = None) -> list[dict]:
        """The optimizer's groups: every trainable group, or `only` these."""
        lrs = {MOTION: tcfg.lr, SPATIAL: tcfg.spatial_lr}
        return [{"params": list(ps.values()), "lr": lrs[g]} for g, ps in self.groups.items() if only is None or g in only]

    def find_parameters(self) -> None:
        """Look the groups' parameters up again by name, for a UNet whose parameter objects were replaced."""
        params = dict(self.unet.named_parameters())
        self.groups = {g: {n: params[n] for n in group} for g, group in self.groups.items()}

    def forward(self, active: list[str], train: list[str], x, t, text) -> torch.Tensor:
        """UNet prediction with only `active` adapters on and only the groups in `train` receiving gradients."""
        merge = self.merge_frozen_spatial and SPATIAL in active and SPATIAL not in train and SPATIAL in self.groups
        ad.switch(self.layers, [a for a in active if a != SPATIAL] if merge else active)
        self.tuned.update(train)
        self.set_trainable(train)
        with ad.merged_into_weights(self.layers, SPATIAL) if merge else contextlib.nullcontext():
            return self.base.predict(x, t, text)

    def enable_grads(self) -> None:
        """Before backward: requires_grad on for the groups this step's passes tune, off for the rest.

        Which group a loss term reaches is fixed when `forward` records its graph, but
        autograd skips a leaf whose requires_grad is off at backward time: a group switched
        off by a later forward pass would silently get no gradient at all. A group no pass
        tuned (the spatial LoRA between `spatial_every` steps, or masked) stays off, so that
        it does not move: torch's AdamW skips a parameter without a gradient, and DeepSpeed,
        which gives every trainable parameter without one a zero gradient (Adam's momentum
        would move it), steps an AdamW that skips a group whose parameters are off
        (`distributed._AdamWOverTunedGroups`). Ranks must reduce the same parameters, so
        under DeepSpeed a group is on where any rank tuned it.
        """
        tuned = self.tuned
        if self.agree_across_ranks:
            flags = torch.tensor([float(g in tuned) for g in self.groups], device=self.base.device)  # nccl: on the GPU
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            tuned = {g for g, flag in zip(self.groups, flags.tolist()) if flag}
        self.set_trainable(tuned)

    def set_trainable(self, groups: Collection[str]) -> None:
        """requires_grad on for the parameters of `groups`, off for every other group's."""
        for group, params in self.groups.items():
            for p in params.values():
                p.requires_grad_(group in groups)

    def new_step(self) -> None:
        self.tuned = set()

    @torch.no_grad()
    def base_forward(self, x, t, text) -> torch.Tensor:
        if self.frozen_copy is not None:
            return self.base.predict(x, t, text, unet=self.frozen_copy)
        with ad.base_only(self.unet, self.layers):
            return self.base.predict(x, t, text)

    @torch.no_grad()
    def fold_spatial(self) -> None:
        """Add the spatial LoRA's change into the weights it wraps and remove its layers (what
        peft's merge does, then unwrapped): the same outputs, with no LoRA layers to run."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, layer in self.unet.named_modules():
            if isinstance(layer, BaseTunerLayer) and SPATIAL in getattr(layer, "lora_A", {}):
                weight = layer.get_base_layer().weight
                self.folded[f"{name}.weight"] = weight.detach().clone()
                weight += layer.get_delta_weight(SPATIAL).to(weight.dtype)
        ad.delete_lora(self.unet, SPATIAL)
        del self.groups[SPATIAL]
        self.layers = ad.tuner_layers(self.unet)

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
            weights = dict(self.unet.named_parameters())
            for n, value in self.folded.items():
                weights[n].data = value
            for n, p in self.groups[MOTION].items():
                if n in self.original:
                    p.data = self.original[n]  # its dtype too: the engine made trainable weights float32
        self.unet.requires_grad_(False)


def with_mode_recipe(tune: TuneConfig, mode: Mode) -> TuneConfig:
    """`tune` with the mode's own temporal loss and learning rate where it leaves them to the
    mode (`auto`, 0), so the adapter records the recipe that ran."""
    temporal_loss = mode.temporal_loss if tune.temporal_loss == "auto" else tune.temporal_loss
    return replace(tune, lr=tune.lr or mode.lr, temporal_loss=temporal_loss)


def with_mode_adapter(adapter: AdapterConfig, mode: Mode) -> AdapterConfig:
    """`adapter` with the mode's LoRA rank where it leaves it to the mode (0), and alpha = rank where unset (0)."""
    rank = adapter.rank or mode.rank
    return replace(adapter, rank=rank, alpha=adapter.alpha or float(rank))


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
    snapshot_at: tuple[int, ...] = (),
) -> TuneResult:
    """Learn the motion of `frames` (uint8 (T, H, W, 3)) captioned `prompt`; returns the motion adapter.

    `latents`: the clip's latents (C, T, h, w) as `base.encode_frames` gives them (the
    pipeline caches them at ingest); with them the VAE does not run again here, unless
    `tune.augment` asks for other views of the clip (`clip_views`), which it encodes.

    `snapshot_at`: step counts after which a copy of the adapter is kept too
    (`TuneResult.snapshots`); the learning rate is constant after its warm-up, so the
    snapshot after k steps is the adapter a k-step run gives.

    Deterministic given `tune.seed`. Under torch.distributed (DeepSpeed engine,
    several ranks) every rank tunes the same clip with its own noise draws and
    gradients are averaged; every rank returns the same adapter.
    """
    if not prompt or not prompt.strip():
        raise ValueError("tune_clip: the prompt is empty")
    frames = np.asarray(frames)
    idx = _frame_indices(frames, tune.num_frames)
    frames = frames[idx]
    enhance_cfg = vocabulary_for(enhance_cfg or EnhanceConfig(), base.vocabulary)
    mode = MODES[tune.mode]
    tune = with_mode_recipe(tune, mode)
    rank, world = _rank_and_world()
    started = time.time()
    if base.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(base.device)

    unet = base.unet
    was_training = unet.training
    with torch.no_grad():
        if tune.augment != "none":  # every view, encoded once; each step draws one per sample
            x0 = base.encode_frames(clip_views(frames, tune.augment)).float()
        else:
            x0 = base.encode_frames(frames[None]) if latents is None else torch.as_tensor(latents, device=base.device)[None, :, idx]
            x0 = x0.float().repeat(tune.batch, 1, 1, 1, 1)  # noise, targets and losses in float32 whatever the base
        text = base.encode_prompts([prompt]).repeat(tune.batch, 1, 1)
    # peft initialises LoRA and UNet3D draws dropout from the global RNG: seeded here for
    # determinism, and the caller's RNG state is restored afterwards
    with torch.random.fork_rng(devices=[base.device] if base.device.type == "cuda" else []):
        torch.manual_seed(tune.seed)
        branches = _Branches(base, mode, adapter, tune)
        step_fn = _Step(base, branches, mode, tune, prompt, subject, enhance_cfg, rank)
        history: list[dict] = []
        snapshots: dict[int, ad.Adapter] = {}
        # steps count the motion adapter's: the spatial warm-up's are the negative ones before them, an
        # optimization of its own, so the motion adapter's Adam starts afresh on either engine
        phases: list[tuple[range, Callable, list[str] | None]] = []
        if tune.spatial_warmup:
            phases.append((range(-tune.spatial_warmup, 0), step_fn.warmup, [SPATIAL]))
        phases.append((range(tune.steps), step_fn, None))
        bar = progress(total=tune.spatial_warmup + tune.steps, desc=f"tune {tune.mode}", disable=not tune.progress or rank != 0,
                       leave=False)
        try:
            unet.train()
            set_gradient_checkpointing(unet, tune.gradient_checkpointing)
            for steps, loss_terms, groups in phases:
                if steps.start == 0 and tune.spatial_freeze:
                    branches.fold_spatial()
                branches.set_trainable(groups or branches.groups)  # ZeRO's optimizer keeps what requires grad when made
                engine = make_engine(unet, branches.param_groups(tune, groups), tune, base.dtype)
                try:
                    with dtype_read_once(unet):  # the engine has cast what it trains: no dtype moves from here
                        for step in steps:
                            branches.new_step()
                            parts = loss_terms(x0, text)
                            loss = sum(v * (tune.lambda_app if k == "app" else 1.0) for k, v in parts.items())
                            branches.enable_grads()
                            engine.backward(loss)
                            engine.step()
                            bar.update(1)
                            if step % tune.log_every == 0 or step == tune.steps - 1:
                                row = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
                                history.append(row)
                                bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "step"})
                            if step + 1 in snapshot_at and step + 1 < tune.steps:
                                snapshots[step + 1] = _adapter(branches.export(engine.gather), base, branches, tune, prompt, subject,
                                                               frames, time.time() - started, world, steps=step + 1)
                    if steps.start == 0:
                        tensors = branches.export(engine.gather)
                finally:
                    engine.close()
                    branches.find_parameters()  # closing after ZeRO-3 gives the UNet new parameter objects
        finally:
            bar.close()
            step_fn.close()
            set_gradient_checkpointing(unet, False)
            branches.restore()
            unet.train(was_training)

    seconds = time.time() - started
    result = _adapter(tensors, base, branches, tune, prompt, subject, frames, seconds, world, steps=tune.steps)
    peak = torch.cuda.max_memory_allocated(base.device) if base.device.type == "cuda" else None
    return TuneResult(result, history, seconds, peak, snapshots)


class _Step:
    """The loss terms of one optimizer step, for any mode (see the module docstring);
    `tune` has the mode's recipe filled in (`with_mode_recipe`)."""

    def __init__(self, base: BaseModel, branches: _Branches, mode: Mode, tune: TuneConfig, prompt: str,
                 subject: str | None, enhance_cfg: EnhanceConfig, rank: int):
        self.base, self.branches, self.mode, self.tune = base, branches, mode, tune
        self.prompt, self.subject, self.enhance_cfg = prompt, subject, enhance_cfg
        self.use_app = mode.appearance_norm and tune.lambda_app > 0
        self.temporal_loss = tune.temporal_loss  # resolved by `with_mode_recipe`: never "auto" here
        self.calls = 0
        self.ranges = [tune.motion_timesteps] + ([tune.appearance_timesteps] if self.use_app else [])
        self.num_train = base.scheduler.config.num_train_timesteps
        self.gen = torch.Generator().manual_seed(tune.seed * 1_000_003 + rank)  # ranks draw different noise
        self.prompt_rng = random.Random(tune.seed * 7919 + rank)
        unets = [base.unet] + ([branches.frozen_copy] if branches.frozen_copy is not None else [])
        self.stats = losses.SpatialStats(*unets) if self.use_app and tune.app_loss == "stats" else None

    def _views(self, x0: torch.Tensor, batch: int) -> torch.Tensor:
        """With `tune.augment`, x0 holds the clip's views, the original first: one per sample."""
        if self.tune.augment == "none":
            return x0
        pick = torch.randint(0, len(x0), (batch,), generator=self.gen)
        if self.tune.augment_share < 1:
            pick[torch.rand(batch, generator=self.gen) >= self.tune.augment_share] = 0
        return x0[pick]

    def _spatial_frame(self, noisy: losses.NoisyClip, text: torch.Tensor) -> torch.Tensor:
        """L_sp: the spatial LoRA alone on one random frame of the noised clip."""
        f = int(torch.randint(0, noisy.latents.shape[2], (1,), generator=self.gen))
        one = slice(f, f + 1)
        pred = self.branches.forward([SPATIAL], [SPATIAL], noisy.latents[:, :, one], noisy.timesteps, text)
        return losses.denoising(pred, noisy.target[:, :, one])

    def warmup(self, x0: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """A step of the spatial warm-up: L_sp only, at timesteps over the whole schedule."""
        noisy = losses.add_noise(self.base.noise_scheduler, self._views(x0, len(text)), self.gen)
        return {"sp": self._spatial_frame(noisy, text)}

    def __call__(self, x0: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        tune, mode, branches = self.tune, self.mode, self.branches
        noisy = losses.add_noise(self.base.noise_scheduler, self._views(x0, len(text)), self.gen, self.ranges)
        zt, y, t = noisy.latents, noisy.target, noisy.timesteps
        on_motion = losses.in_range(t, tune.motion_timesteps, self.num_train)
        on_app = losses.in_range(t, tune.appearance_timesteps, self.num_train) if self.use_app else torch.zeros_like(on_motion)
        # MotionDirector masks the spatial LoRA on a share of the steps: off in the temporal pass, not tuned
        # (once `fold_spatial` has put it into the weights it stays on)
        masked = bool(mode.spatial_skip) and float(torch.rand(1, generator=self.gen)) < mode.spatial_skip
        spatial_on = mode.spatial_path and not masked
        # `spatial_every` thins only the spatial LoRA's tuning: it stays on (frozen) in every temporal
        # pass, or the temporal LoRA would take up the clip's look on the steps in between
        tune_spatial = spatial_on and not tune.spatial_freeze and self.calls % tune.spatial_every == 0
        self.calls += 1
        active = [MOTION, SPATIAL] if spatial_on else [MOTION]
        joint = tune_spatial and tune.spatial_pass == "joint"  # the spatial LoRA learns from L_tmp's pass
        spatial_frame = tune_spatial and not joint
        parts: dict[str, torch.Tensor] = {}
        text_e = None
        if on_app.any() or (self.use_app and tune.temporal_prompt == "enhanced"):
            enhanced = enhance(self.prompt, self.prompt_rng, self.enhance_cfg, self.subject)
            text_e = self.base.encode_prompts([enhanced] * len(t))

        # the tuned model's passes: one shared by L_tmp and L_app under the enhanced prompt, or one each
        if text_e is not None and tune.temporal_prompt == "enhanced":
            rows = on_motion | on_app
            pred = self._tuned(active, zt[rows], t[rows], text_e[rows], record=on_app.any())
            if on_motion[rows].any():
                parts["tmp"] = self._temporal(pred, y[rows], on_motion[rows])
            app_rows, app_pred = rows, pred
        else:
            if on_motion.any():
                pred = branches.forward(active, active if joint else [MOTION], zt[on_motion], t[on_motion], text[on_motion])
                parts["tmp"] = self._temporal(pred, y[on_motion], torch.ones(int(on_motion.sum()), dtype=torch.bool))
            if on_app.any():
                assert text_e is not None  # encoded above whenever a sample is on L_app's range
                app_rows = on_app
                app_pred = self._tuned([MOTION], zt[on_app], t[on_app], text_e[on_app], record=True)
        if spatial_frame:
            parts["sp"] = self._spatial_frame(noisy, text)
        if on_app.any():
            assert text_e is not None
            parts["app"] = losses.masked_mean(self._appearance(app_pred, zt[app_rows], t[app_rows], text_e[app_rows]),
                                              on_app[app_rows])
        return parts

    def _tuned(self, active: list[str], zt, t, text, record: bool) -> torch.Tensor:
        if self.stats is None or not record:
            return self.branches.forward(active, [MOTION], zt, t, text)
        with self.stats.record():
            return self.branches.forward(active, [MOTION], zt, t, text)

    def _temporal(self, pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.temporal_loss == "centered":
            return losses.masked_mean(losses.per_sample(losses.centered(pred), losses.centered(y)), mask)
        per_sample = losses.per_sample(pred, y)
        if self.temporal_loss == "debiased":
            anchor = int(torch.randint(0, pred.shape[2], (1,), generator=self.gen))
            beta = self.tune.beta
            per_sample = per_sample + losses.per_sample(losses.debias(pred, anchor, beta), losses.debias(y, anchor, beta))
        return losses.masked_mean(per_sample, mask)

    def _appearance(self, pred: torch.Tensor, zt, t, text_e) -> torch.Tensor:
        """Per-sample L_app of the tuned prediction against the frozen base on the same inputs."""
        kind = self.tune.app_loss
        if kind == "stats":
            assert self.stats is not None  # hooked in __init__ for app_loss = stats
            tuned = self.stats.take()
            with self.stats.record():
                self.branches.base_forward(zt, t, text_e)
            return losses.appearance_stats(tuned, self.stats.take(), len(t))
        reference = self.branches.base_forward(zt, t, text_e)
        return losses.appearance_output(pred, reference) if kind == "output" else losses.appearance_static(pred, reference)

    def close(self) -> None:
        if self.stats is not None:
            self.stats.remove()


def _adapter(tensors, base: BaseModel, branches: _Branches, tune: TuneConfig, prompt: str, subject: str | None,
             frames: np.ndarray, seconds: float, world: int, steps: int) -> ad.Adapter:
    meta = AdapterMeta(
        kind=branches.kind,
        format_version=ad.FORMAT_VERSION,
        mode=tune.mode,
        family=base.family,
        base_fingerprint=base.fingerprint,
        lora=branches.lora.get(MOTION),
        rank=branches.adapter.rank if branches.kind == "lora" else None,
        targets=sorted(branches.lora[MOTION]["target_modules"]) if MOTION in branches.lora else sorted(tensors),
        tune_config={**asdict(tune), "steps": steps},
        adapter_config=asdict(branches.adapter),
        reference=AdapterReference(prompt=prompt, subject=subject, clip_sha256=clip_hash(frames)),
        train_seconds=round(seconds, 3),
        world_size=world,
    )
    return ad.Adapter(tensors, meta.to_dict())
