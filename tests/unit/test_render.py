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

    unguided = render(base, PROMPTS[:2], [0, 1], RenderConfig(num_steps=2, guidance_scale=1.0))
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
