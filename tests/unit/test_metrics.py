"""Metrics against MovingShapes clips whose motion and appearance are known exactly."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from motioncrafter.metrics import (
    appearance_scores,
    direction,
    diversity,
    flow_fidelity,
    flow_fields,
    motion_fidelity,
    observe,
    temporal_consistency,
)
from motioncrafter.toyworld.world import LINEAR_MOTIONS, MOTIONS, ClipSpec, render, sample_specs

SPEC = ClipSpec(colour="red", shape="circle", background="black", motion="left_to_right")


def frames(**changes) -> np.ndarray:
    return render(replace(SPEC, **changes)).frames


def still(**changes) -> np.ndarray:
    """The first frame of a clip held for the whole clip."""
    video = frames(**changes)
    return np.repeat(video[:1], len(video), axis=0)


def noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, frames().shape, dtype=np.uint8)


# --- ground truth (shapes) -------------------------------------------------------------


@pytest.mark.parametrize("motion", list(MOTIONS))
def test_motion_fidelity_of_a_clip_with_itself_is_one(motion):
    obs = observe(frames(motion=motion))
    assert motion_fidelity(obs, obs) == pytest.approx(1.0)


@pytest.mark.parametrize("motion", LINEAR_MOTIONS)
def test_motion_fidelity_of_the_reversed_linear_motion_is_near_zero(motion):
    video = frames(motion=motion)
    assert motion_fidelity(observe(video[::-1]), observe(video)) < 0.02


@pytest.mark.parametrize("offset", [(0.08, 0.08), (-0.08, 0.05), (0.0, -0.08)])
def test_motion_fidelity_ignores_where_the_object_starts(offset):
    assert motion_fidelity(observe(frames(offset=offset)), observe(frames())) > 0.97


@pytest.mark.parametrize("motion", ["upward", "downward"])
def test_motion_fidelity_of_a_perpendicular_motion_of_equal_extent(motion):
    score = motion_fidelity(observe(frames(motion=motion)), observe(frames()))
    assert score == pytest.approx(1 - 1 / math.sqrt(2), abs=0.03)


def test_motion_fidelity_of_a_static_or_missing_object_is_zero():
    reference = observe(frames())
    empty = np.zeros_like(frames())
    assert motion_fidelity(observe(still()), reference) == pytest.approx(0.0, abs=1e-6)
    assert motion_fidelity(observe(empty), reference) == 0.0


@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.08, -0.08), (-0.08, 0.08)])
@pytest.mark.parametrize("motion", LINEAR_MOTIONS)
def test_direction_recovers_each_linear_motion(motion, offset):
    assert direction(observe(frames(motion=motion, offset=offset))) == motion


def test_direction_of_a_static_object_is_none():
    assert direction(observe(still())) is None


def test_observe_recovers_colour_shape_and_background():
    specs = sample_specs(120, seed=1, motions=tuple(MOTIONS))
    seen = [observe(render(s).frames) for s in specs]
    wrong = [
        (s, o.colour, o.shape, o.background)
        for s, o in zip(specs, seen)
        if (o.colour, o.shape, o.background) != (s.colour, s.shape, s.background)
    ]
    assert not wrong


def test_appearance_scores_count_the_reference_colour_as_leakage():
    reference = {"colour": "red", "shape": "circle", "background": "black"}
    asked = {**reference, "colour": "blue"}
    leaked = appearance_scores(observe(frames(colour="red")), asked, reference)
    followed = appearance_scores(observe(frames(colour="blue")), asked, reference)
    assert (leaked["leakage"], leaked["colour_acc"]) == (1.0, 0.0)
    assert (followed["leakage"], followed["colour_acc"], followed["appearance_acc"]) == (0.0, 1.0, 1.0)


def test_appearance_scores_leakage_is_nan_when_the_prompt_asks_the_reference():
    reference = {"colour": "red", "shape": "circle", "background": "black"}
    assert math.isnan(appearance_scores(observe(frames()), reference, reference)["leakage"])


def test_diversity_is_zero_for_identical_videos_and_positive_for_different_ones():
    assert diversity([frames(), frames(), frames()]) == 0.0
    assert diversity([frames(), frames(colour="blue"), frames(motion="upward")]) > 0.01


# --- optical flow ----------------------------------------------------------------------


def test_flow_fields_shape_and_sign():
    flow = flow_fields(frames(), size=48)
    assert flow.shape == (len(frames()) - 1, 48, 48, 2)
    dx, dy = flow.mean(axis=(0, 1, 2))
    assert dx > 0.1 and abs(dy) < 0.01  # left to right: +x, no vertical motion
    assert flow_fields(np.zeros((3, 40, 24, 3), np.uint8), size=16).shape == (2, 16, 16, 2)


@pytest.mark.parametrize("invariant", [False, True])
def test_flow_fidelity_extremes(invariant):
    video = frames()
    assert flow_fidelity(video, video, invariant=invariant) > 0.99
    assert 0.0 <= flow_fidelity(video[::-1], video, invariant=invariant) < 0.05  # clipped at 0, not negative
    assert flow_fidelity(still(), video, invariant=invariant) == 0.0
    assert flow_fidelity(still(), still(), invariant=invariant) == 1.0
    assert 0.0 <= flow_fidelity(frames(motion="upward"), video, invariant=invariant) < 0.05


def test_flow_fidelity_invariant_variant_ignores_position_and_appearance():
    video = frames()
    shifted = frames(offset=(0.08, 0.08), colour="blue", shape="square", background="white")
    assert flow_fidelity(shifted, video, invariant=True) > 0.99
    assert flow_fidelity(shifted, video) < flow_fidelity(shifted, video, invariant=True) - 0.05


def test_flow_fidelity_compares_the_common_frames_of_videos_of_different_length():
    video = frames()
    assert flow_fidelity(video[:5], video) > 0.99
    assert 0.0 <= flow_fidelity(video[::-1][:5], video) < 0.05


@pytest.mark.parametrize("warp", [False, True])
def test_temporal_consistency_orders_static_moving_and_noise(warp):
    static, moving, noisy = (temporal_consistency(v, warp=warp) for v in (still(), frames(), noise()))
    assert static == pytest.approx(1.0)
    assert noisy < moving < static


def test_temporal_consistency_of_noise_is_about_two_thirds():
    assert temporal_consistency(noise()) == pytest.approx(2 / 3, abs=0.01)


def test_warped_temporal_consistency_forgives_motion():
    video = frames(motion="diagonal_down")
    assert 1 - temporal_consistency(video, warp=True) < 0.2 * (1 - temporal_consistency(video))


# --- CLIP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised tiny CLIP saved as a user's local model folder would be."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from motioncrafter.toyworld.model import write_tokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    write_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(**tower, vocab_size=len(tokenizer), max_position_embeddings=16,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(**tower, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_clip_scorer_returns_cosines(tiny_clip):
    from motioncrafter.metrics import ClipScorer

    scorer = ClipScorer(tiny_clip)
    video = frames()
    alignments = [scorer.text_alignment(video, SPEC.caption), scorer.text_alignment(video, "a blue square grows")]
    consistency = scorer.frame_consistency(video)
    for score in (*alignments, consistency):
        assert math.isfinite(score) and -1.0 <= score <= 1.0
    assert alignments[0] != alignments[1]  # the prompt is used
    assert scorer.frame_consistency(still()) == pytest.approx(1.0, abs=1e-5)


def test_clip_scorer_names_a_missing_folder(tmp_path):
    from motioncrafter.metrics import ClipScorer

    missing = tmp_path / "no_such_clip"
    with pytest.raises(FileNotFoundError, match="no_such_clip"):
        ClipScorer(missing)


@pytest.mark.parametrize("config, found", [({"model_type": "bert"}, "'bert'"), (None, "no config.json")])
def test_clip_scorer_rejects_a_folder_that_is_not_clip(tmp_path, config, found):
    from motioncrafter.metrics import ClipScorer

    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*not a CLIP model.*" + found):
        ClipScorer(tmp_path)


def test_importing_metrics_does_not_import_transformers():
    code = "import sys, motioncrafter.metrics; print('transformers' in sys.modules or 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
