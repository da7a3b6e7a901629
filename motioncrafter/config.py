"""Every default of the project, as small dataclasses, one per component.

A run's configuration is one `Config`; files are TOML or YAML with one table per
component (`[render]`, `[video]`, ...). Loading checks every key and type and
names the offending field by its dotted path, suggesting the closest key for a
typo. Each stage takes only its own section.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from motioncrafter.modes import MODES as _MODES
from motioncrafter.modes import TEMPORAL_LOSSES


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it by dotted path."""


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


@dataclass
class ModelConfig:
    base_model: str = ""  # local folder or fsspec URI of a diffusers model; "" = shipped MovingShapes base
    device: str = "auto"  # auto | cpu | cuda | cuda:N; in the Ray stages a GPU only where the stage reserved one
    dtype: str = "float32"  # of the frozen base: float32 | float16 | bfloat16 (tuned weights stay float32, under autocast)
    cache_dir: str = "~/.cache/motioncrafter"  # where remote base models are copied once

    def __post_init__(self) -> None:
        _check(self.dtype in ("float32", "float16", "bfloat16"), "model.dtype", f"{self.dtype!r} is not float32, float16 or bfloat16")
        _check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "model.device",
               f"{self.device!r} is not auto, cpu, cuda or cuda:N")


@dataclass
class VideoConfig:
    """How reference clips are decoded into model-sized frames."""

    num_frames: int = 8  # frames sampled from each reference clip
    height: int = 32  # decoded frames are cover-resized and centre-cropped to height x width
    width: int = 32  # see height
    sampling: str = "uniform"  # uniform: spread over the window | stride: every `stride`-th frame
    stride: int = 1  # frame step of stride sampling
    fps: int = 8  # frame rate of written videos

    def __post_init__(self) -> None:
        _check(self.sampling in ("uniform", "stride"), "video.sampling", f"{self.sampling!r} is not uniform or stride")
        _check(self.num_frames >= 1, "video.num_frames", f"must be >= 1, got {self.num_frames}")
        _check(self.stride >= 1, "video.stride", f"must be >= 1, got {self.stride}")
        _check(self.height >= 1 and self.width >= 1, "video.height/width", "must be positive")


GUIDANCE_SPLITS = ("none", "text_first", "adapter_first")


@dataclass
class RenderConfig:
    num_steps: int = 25  # denoising steps
    guidance_scale: float = 4.0  # classifier-free guidance; 1 disables it
    negative_prompt: str = ""  # the unconditional prompt of classifier-free guidance
    scheduler: str = "base"  # base: the class the base's folder names | ddim | dpm (DPM-Solver++ multistep)
    num_frames: int = 8  # frames of each generated video
    height: int = 32  # generated frame height (a multiple of the VAE's downsampling)
    width: int = 32  # generated frame width
    max_batch: int = 16  # videos per denoising batch (the UNet sees twice as many rows with guidance): the UNet's memory bound
    decode_chunk: int = 16  # frames per VAE decode call (0 = all of a batch at once): the decoder's memory bound
    vae_tiling: bool = False  # decode each frame in overlapping tiles (diffusers' AutoencoderKL.enable_tiling): for frames larger than the VAE's sample_size; approximate at tile seams
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # one video per prompt and seed; a sample is reproducible alone
    progress: bool = False  # progress bar over denoising steps
    adapter_schedule: list[list[float]] = field(default_factory=list)  # [[from_share, scale], ...]: motion adapters' scale by share of denoising steps done; [] = constant
    guidance_split: str = "adapter_first"  # none: the motion adapters on in both guidance branches | text_first | adapter_first: guidance split over the prompt and the adapters (render.py; one more UNet pass per step with adapters attached); adapter_first at 0.75 by measurement (README, method)
    motion_guidance: float = 0.75  # the adapters' weight in a guidance split (render.guidance_split); 1 with adapter_first = plain guidance

    def __post_init__(self) -> None:
        _check(self.scheduler in ("base", "ddim", "dpm"), "render.scheduler", f"{self.scheduler!r} is not base, ddim or dpm")
        starts = [p[0] for p in self.adapter_schedule if len(p) == 2]
        _check(len(starts) == len(self.adapter_schedule) and starts == sorted(starts) and all(0 <= s < 1 for s in starts),
               "render.adapter_schedule", f"must be [[from_share, scale], ...] with ascending shares in [0, 1), got {self.adapter_schedule}")
        _check(self.guidance_split in GUIDANCE_SPLITS, "render.guidance_split", f"{self.guidance_split!r} is not one of {GUIDANCE_SPLITS}")
        _check(self.guidance_split == "none" or self.guidance_scale != 1.0, "render.guidance_split",
               f"{self.guidance_split} splits classifier-free guidance, which render.guidance_scale = 1 turns off: "
               "set render.guidance_split = none with it")
        _check(self.motion_guidance >= 0, "render.motion_guidance", f"must be >= 0, got {self.motion_guidance}")
        _check(self.num_steps >= 1, "render.num_steps", f"must be >= 1, got {self.num_steps}")
        _check(self.max_batch >= 1, "render.max_batch", f"must be >= 1, got {self.max_batch}")
        _check(self.decode_chunk >= 0, "render.decode_chunk", f"must be >= 0, got {self.decode_chunk}")


@dataclass
class MetricsConfig:
    clip_model: str = ""  # local folder of a transformers CLIPModel; "" skips the CLIP metrics
    flow_size: int = 64  # frames are resized to this before optical flow


# Everyday subjects and scenes, swapped into a clip's prompt by appearance enhancement when
# neither the configuration nor the base's folder (enhance.json) lists its own.
GENERAL_SUBJECTS = [
    "a man", "a woman", "a child", "an old man", "a young woman", "a dog", "a cat", "a horse", "a bear", "a lion",
    "a panda", "a monkey", "a bird", "a robot", "an astronaut", "a knight in armour", "a teddy bear", "a car",
]
GENERAL_SCENES = [
    "in a forest", "on a beach", "in a city street", "in a snowy field", "in a desert", "on the moon",
    "in a kitchen", "on a stage", "in a park", "under the sea", "in a living room", "on a mountain top",
]


@dataclass
class EnhanceConfig:
    """Appearance prior enhancement vocabularies. Empty lists take the base folder's own
    (`enhance.json`; the shipped MovingShapes base has one), else everyday words
    (`GENERAL_SUBJECTS`, `GENERAL_SCENES`)."""

    subjects: list[str] = field(default_factory=list)  # subjects swapped in for the clip's subject; [] = the base's, else everyday ones
    scenes: list[str] = field(default_factory=list)  # scenes swapped in for the clip's scene; [] = the base's, else everyday ones
    scene_words: list[str] = field(  # nouns that make a trailing "on/in/at ..." phrase a scene
        default_factory=lambda: ["background", "forest", "beach", "street", "room", "city", "field", "snow", "desert", "moon",
                                 "sea", "park", "kitchen", "stage", "mountain", "top", "garden", "road", "river", "lake", "sky"]
    )
    swap_scene_prob: float = 0.5  # chance that an enhanced prompt also swaps the scene

    def __post_init__(self) -> None:
        _check(len(self.subjects) != 1, "enhance.subjects", "needs at least two subjects to swap between (or none: the defaults)")
        _check(0 <= self.swap_scene_prob <= 1, "enhance.swap_scene_prob", f"must be in [0, 1], got {self.swap_scene_prob}")


MODES = tuple(_MODES)
LORA_TARGETS = ("all", "qkvo", "qk")
SPATIAL_TARGETS = ("attention", "resnets")
APP_LOSSES = ("output", "static", "stats")
AUGMENTS = ("none", "channels", "colour", "shift")


@dataclass
class AdapterConfig:
    kind: str = "lora"  # lora: LoRA on the temporal branch | full: the whole temporal branch
    rank: int = 0  # LoRA rank of the motion adapter; 0 = the mode's own (modes.py), chosen on the dev clips
    alpha: float = 0.0  # LoRA alpha (scale = alpha / rank); 0 = the rank (scale 1)
    spatial_rank: int = 8  # LoRA rank of the spatial path (discarded after tuning)
    spatial_targets: str = "attention"  # spatial path LoRA layers: attention (the per-frame transformer blocks) | resnets: and the ResNet blocks' layers (per-frame too)
    targets: str = "all"  # temporal LoRA layers: all (attention, feed-forward, temporal convs) | qkvo | qk (attention only)
    dropout: float = 0.0  # LoRA dropout of the tuning LoRAs (motion adapter and spatial path), on while tuning only; MotionDirector publishes 0.1; off: 0.1 / 0.3 cost motion on the dev clips (sweep 34)

    def __post_init__(self) -> None:
        _check(self.kind in ("lora", "full"), "adapter.kind", f"{self.kind!r} is not lora or full")
        _check(self.rank >= 0 and self.spatial_rank >= 1, "adapter.rank", "ranks must be >= 1 (adapter.rank 0: the mode's own)")
        _check(self.alpha >= 0, "adapter.alpha", f"must be >= 0 (0: the rank), got {self.alpha}")
        _check(self.targets in LORA_TARGETS, "adapter.targets", f"{self.targets!r} is not one of {LORA_TARGETS}")
        _check(self.spatial_targets in SPATIAL_TARGETS, "adapter.spatial_targets",
               f"{self.spatial_targets!r} is not one of {SPATIAL_TARGETS}")
        _check(0 <= self.dropout < 1, "adapter.dropout", f"must be in [0, 1), got {self.dropout}")


def _check_range(value: list[float], where: str) -> None:
    _check(len(value) == 2 and 0 <= value[0] < value[1] <= 1, where, f"must be [start, end] with 0 <= start < end <= 1, got {value}")


@dataclass
class TuneConfig:
    """One clip -> one motion adapter. Defaults fit the MovingShapes base on a CPU."""

    mode: str = "motioncrafter"  # motioncrafter | temporal_only | motiondirector | full_finetune
    steps: int = 200  # optimizer steps per clip
    lr: float = 0.0  # temporal branch (motion adapter); 0 = the mode's own (modes.py), chosen on the dev clips
    spatial_lr: float = 1e-3  # spatial path
    warmup_steps: int = 0  # the learning rates rise linearly from 0 over the first k steps, then stay (diffusers' constant_with_warmup)
    weight_decay: float = 0.0  # AdamW weight decay
    lambda_app: float = 0.0  # weight of appearance normalization against the frozen base; 0 by measurement (README, method)
    app_loss: str = "output"  # output: whole prediction | static: its temporal mean only | stats: spatial-feature statistics
    temporal_prompt: str = "clip"  # clip: L_tmp under the clip's prompt | enhanced: under the enhanced prompt, one pass shared with L_app
    motion_timesteps: list[float] = field(default_factory=lambda: [0.0, 1.0])  # [start, end) share of the training schedule where L_tmp applies (1 = most noise)
    appearance_timesteps: list[float] = field(default_factory=lambda: [0.0, 1.0])  # where L_app applies; a step draws t from the union of both
    temporal_loss: str = "auto"  # auto: the mode's own | plain | debiased: plain + MotionDirector's | centered: frame-varying part only
    beta: float = 1.0  # MotionDirector appearance-debiasing weight of the anchor frame; 0.5 traded motion for appearance and less leakage on two dev draws
    spatial_every: int = 1  # the spatial LoRA tuned on every k-th step only (on, frozen, in every temporal pass)
    spatial_pass: str = "frame"  # frame: the spatial LoRA tuned by L_sp on one random frame, a UNet call of its own | joint: by L_tmp in the temporal pass
    spatial_warmup: int = 0  # steps that tune the spatial LoRA alone (its one-frame pass) before the `steps` that tune the motion adapter; 100, frozen, at spatial_lr 3e-3: 0.10 less leakage than the default on the test clips, 0.05 less motion (README, method)
    spatial_freeze: bool = False  # after the warm-up the spatial LoRA stays as it is, folded into the weights: no more one-frame passes
    num_frames: int = 8  # frames of the clip the adapter learns from
    augment: str = "none"  # none | channels: a sample is the clip in one of its 6 RGB channel orders | colour: those and their negatives (12); off: they cost the motion (dev sweeps 23-24) | shift: the clip moved by 1/8 of its size in one of 8 directions (9 views); off: more diversity, a third less motion (sweep 35)
    augment_share: float = 1.0  # share of the samples drawn from the views (the original among them); the rest see the clip as it is
    batch: int = 1  # noise draws of the clip per step and rank
    gradient_checkpointing: bool = False  # recompute UNet block activations in backward: less memory, more time
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    seed: int = 0  # same seed, same adapter bytes on CPU
    engine: str = "torch"  # torch (AdamW) | deepspeed
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    offload: bool = False  # DeepSpeed: optimizer state in CPU memory
    log_every: int = 10  # steps between loss records in the adapter's history
    progress: bool = True  # progress bar per clip

    def __post_init__(self) -> None:
        _check(self.mode in MODES, "tune.mode", f"{self.mode!r} is not one of {MODES}")
        _check(self.steps >= 1, "tune.steps", f"must be >= 1, got {self.steps}")
        _check(self.warmup_steps >= 0, "tune.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.lambda_app >= 0, "tune.lambda_app", f"must be >= 0, got {self.lambda_app}")
        _check(self.app_loss in APP_LOSSES, "tune.app_loss", f"{self.app_loss!r} is not one of {APP_LOSSES}")
        _check(self.temporal_loss in ("auto", *TEMPORAL_LOSSES), "tune.temporal_loss",
               f"{self.temporal_loss!r} is not auto or one of {TEMPORAL_LOSSES}")
        _check(self.spatial_every >= 1, "tune.spatial_every", f"must be >= 1, got {self.spatial_every}")
        _check(self.temporal_prompt in ("clip", "enhanced"), "tune.temporal_prompt", f"{self.temporal_prompt!r} is not clip or enhanced")
        _check(self.spatial_pass in ("frame", "joint"), "tune.spatial_pass", f"{self.spatial_pass!r} is not frame or joint")
        # the enhanced prompt's pass is shared with L_app, which must not tune the spatial LoRA
        _check(not (self.spatial_pass == "joint" and self.temporal_prompt == "enhanced"), "tune.spatial_pass",
               "joint needs tune.temporal_prompt = clip (the enhanced prompt's pass is shared with L_app)")
        _check(self.spatial_warmup >= 0, "tune.spatial_warmup", f"must be >= 0, got {self.spatial_warmup}")
        _check(self.spatial_warmup == 0 or _MODES[self.mode].spatial_path, "tune.spatial_warmup",
               f"mode {self.mode!r} has no spatial path to warm up")
        # frozen with nothing learned it would be no spatial path at all
        _check(not self.spatial_freeze or self.spatial_warmup > 0, "tune.spatial_freeze", "needs tune.spatial_warmup > 0")
        # folded into the weights, the spatial LoRA cannot be switched off for L_app's frozen base, nor
        # tuned jointly (under ZeRO-3 it folds into the full weights the closed warm-up engine gives back)
        _check(not self.spatial_freeze or (self.lambda_app == 0 and self.spatial_pass == "frame"), "tune.spatial_freeze",
               "needs tune.lambda_app = 0 and tune.spatial_pass = frame")
        _check_range(self.motion_timesteps, "tune.motion_timesteps")
        _check_range(self.appearance_timesteps, "tune.appearance_timesteps")
        _check(self.lr >= 0 and self.spatial_lr > 0, "tune.lr", "learning rates must be > 0 (tune.lr 0: the mode's own)")
        _check(self.augment in AUGMENTS, "tune.augment", f"{self.augment!r} is not one of {AUGMENTS}")
        _check(0 < self.augment_share <= 1, "tune.augment_share", f"must be in (0, 1], got {self.augment_share}")
        _check(self.num_frames >= 2, "tune.num_frames", f"a motion needs >= 2 frames, got {self.num_frames}")
        _check(self.batch >= 1, "tune.batch", f"must be >= 1, got {self.batch}")
        _check(self.engine in ("torch", "deepspeed"), "tune.engine", f"{self.engine!r} is not torch or deepspeed")
        _check(self.zero_stage in (0, 1, 2, 3), "tune.zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        # ZeRO-3 frees each block's parameters after its forward; the checkpointed block's recomputation
        # in backward then sees them empty (torch raises CheckpointError; found by benchmarks/gpu.py)
        _check(not (self.engine == "deepspeed" and self.zero_stage == 3 and self.gradient_checkpointing),
               "tune.gradient_checkpointing", "does not work with DeepSpeed ZeRO-3 (tune.zero_stage=3) yet; use stage 0-2 or turn it off")


SCHEDULERS = ("gangs", "per_clip")


@dataclass
class PipelineConfig:
    """How `motioncrafter run` spreads a manifest over Ray (see `pipelines/`)."""

    scheduler: str = "gangs"  # gangs: long-lived worker groups pull clips | per_clip: one Ray Train run per clip
    num_gangs: int = 1  # gangs (or per_clip runs) side by side
    workers_per_gang: int = 1  # Ray Train workers (ranks) tuning each clip together
    cpus_per_worker: float = 1.0  # logical CPUs Ray reserves for each training rank
    gpus_per_worker: float = 0.0  # > 0 trains with nccl on GPUs, else gloo on CPUs
    max_attempts: int = 3  # leases of one clip before it is failed with its last error
    lease_seconds: float = 120.0  # a lease not renewed for this long returns its clip to the queue
    max_gang_restarts: int = 3  # Ray Train FailureConfig.max_failures of each gang
    ingest_concurrency: int = 2  # decode tasks in flight
    encode_concurrency: int = 1  # VAE-encoder actors
    encode_gpus: float = 0.0  # GPUs each VAE-encoder actor reserves (fractions pack several on one GPU)
    render_concurrency: int = 1  # render actors (each holds a base model)
    render_gpus: float = 0.0  # GPUs each render actor reserves; 0 renders on CPUs
    evaluate_concurrency: int = 1  # metric actors
    evaluate_gpus: float = 0.0  # GPUs each metric actor reserves (the CLIP model, when metrics.clip_model is set)
    ray_address: str = ""  # "" = start Ray embedded on this machine; else a cluster address ("auto", "ray://...")
    ray_num_cpus: int = 0  # logical CPUs of an embedded Ray; 0 = all of this machine's
    dashboard_host: str = "127.0.0.1"  # the dashboard listens on localhost unless you say otherwise
    start_timeout_s: float = 600.0  # how long a gang may wait for its workers before the run gives up

    def __post_init__(self) -> None:
        _check(self.scheduler in SCHEDULERS, "pipeline.scheduler", f"{self.scheduler!r} is not gangs or per_clip")
        for name in ("num_gangs", "workers_per_gang", "max_attempts", "ingest_concurrency", "encode_concurrency",
                     "render_concurrency", "evaluate_concurrency"):
            _check(getattr(self, name) >= 1, f"pipeline.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.max_gang_restarts >= 0, "pipeline.max_gang_restarts", f"must be >= 0, got {self.max_gang_restarts}")
        _check(self.lease_seconds > 0, "pipeline.lease_seconds", f"must be > 0, got {self.lease_seconds}")
        _check(self.cpus_per_worker > 0, "pipeline.cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        for name in ("gpus_per_worker", "encode_gpus", "render_gpus", "evaluate_gpus"):
            _check(getattr(self, name) >= 0, f"pipeline.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.ray_num_cpus >= 0, "pipeline.ray_num_cpus", f"must be >= 0, got {self.ray_num_cpus}")
        _check(self.start_timeout_s > 0, "pipeline.start_timeout_s", f"must be > 0, got {self.start_timeout_s}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    enhance: EnhanceConfig = field(default_factory=EnhanceConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------- loading


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value, tp, where: str):
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), where, f"expected a table, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        _check(isinstance(value, (list, tuple)), where, f"expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)[:1] or (typing.Any,)
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        return _coerce(value, tp, where)
    if tp is typing.Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    _check(ok, where, f"expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a plain dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{path}: unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def _parse_text(text: str, suffix: str) -> dict:
    if suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    return yaml.safe_load(text) or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the file (TOML or YAML, by suffix), then `section.key=value` overrides."""
    data: dict = {}
    if path:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = _parse_text(path.read_text(), path.suffix.lower())
        except Exception as err:  # tomllib / yaml each raise their own error type
            raise ConfigError(f"{path}: cannot parse: {err}") from err
        _check(isinstance(data, dict), str(path), "the top level must be a table of sections")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        _check(bool(sep) and "." in key, item, "an override is section.key=value")
        section, _, name = key.strip().partition(".")
        data.setdefault(section, {})[name] = yaml.safe_load(raw)
    return from_dict(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    path = Path(path)
    if path.suffix.lower() == ".toml":
        import tomli_w

        path.write_text(tomli_w.dumps(cfg.to_dict()))
    else:
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
