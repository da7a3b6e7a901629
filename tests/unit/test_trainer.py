"""`tune_clip`: every mode on both families, what the adapter holds, the base left untouched,
determinism, loss components, bad input, and that tuning learns the clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motioncrafter import adapters as ad
from motioncrafter import losses
from motioncrafter.branches import branch_parameters, lora_targets
from motioncrafter.config import AdapterConfig
from motioncrafter.modes import MODES
from motioncrafter.trainer import clip_hash, clip_views, tune_clip

pytestmark = pytest.mark.filterwarnings(
    "ignore:Already found a `peft_config` attribute",
    "ignore:Converting a tensor with requires_grad=True to a scalar",
)

COMPONENTS = {
    "motioncrafter": {"tmp", "sp", "app"},
    "temporal_only": {"tmp"},
    "motiondirector": {"tmp", "sp"},
    "full_finetune": {"tmp"},
}


def _lora_layer(key: str) -> str:
    """'down_blocks.0.temp_convs.0.conv1.1.lora_A.weight' -> 'down_blocks.0.temp_convs.0.conv1.1'."""
    for part in (".lora_A.", ".lora_B."):
        if part in key:
            return key.split(part)[0]
    raise AssertionError(f"not a LoRA tensor: {key}")


@pytest.mark.parametrize("mode", list(COMPONENTS))
def test_each_mode(base, clip, mode, mc):
    unet = base.unet
    before = mc.snapshot(unet)
    result = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(mode=mode, steps=2, log_every=1))
    adapter = result.adapter

    # the base is exactly as it was
    mc.assert_same_state(unet, before)
    assert not ad.tuner_layers(unet), "LoRA layers left in the base"
    assert not any(p.requires_grad for p in unet.parameters()), "base parameters left trainable"
    assert not unet.training

    # what the adapter holds
    temporal = set(lora_targets(unet, "temporal"))
    spatial = set(lora_targets(unet, "spatial"))
    assert all(torch.isfinite(t).all() for t in adapter.tensors.values())
    if mode == "full_finetune":
        assert adapter.kind == "full" and adapter.meta["lora"] is None
        assert set(adapter.tensors) == {n for n, _ in unet.named_parameters()}  # the whole UNet
    else:
        assert adapter.kind == "lora"
        layers = {_lora_layer(k) for k in adapter.tensors}
        assert layers == temporal  # LoRA on every temporal target and nothing else ...
        assert not layers & spatial  # ... so the spatial LoRA was not saved
        assert len(adapter.tensors) == 2 * len(temporal)
        assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in adapter.tensors)
        assert not [k for k in adapter.tensors if "_tune_" in k]  # adapter names are not in the keys
        assert adapter.meta["lora"]["target_modules"] == sorted(temporal)
        rank = MODES[mode].rank  # adapter.rank 0: the mode's own, alpha = rank
        assert adapter.meta["lora"]["r"] == adapter.meta["rank"] == adapter.meta["adapter_config"]["rank"] == rank
        assert adapter.meta["lora"]["lora_alpha"] == adapter.meta["adapter_config"]["alpha"] == rank
        # LoRA B starts at zero: after two steps it has moved
        assert any(k.endswith("lora_B.weight") and t.abs().sum() > 0 for k, t in adapter.tensors.items())

    meta = adapter.meta
    assert meta["mode"] == mode and meta["family"] == base.family and meta["base_fingerprint"] == base.fingerprint
    assert meta["reference"] == {"prompt": clip.caption, "subject": None, "clip_sha256": clip_hash(clip.frames)}
    assert meta["tune_config"]["steps"] == 2 and meta["world_size"] == 1

    # the loss components of the mode, every step
    assert [row["step"] for row in result.history] == [0, 1]
    for row in result.history:
        assert set(row) == {"step", "loss"} | COMPONENTS[mode]
        assert all(np.isfinite(v) for v in row.values())
        expected = row["tmp"] + row.get("sp", 0.0) + 1.0 * row.get("app", 0.0)
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
    assert result.seconds > 0 and result.peak_memory_bytes is None


def test_full_branch_motioncrafter_uses_frozen_copy(base, clip, mc):
    """kind='full' tunes the temporal branch's weights; L_app runs against a frozen copy."""
    before = mc.snapshot(base.unet)
    result = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(steps=2, log_every=1), AdapterConfig(kind="full"))
    mc.assert_same_state(base.unet, before)
    assert not ad.tuner_layers(base.unet)
    adapter = result.adapter
    assert adapter.kind == "full"
    assert set(adapter.tensors) == set(branch_parameters(base.unet, "temporal"))
    assert any(not torch.equal(adapter.tensors[k], before[k]) for k in adapter.tensors)  # tuned
    assert set(result.history[0]) == {"step", "loss", "tmp", "sp", "app"}
    # step 0: the temporal branch has not moved yet, so the tuned model equals the frozen copy
    assert result.history[0]["app"] == pytest.approx(0.0, abs=1e-10)
    assert result.history[1]["app"] > 0


def test_full_branch_without_app_makes_no_frozen_copy(base, clip, mc, monkeypatch):
    """With L_app off (the default) nothing needs a frozen base: no second UNet in memory."""
    import motioncrafter.trainer as trainer

    real = trainer.copy.deepcopy

    def no_copy(obj, *args):
        assert not isinstance(obj, torch.nn.Module), f"copied a {type(obj).__name__}"
        return real(obj, *args)

    monkeypatch.setattr(trainer.copy, "deepcopy", no_copy)
    result = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(steps=2, lambda_app=0.0), AdapterConfig(kind="full"))
    assert result.adapter.kind == "full" and "app" not in result.history[0]


def test_lambda_app_zero_drops_app(bases, clip, mc):
    base = bases["animatediff"]
    result = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(steps=2, lambda_app=0.0, log_every=1))
    assert all(set(row) == {"step", "loss", "tmp", "sp"} for row in result.history)


def test_log_every(bases, clip, mc):
    result = tune_clip(bases["animatediff"], clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=4, log_every=3))
    assert [row["step"] for row in result.history] == [0, 3]  # every 3rd step and the last
    result = tune_clip(bases["animatediff"], clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=3, log_every=2))
    assert [row["step"] for row in result.history] == [0, 2]


@pytest.mark.parametrize("family, mode", [("unet3d", "temporal_only"), ("animatediff", "motioncrafter")])
def test_deterministic_given_seed(bases, clip, mc, family, mode):
    def run(seed):
        return tune_clip(bases[family], clip.frames, clip.caption, mc.tune_cfg(mode=mode, steps=2, seed=seed, log_every=1))

    a, b, c = run(0), run(0), run(1)
    assert mc.as_bytes(a.adapter.tensors) == mc.as_bytes(b.adapter.tensors)
    assert a.history == b.history
    assert set(a.adapter.tensors) == set(c.adapter.tensors)
    differ = [k for k in a.adapter.tensors if not torch.equal(a.adapter.tensors[k], c.adapter.tensors[k])]
    assert len(differ) == len(a.adapter.tensors)  # LoRA init and noise both follow the seed
    assert a.history != c.history


@pytest.mark.parametrize(
    "frames, prompt, tune, match",
    [
        ("clip", "", {}, "the prompt is empty"),
        ("clip", "   ", {}, "the prompt is empty"),
        ("short", "p", {}, r"the clip has 5 frames; tuning needs at least 8 \(tune.num_frames\)"),
        ("clip", "p", {"num_frames": 12}, r"the clip has 8 frames; tuning needs at least 12"),
        ("gray", "p", {}, r"expected frames \(T, H, W, 3\), got shape \(8, 32, 32\)"),
        ("rgba", "p", {}, r"expected frames \(T, H, W, 3\), got shape \(8, 32, 32, 4\)"),
        ("batch", "p", {}, r"expected frames \(T, H, W, 3\), got shape \(1, 8, 32, 32, 3\)"),
    ],
)
def test_bad_input(bases, clip, mc, frames, prompt, tune, match):
    base = bases["unet3d"]
    data = {
        "clip": clip.frames,
        "short": clip.frames[:5],
        "gray": clip.frames[..., 0],
        "rgba": np.concatenate([clip.frames, clip.frames[..., :1]], axis=-1),
        "batch": clip.frames[None],
    }[frames]
    before = mc.snapshot(base.unet)
    with pytest.raises(ValueError, match=match):
        tune_clip(base, data, prompt, mc.tune_cfg(**tune))
    mc.assert_same_state(base.unet, before)
    assert not ad.tuner_layers(base.unet)


def test_more_frames_are_subsampled(bases, clip, mc):
    base = bases["animatediff"]
    long = np.concatenate([clip.frames, clip.frames[::-1]])  # 16 frames
    result = tune_clip(base, long, clip.caption, mc.tune_cfg(mode="temporal_only", steps=1))
    chosen = long[np.linspace(0, 15, 8).round().astype(int)]
    assert result.adapter.meta["reference"]["clip_sha256"] == clip_hash(chosen)


def test_cached_latents_give_the_same_adapter(bases, clip, mc):
    """The pipeline hands tune_clip the latents it cached at ingest (all decoded frames); the
    adapter is the one tune_clip makes when it encodes the frames itself, subsampling included."""
    base = bases["unet3d"]
    long = np.concatenate([clip.frames, clip.frames[::-1]])  # 16 frames, 8 chosen
    with torch.no_grad():
        latents = base.encode_frames(long[None])[0]
    cfg = mc.tune_cfg(mode="temporal_only", steps=2)
    own, cached = tune_clip(base, long, clip.caption, cfg), tune_clip(base, long, clip.caption, cfg, latents=latents)
    # equal up to float rounding: the VAE ran on 16 frames at once instead of the 8 chosen
    for key, value in own.adapter.tensors.items():
        torch.testing.assert_close(cached.adapter.tensors[key], value, rtol=1e-4, atol=1e-5)
    assert own.adapter.meta["reference"] == cached.adapter.meta["reference"]


def _moving_pixels(video: np.ndarray) -> np.ndarray:
    """Where each frame differs from the one before: (T - 1, H, W) booleans."""
    return (np.diff(video.astype(np.int16), axis=0) != 0).any(-1)


def test_clip_views_keep_the_motion_and_change_the_colours(clip):
    frames = clip.frames  # a red circle on a black background
    assert clip_views(frames, "none").shape == (1, *frames.shape)
    channels, colour = clip_views(frames, "channels"), clip_views(frames, "colour")
    assert channels.shape == (6, *frames.shape) and colour.shape == (12, *frames.shape)
    np.testing.assert_array_equal(colour[0], frames)  # the original comes first
    np.testing.assert_array_equal(colour[:6], channels)
    # red's two equal channels give 3 distinct orders (red, green, blue), twice over with the negatives
    assert len({v.tobytes() for v in colour}) == 6
    # every view moves exactly the pixels the clip moves, frame to frame
    for view in colour:
        np.testing.assert_array_equal(_moving_pixels(view), _moving_pixels(frames))
    # the object's colour moves in the channel views; the background only in the negatives
    y, x = np.argwhere((frames[0] == (230, 30, 30)).all(-1))[0]  # a pixel of the red circle at frame 0
    assert len({tuple(v[0, y, x]) for v in channels}) == 3
    assert len({tuple(v[0, 0, 0]) for v in channels}) == 1  # a gray stays gray
    corner = {tuple(v[0, 0, 0]) for v in colour}
    assert tuple(frames[0, 0, 0]) in corner and tuple(255 - frames[0, 0, 0]) in corner
    with pytest.raises(ValueError, match="unknown augmentation 'hue'"):
        clip_views(frames, "hue")


def test_augment_draws_a_colour_view_per_step(bases, clip, mc, monkeypatch):
    """With tune.augment each step's clean latents are one of the clip's encoded colour views, not always the same."""
    base = bases["unet3d"]
    with torch.no_grad():
        views = base.encode_frames(clip_views(clip.frames, "colour")).float()
    seen = []
    real = losses.add_noise

    def spy(scheduler, x0, *args, **kwargs):
        seen.append(x0.clone())
        return real(scheduler, x0, *args, **kwargs)

    monkeypatch.setattr(losses, "add_noise", spy)
    cfg = mc.tune_cfg(mode="temporal_only", steps=8, augment="colour")
    augmented = tune_clip(base, clip.frames, clip.caption, cfg)
    matches = [(views - x0).abs().flatten(1).amax(1) < 1e-5 for x0 in seen]  # which views each step's latents are
    assert len(matches) == 8 and all(m.any() for m in matches)
    assert len({tuple(m.tolist()) for m in matches}) > 2  # several distinct views over the steps
    # augment_share: the rest of the samples see the clip as it is (the original view)
    seen.clear()
    tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=16, augment="colour", augment_share=0.25))
    original = [bool((x0 - views[0]).abs().max() < 1e-5) for x0 in seen]
    assert sum(original) >= 8 and not all(original)  # ~12 of 16 expected
    plain = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=8))
    assert augmented.adapter.meta["tune_config"]["augment"] == "colour"
    assert any(not torch.equal(plain.adapter.tensors[k], v) for k, v in augmented.adapter.tensors.items())


def test_failure_mid_tuning_restores_base(bases, clip, mc, monkeypatch):
    base = bases["animatediff"]
    before = mc.snapshot(base.unet)
    calls = {"n": 0}
    real = losses.denoising

    def failing(pred, target):
        calls["n"] += 1
        if calls["n"] == 3:  # step 1, after one optimizer step moved the weights
            raise RuntimeError("injected failure")
        return real(pred, target)

    monkeypatch.setattr(losses, "denoising", failing)
    for acfg in (AdapterConfig(), AdapterConfig(kind="full")):
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="injected failure"):
            tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(steps=3), acfg)
        mc.assert_same_state(base.unet, before)
        assert not ad.tuner_layers(base.unet)
        assert not any(p.requires_grad for p in base.unet.parameters())


@torch.no_grad()
def _heldout_tmp_loss(base, clip, draws: int = 8) -> float:
    """L_tmp of the current UNet on fixed noise draws (the same for every call)."""
    x0 = base.encode_frames(clip.frames[None]).repeat(draws, 1, 1, 1, 1)
    text = base.encode_prompts([clip.caption] * draws)
    noisy = losses.add_noise(base.scheduler, x0, torch.Generator().manual_seed(1234))
    return float(losses.denoising(base.predict(noisy.latents, noisy.timesteps, text), noisy.target))


@pytest.mark.slow
def test_tuning_reduces_temporal_loss(fresh_base, clip, mc):
    """30 steps on the clip lower its temporal loss.

    Measured on fixed noise draws before and after (the adapter attached): the per-step
    training loss in `history` is dominated by which timestep each step happens to draw,
    so "first 5 vs last 5 logged" goes either way with the seed on a 30-step run.
    """
    base = fresh_base("unet3d")
    result = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=30, lr=1e-2, log_every=1))
    assert len(result.history) == 30
    before = _heldout_tmp_loss(base, clip)
    ad.attach(base, result.adapter)
    after = _heldout_tmp_loss(base, clip)
    assert after < 0.85 * before, (before, after)
    # and the adapter is what made the difference
    ad.set_weights(base, {"motion": 0.0})
    assert _heldout_tmp_loss(base, clip) == pytest.approx(before, rel=1e-6)


@pytest.mark.parametrize(
    "mode, kind, lambda_app",
    [
        ("motioncrafter", "lora", 1.0),
        ("motioncrafter", "lora", 0.0),
        ("motiondirector", "lora", 1.0),
        ("temporal_only", "lora", 1.0),
        ("full_finetune", "lora", 1.0),
        ("motioncrafter", "full", 1.0),
    ],
)
def test_every_group_is_trained(bases, clip, mc, monkeypatch, mode, kind, lambda_app):
    """Both paths learn: the temporal adapter AND (where there is one) the spatial LoRA move.

    Gradients are routed by switching requires_grad per forward pass; autograd reads the
    flag again at backward time, so a group switched off by a later pass must be on again
    by then or it silently learns nothing.
    """
    from motioncrafter import trainer

    moved: dict[str, bool] = {}
    restore = trainer._Branches.restore

    def spy(self):
        for group, params in self.groups.items():
            if group in self.lora:  # LoRA B starts at zero
                moved[group] = any(p.abs().sum() > 0 for n, p in params.items() if ".lora_B." in n)
            else:
                moved[group] = any(not torch.equal(p, self.original[n]) for n, p in params.items())
        restore(self)

    monkeypatch.setattr(trainer._Branches, "restore", spy)
    cfg = mc.tune_cfg(mode=mode, steps=2, lambda_app=lambda_app)
    tune_clip(bases["animatediff"], clip.frames, clip.caption, cfg, AdapterConfig(kind=kind))
    expected = {trainer.MOTION} | ({trainer.SPATIAL} if mode in ("motioncrafter", "motiondirector") else set())
    assert set(moved) == expected
    assert all(moved.values()), f"groups that did not learn: {[g for g, m in moved.items() if not m]}"


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_gradients_reach_only_their_branch(fresh_base, mc, kind):
    """L_tmp trains the temporal adapter only (the spatial LoRA is on but frozen in that pass);
    L_sp trains the spatial LoRA only; L_app trains the temporal adapter only."""
    from motioncrafter.trainer import MOTION, SPATIAL, _Branches

    base = fresh_base("animatediff")
    branches = _Branches(base, MODES["motioncrafter"], AdapterConfig(kind=kind, rank=2, spatial_rank=2), mc.tune_cfg())
    latents, t, text = mc.unet_inputs(base)

    def grads_after(passes) -> dict[str, bool]:
        for params in branches.groups.values():
            for p in params.values():
                p.grad = None
        loss = sum(branches.forward(active, train, latents, t, text).square().mean() for active, train in passes)
        branches.enable_grads()
        loss.backward()
        return {g: any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps.values()) for g, ps in branches.groups.items()}

    tmp, sp, app = ([MOTION, SPATIAL], [MOTION]), ([SPATIAL], [SPATIAL]), ([MOTION], [MOTION])
    joint = ([MOTION, SPATIAL], [MOTION, SPATIAL])
    try:
        assert grads_after([tmp]) == {MOTION: True, SPATIAL: False}
        assert grads_after([joint]) == {MOTION: True, SPATIAL: True}
        assert grads_after([sp]) == {MOTION: False, SPATIAL: True}
        assert grads_after([app]) == {MOTION: True, SPATIAL: False}
        assert grads_after([tmp, sp, app]) == {MOTION: True, SPATIAL: True}
    finally:
        branches.restore()


def _lora_moved(params: dict[str, torch.Tensor]) -> bool:
    return any(p.abs().sum() > 0 for n, p in params.items() if ".lora_B." in n)  # LoRA B starts at zero


def test_spatial_warmup_tunes_the_spatial_path_alone_first(bases, clip, mc, monkeypatch):
    """The warm-up's steps (negative in the history) tune the spatial LoRA on one-frame passes only:
    when the motion adapter's first step starts, the spatial LoRA has moved and the motion adapter has not."""
    from motioncrafter import trainer

    at_first_motion_step: dict[str, bool] = {}
    real = trainer._Step.__call__

    def spy(self, x0, text):
        if not at_first_motion_step:
            at_first_motion_step.update({g: _lora_moved(ps) for g, ps in self.branches.groups.items()})
        return real(self, x0, text)

    monkeypatch.setattr(trainer._Step, "__call__", spy)
    result = tune_clip(bases["animatediff"], clip.frames, clip.caption, mc.tune_cfg(steps=2, spatial_warmup=3, log_every=1))
    assert at_first_motion_step == {trainer.MOTION: False, trainer.SPATIAL: True}
    assert [row["step"] for row in result.history] == [-3, -2, -1, 0, 1]
    assert all(set(row) == {"step", "loss", "sp"} for row in result.history[:3])
    assert all(set(row) == {"step", "loss"} | COMPONENTS["motioncrafter"] for row in result.history[3:])
    assert result.adapter.meta["tune_config"]["spatial_warmup"] == 3
    assert result.adapter.meta["tune_config"]["steps"] == 2  # the motion adapter's steps


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_fold_spatial_keeps_the_outputs_and_restore_undoes_it(fresh_base, mc, family):
    """Folded into the weights, the spatial LoRA gives the UNet the outputs it gave as a LoRA, with no
    spatial LoRA layers left; `restore` puts the base's own weights back."""
    from motioncrafter.trainer import MOTION, SPATIAL, _Branches

    base = fresh_base(family)
    before = mc.snapshot(base.unet)
    branches = _Branches(base, MODES["motioncrafter"], AdapterConfig(rank=2, spatial_rank=2), mc.tune_cfg())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for params in branches.groups.values():
            for n, p in params.items():
                if ".lora_B." in n:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        inputs = mc.unet_inputs(base)
        with_spatial = branches.forward([MOTION, SPATIAL], [], *inputs)
        without = branches.forward([MOTION], [], *inputs)
        assert mc.rel_diff(without, with_spatial) > 1e-3  # the spatial LoRA changes the output: folding has work to do
        branches.fold_spatial()
        assert ad.lora_names(base.unet) == {MOTION} and SPATIAL not in branches.groups
        folded = branches.forward([MOTION], [], *inputs)
    torch.testing.assert_close(folded, with_spatial, rtol=1e-4, atol=1e-5)
    branches.restore()
    mc.assert_same_state(base.unet, before)


def test_spatial_freeze_runs_one_unet_call_per_motion_step(bases, clip, mc, monkeypatch):
    """Frozen after its warm-up, the spatial path costs the motion adapter's steps nothing: one UNet call
    on the whole clip each (the warm-up's calls see one frame); the base comes back exactly as it was."""
    from motioncrafter.base import BaseModel

    base = bases["unet3d"]
    before = mc.snapshot(base.unet)
    frames_per_call: list[int] = []
    real = BaseModel.predict

    def spy(self, x, *args, **kwargs):
        frames_per_call.append(x.shape[2])
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(BaseModel, "predict", spy)
    cfg = mc.tune_cfg(steps=3, spatial_warmup=2, spatial_freeze=True, lambda_app=0.0, log_every=1)
    result = tune_clip(base, clip.frames, clip.caption, cfg)
    assert frames_per_call == [1, 1] + [cfg.num_frames] * 3
    assert [set(row) - {"step", "loss"} for row in result.history] == [{"sp"}] * 2 + [{"tmp"}] * 3
    mc.assert_same_state(base.unet, before)
    assert not ad.tuner_layers(base.unet)
    assert {_lora_layer(k) for k in result.adapter.tensors} == set(lora_targets(base.unet, "temporal"))


def test_lora_dropout_drops_while_tuning_only(bases, clip, mc, monkeypatch):
    """`adapter.dropout` puts peft's dropout on both tuning LoRAs' inputs while tuning (the same masks for
    the same seed), is recorded in the adapter's LoraConfig, and is not there when the adapter is loaded."""
    from torch import nn

    from motioncrafter import trainer
    from motioncrafter.library import peft_config

    base = bases["animatediff"]
    seen: dict[str, set] = {}
    real = trainer._Step.__call__

    def spy(self, x0, text):
        for layer in self.branches.layers:
            for name, module in layer.lora_dropout.items():
                seen.setdefault(name, set()).add(module.p if isinstance(module, nn.Dropout) else None)
        return real(self, x0, text)

    monkeypatch.setattr(trainer._Step, "__call__", spy)

    def run(dropout):
        return tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(steps=2, log_every=1), AdapterConfig(dropout=dropout)).adapter

    dropped, again = run(0.5), run(0.5)
    assert seen == {trainer.MOTION: {0.5}, trainer.SPATIAL: {0.5}}
    assert mc.as_bytes(dropped.tensors) == mc.as_bytes(again.tensors)  # seeded masks
    plain = run(0.0)
    assert mc.as_bytes(plain.tensors) != mc.as_bytes(dropped.tensors)  # the masks changed what was learned
    assert dropped.meta["lora"]["lora_dropout"] == peft_config(dropped.meta)["lora_dropout"] == 0.5
    assert plain.meta["lora"]["lora_dropout"] == 0.0

    ad.attach(base, dropped, "motion")
    try:
        loaded = [layer for layer in ad.tuner_layers(base.unet) if "motion" in layer.lora_dropout]
        assert loaded and all(isinstance(layer.lora_dropout["motion"], nn.Identity) for layer in loaded)
    finally:
        ad.detach(base, "motion")


def test_shift_views_move_the_clip_and_keep_its_motion(clip):
    frames = clip.frames  # a red circle on a black background, 32 x 32
    views = clip_views(frames, "shift")
    assert views.shape == (9, *frames.shape)
    np.testing.assert_array_equal(views[0], frames)  # the original comes first
    assert len({v.tobytes() for v in views}) == 9
    red = lambda v: np.argwhere((v == (230, 30, 30)).all(-1))  # noqa: E731  the circle's pixels, (t, y, x)
    start = red(frames)
    for view in views[1:]:
        moved = red(view)
        shift = moved[:, 1:].mean(0) - start[:, 1:].mean(0)
        assert np.abs(shift).max() == pytest.approx(4, abs=0.5) and set(np.round(np.abs(shift))) <= {0.0, 4.0}
        # every frame moved alike: the motion frame to frame is the clip's
        per_frame = [red(view[t])[:, :2].mean(0) - red(frames[t])[:, :2].mean(0) for t in range(len(frames))]
        np.testing.assert_allclose(per_frame, [per_frame[0]] * len(frames), atol=0.5)
