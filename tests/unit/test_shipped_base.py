"""The committed MovingShapes base: intact, loadable by the project and by stock diffusers."""

import json

import numpy as np
import torch

from motioncrafter.base import fingerprint_folder, load_base
from motioncrafter.toyworld import BASE_DIR, BASE_FINGERPRINT
from motioncrafter.toyworld.world import HELD_OUT_MOTIONS


def test_committed_weights_match_the_recorded_fingerprint():
    meta = json.loads((BASE_DIR / "toyworld.json").read_text())
    assert fingerprint_folder(BASE_DIR) == meta["fingerprint"] == BASE_FINGERPRINT
    assert meta["held_out_motions"] == list(HELD_OUT_MOTIONS)


def test_loads_in_the_project():
    base = load_base(BASE_DIR)
    assert base.family == "unet3d" and base.fingerprint == BASE_FINGERPRINT
    assert not any(p.requires_grad for p in base.unet.parameters())


def test_loads_and_samples_in_stock_diffusers():
    from diffusers import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline.from_pretrained(BASE_DIR)
    out = pipe("a red circle moves left to right on a black background", num_inference_steps=2, height=32, width=32,
               num_frames=8, generator=torch.Generator().manual_seed(0), output_type="np")
    frames = np.asarray(out.frames)
    assert frames.shape[-4:] == (8, 32, 32, 3) and np.isfinite(frames).all()


def test_direction_words_stay_apart_in_the_text_encoder():
    """The first base trained its text encoder jointly and collapsed motion words (upward vs downward
    captions 3% apart, red vs green 75%), so it could not follow them: the shipped one must keep them apart."""
    base = load_base(BASE_DIR)

    def apart(a: str, b: str) -> float:
        e = base.encode_prompts([a, b])
        return float((e[0] - e[1]).norm() / e[0].norm())

    caption = "a red circle moves {} on a black background"
    for one, other in [("upward", "downward"), ("left to right", "right to left"), ("diagonally up", "diagonally down")]:
        assert apart(caption.format(one), caption.format(other)) > 0.1, (one, other)
