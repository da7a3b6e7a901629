"""The disentanglement switches: which parameters each loss term reaches, the static term's
frame-constant gradient, timestep-layered tuning, snapshots, LoRA target sets, and the
render-time adapter schedule."""

from __future__ import annotations

import pytest
import torch

from motioncrafter import adapters as ad
from motioncrafter import losses
from motioncrafter.branches import lora_targets
from motioncrafter.config import AdapterConfig, ConfigError, EnhanceConfig, RenderConfig, TuneConfig
from motioncrafter.modes import MODES
from motioncrafter.render import denoise, initial_noise, render, schedule_scale
from motioncrafter.trainer import MOTION, SPATIAL, _Branches, _Step, tune_clip, with_mode_recipe

pytestmark = pytest.mark.filterwarnings(
    "ignore:Already found a `peft_config` attribute",
    "ignore:Converting a tensor with requires_grad=True to a scalar",
)


def test_static_term_gradient_has_no_frame_varying_part():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 8, 5, 5, generator=g, requires_grad=True)
    base = torch.randn(2, 4, 8, 5, 5, generator=g)
    losses.appearance_static(pred, base).sum().backward()
    assert pred.grad.abs().sum() > 0
    assert pred.grad.std(dim=2).max() < 1e-7  # the same gradient on every frame
    # the whole-output comparison does have a frame-varying part (so the check above can fail)
    pred.grad = None
    losses.appearance_output(pred, base).sum().backward()
    assert pred.grad.std(dim=2).max() > 1e-4


def test_centered_temporal_term_is_the_complement_of_the_static_one():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 8, 5, 5, generator=g, requires_grad=True)
    target = torch.randn(2, 4, 8, 5, 5, generator=g)
    losses.per_sample(losses.centered(pred), losses.centered(target)).sum().backward()
    assert pred.grad.abs().sum() > 0
    assert pred.grad.mean(dim=2).abs().max() < 1e-7  # no frame-constant part: it never moves the temporal mean
    # a shift shared by every frame (what `static` compares) leaves the centered term unchanged
    shifted = pred.detach() + torch.randn(2, 4, 1, 5, 5, generator=g)
    assert torch.allclose(losses.per_sample(losses.centered(shifted), losses.centered(target)),
                          losses.per_sample(losses.centered(pred.detach()), losses.centered(target)), atol=1e-5)
    pred.grad = None
    losses.per_sample(pred, target).sum().backward()  # the plain term does move the mean (the check above can fail)
    assert pred.grad.mean(dim=2).abs().max() > 1e-4


@pytest.mark.parametrize("mode, own", [("temporal_only", "plain"), ("motiondirector", "debiased")])
def test_temporal_loss_switch_overrides_the_mode(bases, clip, mc, mode, own):
    def first_tmp(temporal_loss):
        cfg = mc.tune_cfg(mode=mode, steps=1, temporal_loss=temporal_loss, lambda_app=0.0)
        return tune_clip(bases["unet3d"], clip.frames, clip.caption, cfg).history[0]["tmp"]

    auto = first_tmp("auto")
    assert auto == first_tmp(own)  # auto is the mode's own form
    others = {form: first_tmp(form) for form in ("plain", "debiased", "centered") if form != own}
    assert all(abs(value - auto) > 1e-4 for value in others.values()), (auto, others)


def test_each_mode_tunes_at_its_own_learning_rate_unless_tune_lr_sets_one(bases, clip, mc):
    def run(mode, **kw):
        return tune_clip(bases["unet3d"], clip.frames, clip.caption, mc.tune_cfg(mode=mode, steps=1, lambda_app=0.0, **kw)).adapter

    assert MODES["motioncrafter"].lr != MODES["temporal_only"].lr  # else this test could not tell them apart
    own = {mode: run(mode) for mode in ("motioncrafter", "temporal_only")}
    for mode, adapter in own.items():
        explicit = run(mode, lr=MODES[mode].lr)
        assert adapter.meta["tune_config"]["lr"] == MODES[mode].lr
        assert adapter.meta["tune_config"]["temporal_loss"] == MODES[mode].temporal_loss  # the recipe that ran, not "auto"
        assert all(torch.equal(adapter.tensors[k], explicit.tensors[k]) for k in adapter.tensors)
    other = run("motioncrafter", lr=MODES["temporal_only"].lr)  # the rate is used, not only recorded
    assert any(not torch.equal(own["motioncrafter"].tensors[k], other.tensors[k]) for k in other.tensors)


def test_warmup_starts_the_learning_rate_at_zero_and_raises_it(bases, clip, mc):
    """diffusers' constant_with_warmup: the first step's rate is 0 (the adapter does not move), then it rises."""
    def run(warmup):
        cfg = mc.tune_cfg(mode="temporal_only", steps=3, warmup_steps=warmup)
        return tune_clip(bases["unet3d"], clip.frames, clip.caption, cfg, snapshot_at=(1,))

    warm, constant = run(2), run(0)
    lora_b = lambda adapter: [t for k, t in adapter.tensors.items() if ".lora_B." in k]  # noqa: E731 (zero at init)
    assert lora_b(warm.snapshots[1]) and not any(t.any() for t in lora_b(warm.snapshots[1]))
    assert any(t.any() for t in lora_b(constant.snapshots[1]))
    assert any(t.any() for t in lora_b(warm.adapter))  # it does learn once the rate rises
    assert mc.as_bytes(warm.adapter.tensors) != mc.as_bytes(constant.adapter.tensors)


@pytest.mark.parametrize("spatial_pass", ["frame", "joint"])
def test_spatial_every_tunes_the_spatial_lora_on_every_kth_step_and_keeps_it_on(bases, clip, mc, monkeypatch, spatial_pass):
    passes = []  # (adapters on, groups tuned, frames) of every UNet pass
    forward = _Branches.forward

    def recording(self, active, train, x, t, text):
        passes.append((sorted(active), sorted(train), x.shape[2]))
        return forward(self, active, train, x, t, text)

    monkeypatch.setattr(_Branches, "forward", recording)
    tune = mc.tune_cfg(steps=4, log_every=1, spatial_every=3, lambda_app=0.0, spatial_pass=spatial_pass)
    history = tune_clip(bases["unet3d"], clip.frames, clip.caption, tune).history
    both, frames = sorted([MOTION, SPATIAL]), tune.num_frames
    temporal, frame = (both, [MOTION], frames), ([SPATIAL], [SPATIAL], 1)
    tuning_step = [(both, both, frames)] if spatial_pass == "joint" else [temporal, frame]
    assert passes == tuning_step + [temporal, temporal] + tuning_step  # the spatial LoRA on in every temporal pass
    assert ["sp" in row for row in history] == [spatial_pass == "frame", False, False, spatial_pass == "frame"]


@pytest.mark.parametrize(("app_loss", "temporal_prompt", "spatial_pass", "spatial_targets"), [
    *[(app_loss, prompt, "frame", "attention") for app_loss in ("output", "static", "stats") for prompt in ("clip", "enhanced")],
    ("output", "clip", "joint", "attention"), ("stats", "clip", "joint", "attention"),
    ("output", "clip", "frame", "resnets"), ("output", "clip", "joint", "resnets"),
])
def test_each_term_reaches_only_its_branch(fresh_base, clip, mc, app_loss, temporal_prompt, spatial_pass, spatial_targets):
    base = fresh_base("unet3d")
    tune = with_mode_recipe(mc.tune_cfg(app_loss=app_loss, temporal_prompt=temporal_prompt, spatial_pass=spatial_pass),
                            MODES["motioncrafter"])
    branches = _Branches(base, MODES["motioncrafter"], AdapterConfig(rank=2, spatial_rank=2, spatial_targets=spatial_targets), tune)
    on_resnets = {n for n in branches.groups[SPATIAL] if ".resnets." in n}
    assert bool(on_resnets) == (spatial_targets == "resnets")  # the ResNet blocks only where asked
    assert not any(".resnets." in n for n in branches.groups[MOTION])
    step = _Step(base, branches, MODES["motioncrafter"], tune, clip.caption, None, EnhanceConfig(), 0)
    try:
        with torch.no_grad():
            # LoRA B starts at zero, where the tuned model equals the base and L_app has no gradient
            for params in branches.groups.values():
                for name, p in params.items():
                    if "lora_B" in name:
                        p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
            x0 = base.encode_frames(clip.frames[None])
            text = base.encode_prompts([clip.caption])
        parts = step(x0, text)
        joint = spatial_pass == "joint"  # no pass of its own: L_tmp tunes the spatial LoRA too
        assert set(parts) == ({"tmp", "app"} if joint else {"tmp", "sp", "app"})
        reached = {}
        for name, term in parts.items():
            for params in branches.groups.values():
                for p in params.values():
                    p.grad = None
            branches.enable_grads()
            term.backward(retain_graph=True)
            reached[name] = {g for g, ps in branches.groups.items() if any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps.values())}
            if on_resnets and SPATIAL in reached[name]:  # the spatial path's ResNet layers learn with the rest of it
                assert all(branches.groups[SPATIAL][n].grad is not None for n in on_resnets)
        assert reached == ({"tmp": {MOTION, SPATIAL}, "app": {MOTION}} if joint else {"tmp": {MOTION}, "sp": {SPATIAL}, "app": {MOTION}})
    finally:
        step.close()
        branches.restore()


@pytest.mark.parametrize("spatial_targets", ["attention", "resnets"])
def test_frozen_spatial_lora_runs_merged_into_the_weights(fresh_base, clip, spatial_targets):
    """The temporal pass, which does not tune the spatial LoRA, runs it inside the weights: the
    prediction and the motion adapter's gradient of its layers switched on, none of its layers
    called, and the base layers' own weights back after; the pass that tunes it runs its layers."""
    base = fresh_base("unet3d")
    tune = with_mode_recipe(TuneConfig(progress=False), MODES["motioncrafter"])
    adapter = AdapterConfig(rank=2, spatial_rank=2, spatial_targets=spatial_targets)
    branches = _Branches(base, MODES["motioncrafter"], adapter, tune)
    assert branches.merge_frozen_spatial
    spatial_layers = [layer for layer in branches.layers if SPATIAL in getattr(layer, "lora_A", {})]
    weights = {layer: layer.get_base_layer().weight for layer in spatial_layers}
    values = {layer: w.detach().clone() for layer, w in weights.items()}
    calls = []
    hooks = [layer.lora_A[SPATIAL].register_forward_hook(lambda *_: calls.append(1)) for layer in spatial_layers]
    try:
        with torch.no_grad():
            for params in branches.groups.values():  # LoRA B starts at zero, where merged or not is the same
                for name, p in params.items():
                    if "lora_B" in name:
                        p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
            x = base.encode_frames(clip.frames[None])
            x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
            t, text = torch.tensor([600]), base.encode_prompts([clip.caption])
        runs = {}
        for merge in (False, True):
            branches.merge_frozen_spatial = merge
            for params in branches.groups.values():
                for p in params.values():
                    p.grad = None
            calls.clear()
            branches.new_step()
            pred = branches.forward([MOTION, SPATIAL], [MOTION], x, t, text)
            branches.enable_grads()
            pred.square().mean().backward()
            assert all(p.grad is None for p in branches.groups[SPATIAL].values())
            runs[merge] = pred.detach(), {n: p.grad for n, p in branches.groups[MOTION].items()}, len(calls)
        (merged, merged_grads, merged_calls), (plain, plain_grads, plain_calls) = runs[True], runs[False]
        assert merged_calls == 0 and plain_calls == len(spatial_layers)
        torch.testing.assert_close(merged, plain, rtol=1e-4, atol=1e-5)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(merged_grads[name], grad, rtol=1e-3, atol=1e-6)
        assert all(layer.get_base_layer().weight is w and torch.equal(w, values[layer]) for layer, w in weights.items())
        calls.clear()
        branches.forward([SPATIAL], [SPATIAL], x[:, :, :1], t, text)  # the pass that tunes it: its layers run
        assert len(calls) == len(spatial_layers)
    finally:
        for hook in hooks:
            hook.remove()
        branches.restore()
    # where merged would differ (dropout) or the weights are partitioned (ZeRO-3), its layers run
    for adapter, tune in ((AdapterConfig(dropout=0.1), tune), (adapter, TuneConfig(engine="deepspeed", zero_stage=3))):
        branches = _Branches(base, MODES["motioncrafter"], adapter, tune)
        branches.restore()
        assert not branches.merge_frozen_spatial


def test_stats_term_is_zero_against_itself_and_reads_spatial_modules(fresh_base, clip, mc):
    """Before any weight moves, the tuned model is the base: the stats distance is 0; hooks record
    one (mean, std) per frame and channel of every Transformer2DModel."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    base = fresh_base("unet3d")
    stats = losses.SpatialStats(base.unet)
    latents, t, text = mc.unet_inputs(base)
    with torch.no_grad(), stats.record():
        base.predict(latents, t, text)
    first = stats.take()
    with torch.no_grad():
        base.predict(latents, t, text)  # not recording
    assert stats.take() == []
    with torch.no_grad(), stats.record():
        base.predict(latents, t, text)
    second = stats.take()
    stats.remove()
    n_modules = sum(isinstance(m, Transformer2DModel) for m in base.unet.modules())
    assert len(first) == n_modules and first[0].shape[0] == latents.shape[0] * latents.shape[2] and first[0].shape[-1] == 2
    assert torch.equal(losses.appearance_stats(first, second, 2), torch.zeros(2))


def test_timesteps_drawn_from_ranges_and_split_terms(bases, clip, mc):
    sched = bases["unet3d"].scheduler
    n = sched.config.num_train_timesteps
    allowed = losses.allowed_timesteps(n, [[0.7, 1.0]])
    assert allowed.min() == int(0.7 * n) and allowed.max() == n - 1
    g = torch.Generator().manual_seed(0)
    noisy = losses.add_noise(sched, torch.zeros(64, 4, 2, 4, 4), g, [[0.0, 0.2], [0.8, 1.0]])
    assert ((noisy.timesteps < 0.2 * n) | (noisy.timesteps >= 0.8 * n)).all()

    # disjoint ranges: every step pays for exactly one of L_tmp and L_app
    cfg = mc.tune_cfg(steps=12, log_every=1, motion_timesteps=[0.5, 1.0], appearance_timesteps=[0.0, 0.5])
    history = tune_clip(bases["unet3d"], clip.frames, clip.caption, cfg).history
    assert all(("tmp" in row) != ("app" in row) for row in history)
    assert any("tmp" in row for row in history) and any("app" in row for row in history)


def test_snapshot_equals_a_shorter_run(bases, clip, mc):
    long = tune_clip(bases["unet3d"], clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=3), snapshot_at=(2,))
    short = tune_clip(bases["unet3d"], clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=2))
    assert set(long.snapshots) == {2}
    assert mc.as_bytes(long.snapshots[2].tensors) == mc.as_bytes(short.adapter.tensors)
    assert mc.as_bytes(long.adapter.tensors) != mc.as_bytes(short.adapter.tensors)
    assert long.snapshots[2].meta["tune_config"]["steps"] == 2


def test_tune_clip_leaves_the_global_rng_alone(bases, clip, mc):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tune_clip(bases["unet3d"], clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=1))
    assert torch.equal(torch.rand(3), expected)


def test_motiondirector_masks_the_spatial_path_on_some_steps(bases, clip, mc):
    history = tune_clip(bases["unet3d"], clip.frames, clip.caption, mc.tune_cfg(mode="motiondirector", steps=20, log_every=1)).history
    skipped = sum("sp" not in row for row in history)
    assert 0 < skipped < 20  # about 20% of the steps


@pytest.mark.parametrize("layers, suffixes", [("qk", (".to_q", ".to_k")), ("qkvo", (".to_q", ".to_k", ".to_v", ".to_out.0"))])
def test_lora_target_sets(bases, family, layers, suffixes):
    unet = bases[family].unet
    every = lora_targets(unet, "temporal")
    subset = lora_targets(unet, "temporal", layers)
    assert subset and set(subset) < set(every)
    assert all(name.endswith(suffixes) for name in subset)
    assert {s for name in subset for s in suffixes if name.endswith(s)} == set(suffixes)
    with pytest.raises(ValueError, match="unknown LoRA layer set"):
        lora_targets(unet, "temporal", "everything")


def test_config_checks_the_new_switches():
    with pytest.raises(ConfigError, match="tune.app_loss"):
        TuneConfig(app_loss="pixels")
    with pytest.raises(ConfigError, match="tune.motion_timesteps"):
        TuneConfig(motion_timesteps=[0.8, 0.2])
    with pytest.raises(ConfigError, match="tune.temporal_loss"):
        TuneConfig(temporal_loss="debias")
    with pytest.raises(ConfigError, match="tune.spatial_every"):
        TuneConfig(spatial_every=0)
    with pytest.raises(ConfigError, match="tune.spatial_pass"):
        TuneConfig(spatial_pass="frames")
    with pytest.raises(ConfigError, match="tune.spatial_pass.*temporal_prompt"):
        TuneConfig(spatial_pass="joint", temporal_prompt="enhanced")
    with pytest.raises(ConfigError, match="adapter.targets"):
        AdapterConfig(targets="v")
    with pytest.raises(ConfigError, match="adapter.spatial_targets"):
        AdapterConfig(spatial_targets="resnet")
    with pytest.raises(ConfigError, match="render.adapter_schedule"):
        RenderConfig(adapter_schedule=[[0.5, 1.0], [0.2, 0.0]])
    with pytest.raises(ConfigError, match="render.guidance_split"):
        RenderConfig(guidance_split="both")
    with pytest.raises(ConfigError, match="render.guidance_split.*guidance_scale = 1 turns off.*guidance_split = none"):
        RenderConfig(guidance_scale=1.0)  # the default split needs guidance: the error says how to turn it off
    with pytest.raises(ConfigError, match="render.motion_guidance"):
        RenderConfig(motion_guidance=-1.0)


def test_schedule_scale():
    schedule = [[0.0, 1.0], [0.6, 0.25]]
    assert [schedule_scale(schedule, s) for s in (0.0, 0.59, 0.6, 0.99)] == [1.0, 1.0, 0.25, 0.25]
    assert schedule_scale([[0.5, 0.0]], 0.1) == 1.0  # before the first entry: unscaled


def test_render_schedule_changes_the_adapter_scale_per_step(bases, tuned, mc):
    """With [[0, 1], [0.5, 0]] the adapter runs at its scale for the first half of the steps and is
    off for the rest; afterwards its scale is as it was. The videos differ from a constant scale."""
    base = bases["unet3d"]
    adapter = tuned("unet3d").adapter
    ad.attach(base, adapter, "motion", scale=0.8)
    layer = next(m for m in base.unet.modules() if hasattr(m, "scaling") and "motion" in getattr(m, "scaling", {}))
    seen = []
    hook = layer.register_forward_pre_hook(lambda m, args: seen.append((m.scaling["motion"], "motion" in m.active_adapters)))
    try:
        cfg = RenderConfig(num_steps=4, guidance_scale=1.0, guidance_split="none", num_frames=4, height=16, width=16,
                           adapter_schedule=[[0, 1], [0.5, 0]])
        scheduled = render(base, ["a red circle moves upward on a black background"], [0], cfg)
        per_step = [(round(s * a, 6)) for s, a in seen]
        assert per_step == [round(0.8 * adapter.meta["lora"]["lora_alpha"] / adapter.meta["lora"]["r"], 6)] * 2 + [0.0] * 2
        assert ad.active_weights(base) == {"motion": 0.8}
        seen.clear()
        constant = render(base, ["a red circle moves upward on a black background"], [0], RenderConfig(
            num_steps=4, guidance_scale=1.0, guidance_split="none", num_frames=4, height=16, width=16))
        assert len({round(s, 6) for s, _ in seen}) == 1
        assert not (scheduled == constant).all()
    finally:
        hook.remove()
        ad.detach(base, "motion")


@pytest.mark.parametrize("split", ["text_first", "adapter_first"])
def test_a_guidance_split_runs_the_base_and_the_adapter_as_its_formula_says(bases, tuned, split):
    """Each step: one pass with the adapter at scale 0 (text_first: both guidance branches; adapter_first:
    the negative prompt's), then one at its scale over the other rows; afterwards the adapter is as it
    was. adapter_first at weight 1 is plain guidance; with no adapter attached either split is."""
    base = bases["unet3d"]
    prompts = ["a red circle moves upward on a black background", "a blue square moves left on a white background"]
    small = dict(num_steps=3, num_frames=4, height=16, width=16, guidance_scale=4.0)
    noise = initial_noise(base, [0, 1], RenderConfig(**small))

    def run(guidance_split="none", **kw):
        return denoise(base, prompts, noise, RenderConfig(**small, guidance_split=guidance_split, **kw))

    assert torch.equal(run(guidance_split=split, motion_guidance=1.5), run())  # nothing attached
    ad.attach(base, tuned("unet3d").adapter, "motion", scale=0.8)
    layer = next(m for m in base.unet.modules() if "motion" in getattr(m, "scaling", {}))
    seen = []
    hook = layer.register_forward_pre_hook(lambda m, args: seen.append((round(m.scaling["motion"], 6), args[0].shape[0])))
    try:
        plain = run()
        seen.clear()
        split_run = run(guidance_split=split, motion_guidance=1.5)
        scale = round(0.8 * layer.lora_alpha["motion"] / layer.r["motion"], 6)
        rows = seen[1][1] if split == "text_first" else seen[0][1]  # rows of one branch (frames fold into the batch)
        first, second = (2 * rows, rows) if split == "text_first" else (rows, 2 * rows)
        assert seen == [(0.0, first), (scale, second)] * 3
        assert ad.active_weights(base) == {"motion": 0.8}
        assert not torch.allclose(split_run, plain, atol=1e-4)
        if split == "adapter_first":
            torch.testing.assert_close(run(guidance_split=split, motion_guidance=1.0), plain, atol=1e-5, rtol=1e-5)
    finally:
        hook.remove()
        ad.detach(base, "motion")


def test_a_full_weights_adapter_is_scaled_by_a_guidance_split_and_a_schedule_too(bases, tuned):
    """A full adapter (full fine-tuning, adapter.kind = full) has no LoRA scale: the sampler switches it by
    setting the weights to base + w (tuned - base). Before, `attach` left it out of the weights a split or a
    schedule scales, and both rendered it plainly without a word."""
    base = bases["unet3d"]
    small = dict(num_steps=3, num_frames=4, height=16, width=16, guidance_scale=4.0)
    prompts = ["a red circle moves upward on a black background"]
    noise = initial_noise(base, [0], RenderConfig(**small))

    def run(**kw):
        return denoise(base, prompts, noise, RenderConfig(**small, **kw))

    ad.attach(base, tuned("unet3d", kind="full").adapter, "motion", scale=0.8)
    attached = {k: v.clone() for k, v in base.unet.state_dict().items()}
    try:
        assert ad.active_weights(base) == {"motion": 0.8}
        plain = run(guidance_split="none")
        assert not torch.allclose(run(guidance_split="adapter_first", motion_guidance=0.0), plain, atol=1e-4)
        torch.testing.assert_close(run(guidance_split="adapter_first", motion_guidance=1.0), plain, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(run(guidance_split="none", adapter_schedule=[[0, 1], [0.5, 0]]), plain, atol=1e-4)
        assert all(torch.equal(v, attached[k]) for k, v in base.unet.state_dict().items())  # left at 0.8 after each
    finally:
        ad.detach(base, "motion")
