"""`motioncrafter.render`: the batched sampler on tiny random bases of both families."""

from __future__ import annotations

import numpy as np
import pytest

from motioncrafter.config import RenderConfig
from motioncrafter.render import render, render_grid

PROMPTS = [
    "a red circle moves left to right on a black background",
    "a blue square moves upward on a white background",
    "a green triangle grows on a gray background",
]
CFG = RenderConfig(num_steps=2)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float rounding of batched CPU kernels: at most 1 grey level, on very few values.

    Measured: a sample rendered inside a batch of 3 and alone differs by 0-3 values of 24,576,
    each by exactly 1 (latents differ by ~1e-5)."""
    __tracebackhide__ = True
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1, f"max difference {diff.max()}"
    assert (diff > 0).mean() < 1e-3, f"{(diff > 0).mean():.2%} of values differ"


def test_shape_and_dtype(base):
    videos = render(base, PROMPTS[:2], [0, 1], CFG)
    assert videos.dtype == np.uint8 and videos.shape == (2, 8, 32, 32, 3)
    small = render(base, PROMPTS[:1], [0], RenderConfig(num_steps=2, num_frames=4, height=16, width=16))
    assert small.shape == (1, 4, 16, 16, 3) and small.dtype == np.uint8
    empty = render(base, [], [], CFG)
    assert empty.shape == (0, 8, 32, 32, 3) and empty.dtype == np.uint8


def test_sample_reproducible_alone(base):
    batch = render(base, PROMPTS, [5, 6, 7], CFG)
    for i in range(3):
        _close(batch[i], render(base, [PROMPTS[i]], [5 + i], CFG)[0])
    # the same call again is exactly the same
    assert np.array_equal(render(base, PROMPTS, [5, 6, 7], CFG), batch)


def test_seeds_differ(base):
    a, b = render(base, [PROMPTS[0]] * 2, [0, 1], CFG)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    # and prompts matter too
    c = render(base, [PROMPTS[1]], [0], CFG)[0]
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("max_batch", [1, 2])
def test_max_batch_splitting(base, max_batch):
    whole = render(base, PROMPTS, [3, 4, 5], CFG)
    split = render(base, PROMPTS, [3, 4, 5], RenderConfig(num_steps=2, max_batch=max_batch))
    assert split.shape == whole.shape
    _close(split, whole)


def test_dpm_scheduler(base):
    dpm = RenderConfig(num_steps=3, scheduler="dpm")
    videos = render(base, PROMPTS[:2], [0, 1], dpm)
    assert videos.shape == (2, 8, 32, 32, 3) and videos.dtype == np.uint8
    assert np.array_equal(render(base, PROMPTS[:2], [0, 1], dpm), videos)
    ddim = render(base, PROMPTS[:2], [0, 1], RenderConfig(num_steps=3))
    assert not np.array_equal(videos, ddim)


def test_guidance(base, monkeypatch):
    encoded: list[int] = []
    encode = base.encode_prompts
    monkeypatch.setattr(base, "encode_prompts", lambda prompts: encoded.append(len(prompts)) or encode(prompts))

    unguided = render(base, PROMPTS[:2], [0, 1], RenderConfig(num_steps=2, guidance_scale=1.0, guidance_split="none"))
    assert unguided.shape == (2, 8, 32, 32, 3)
    assert encoded == [2]  # no negative prompts, no doubled batch
    guided = render(base, PROMPTS[:2], [0, 1], CFG)
    assert encoded[1:] == [4]  # negatives + prompts
    assert not np.array_equal(guided, unguided)
    negative = render(base, PROMPTS[:2], [0, 1], RenderConfig(num_steps=2, negative_prompt="a red circle"))
    assert not np.array_equal(negative, guided)


def test_mismatched_prompts_and_seeds(base):
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        render(base, PROMPTS[:2], [0], CFG)
    with pytest.raises(ValueError, match="1 prompts but 3 seeds"):
        render(base, PROMPTS[:1], [0, 1, 2], CFG)


def test_long_prompt_warns_and_is_truncated(base):
    # every word is one token of the debug tokenizer; its limit is 16 tokens with BOS and EOS
    long = "a red circle moves left to right on a black background and a blue square moves upward"
    assert base.tokenizer.model_max_length == 16
    with pytest.warns(UserWarning, match=r"prompt is 19 tokens, longer than the tokenizer's 16; truncated"):
        videos = render(base, [long], [0], CFG)
    assert videos.shape == (1, 8, 32, 32, 3)
    # what is kept is the first 14 words (+ BOS and EOS)
    kept = " ".join(long.split()[:14])
    assert np.array_equal(videos, render(base, [kept], [0], CFG))


def test_render_grid(base):
    pairs, videos = render_grid(base, PROMPTS[:2], [0, 1], CFG)
    assert pairs == [(PROMPTS[0], 0), (PROMPTS[0], 1), (PROMPTS[1], 0), (PROMPTS[1], 1)]
    assert videos.shape == (4, 8, 32, 32, 3)
    _close(videos, render(base, [p for p, _ in pairs], [s for _, s in pairs], CFG))


def _batch_sizes(module, calls: list[int]):
    """A forward pre-hook that records the batch size of every call of `module`."""
    return module.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True)


@pytest.mark.parametrize("guidance, rows", [(4.0, 2), (1.0, 1)])  # rows per video in one UNet call
def test_max_batch_bounds_every_unet_call(base, guidance, rows):
    calls: list[int] = []
    handle = _batch_sizes(base.unet, calls)
    try:
        render(base, PROMPTS, [3, 4, 5], RenderConfig(num_steps=2, max_batch=2, guidance_scale=guidance,
                                                      guidance_split="none" if guidance == 1.0 else "adapter_first"))
    finally:
        handle.remove()
    assert calls == [2 * rows] * 2 + [1 * rows] * 2  # 3 videos: a batch of 2, then 1; two steps each


@pytest.mark.parametrize("chunk", [1, 3])
def test_decode_chunks_bound_the_decoder_and_change_nothing(base, chunk):
    calls: list[int] = []
    handle = _batch_sizes(base.vae.decoder, calls)
    try:
        chunked = render(base, PROMPTS[:2], [0, 1], RenderConfig(num_steps=2, decode_chunk=chunk))
    finally:
        handle.remove()
    frames = 2 * CFG.num_frames
    assert calls == [chunk] * (frames // chunk) + ([frames % chunk] if frames % chunk else [])
    _close(chunked, render(base, PROMPTS[:2], [0, 1], RenderConfig(num_steps=2, decode_chunk=0)))


def test_vae_tiling(base):
    """diffusers' tiled decoding: frames larger than the VAE's sample_size (32 here) are decoded in
    tiles of its tile size; at or below it nothing changes; the resident VAE is left untiled.
    Tiles are approximate at their seams by design (on this 32-pixel VAE with mid-block attention,
    64x64 tiled differs from whole by ~20 grey levels on average), so only the mechanism is asserted."""
    small = RenderConfig(num_steps=2, num_frames=4)
    assert np.array_equal(render(base, PROMPTS[:1], [0], small),
                          render(base, PROMPTS[:1], [0], RenderConfig(num_steps=2, num_frames=4, vae_tiling=True)))
    sizes: list[tuple[int, int]] = []
    handle = base.vae.decoder.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        big = render(base, PROMPTS[:1], [0], RenderConfig(num_steps=2, num_frames=4, height=64, width=64, vae_tiling=True))
    finally:
        handle.remove()
    tile = base.vae.tile_latent_min_size
    assert big.shape == (1, 4, 64, 64, 3) and len(sizes) > 1 and all(max(s) <= tile for s in sizes), sizes
    assert base.vae.use_tiling is False


def test_vae_tiling_needs_a_tiling_vae():
    import types

    from motioncrafter.render import vae_tiling

    with pytest.raises(ValueError, match="render.vae_tiling: the base's VAE \\(SimpleNamespace\\) has no tiled decoding"):
        with vae_tiling(types.SimpleNamespace(), True):
            pass
