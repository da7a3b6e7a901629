"""MovingShapes: the generator, the tokenizer, the pretraining script's determinism and resume."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from motioncrafter.metrics import direction, observe
from motioncrafter.toyworld import model, pretrain
from motioncrafter.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    HELD_IN_MOTIONS,
    HELD_OUT_MOTIONS,
    LINEAR_MOTIONS,
    MOTIONS,
    SHAPES,
    ClipSpec,
    render,
    sample_specs,
    write_clips,
)


def test_world_is_as_big_as_promised():
    assert len(SHAPES) >= 3 and len(COLOURS) >= 6 and len(BACKGROUNDS) >= 3 and len(MOTIONS) >= 8
    assert set(HELD_OUT_MOTIONS) and not set(HELD_OUT_MOTIONS) & set(HELD_IN_MOTIONS)
    assert set(LINEAR_MOTIONS) <= set(HELD_IN_MOTIONS)


def test_generator_is_deterministic_and_captions_match():
    a, b = sample_specs(20, seed=3), sample_specs(20, seed=3)
    assert a == b and a != sample_specs(20, seed=4)
    assert all(s.motion in HELD_IN_MOTIONS for s in a)
    clip = render(a[0])
    assert clip.frames.shape == (8, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.trajectory.shape == (8, 2)
    np.testing.assert_array_equal(clip.frames, render(a[0]).frames)
    spec = ClipSpec("red", "circle", "black", "zigzag")
    assert spec.caption == "a red circle moves in a zigzag on a black background"


def test_trajectory_is_ground_truth():
    clip = render(ClipSpec("blue", "square", "white", "left_to_right"))
    obs = observe(clip.frames)
    assert np.abs(obs.trajectory - clip.trajectory).max() < 1.0  # pixels
    assert direction(obs) == "left_to_right"


def test_unknown_attribute_is_named():
    with pytest.raises(ValueError, match="unknown colour 'mauve'"):
        ClipSpec("mauve", "circle", "black", "zigzag")


def test_write_clips_writes_mp4s_and_a_manifest(tmp_path):
    manifest = write_clips(sample_specs(3, seed=0, motions=tuple(MOTIONS)), tmp_path)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert (tmp_path / row["video_uri"]).stat().st_size > 0
        assert row["prompt"].startswith("a ") and row["subject"] in row["prompt"]


def test_tokenizer_keeps_every_world_word_whole(tmp_path):
    model.write_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    for word in model.vocabulary():
        assert len(tok(word).input_ids) == 3, word  # <bos> word <eos>
    ids = tok("a cyan triangle moves diagonally up on a gray background").input_ids
    assert len(ids) == 12


def test_schedule_is_the_cosine_one_shifted_to_more_noise(tmp_path):
    from diffusers import DDIMScheduler

    def snr(betas):
        alpha_bar = np.cumprod(1 - np.asarray(betas, dtype=np.float64))
        return alpha_bar / (1 - alpha_bar)

    plain, shifted = snr(model.shifted_cosine_betas(1000, 1.0)), snr(model.shifted_cosine_betas(1000, 64.0))
    np.testing.assert_allclose(shifted[10:990] / plain[10:990], 1 / 64, rtol=1e-3)
    assert np.all(np.diff(shifted) < 0)  # noise only grows with t
    # the built scheduler carries it (as trained_betas, which stock diffusers reads back)
    model.write_tokenizer(tmp_path)
    sched = model.build_components(model.TinyBaseConfig(), tmp_path)["scheduler"]
    reloaded = DDIMScheduler.from_config(sched.config)
    np.testing.assert_allclose(reloaded.alphas_cumprod.numpy(), sched.alphas_cumprod.numpy())
    assert sched.config.prediction_type == "v_prediction"


def _pretrain(work, out, *extra):
    pretrain.main(["--work", str(work), "--out", str(out), "--vae-steps", "2", "--vae-gate", "0", "--clips", "8",
                   "--unet-steps", "4", "--batch", "2", "--ckpt-every", "2", "--eval-prompts", "0", "--threads", "1",
                   *extra])


@pytest.mark.slow
def test_pretraining_is_deterministic_and_resumes(tmp_path, capsys):
    _pretrain(tmp_path / "a", tmp_path / "base_a")
    _pretrain(tmp_path / "a2", tmp_path / "base_a2")
    a = load_file(str(tmp_path / "base_a" / "unet" / "diffusion_pytorch_model.safetensors"))
    a2 = load_file(str(tmp_path / "base_a2" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == a2.keys() and all((a[k] == a2[k]).all() for k in a)
    meta = json.loads((tmp_path / "base_a" / "toyworld.json").read_text())
    assert meta["fingerprint"] and meta["held_out_motions"] == list(HELD_OUT_MOTIONS)

    with pytest.raises(SystemExit, match="stopped after step 3"):
        _pretrain(tmp_path / "b", tmp_path / "base_b", "--stop-after", "3")
    assert not (tmp_path / "base_b").exists()
    _pretrain(tmp_path / "b", tmp_path / "base_b")
    assert "resuming UNet training at step 3" in capsys.readouterr().out
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(tmp_path / "base_a" / part)), load_file(str(tmp_path / "base_b" / part))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{part}: resumed run differs from the uninterrupted one"



@pytest.mark.slow
def test_pretraining_an_animatediff_base_gives_a_folder_the_loader_reads_as_animatediff(tmp_path):
    from diffusers import UNetMotionModel

    from motioncrafter.base import load_base

    from motioncrafter.toyworld import BASE_DIR

    shipped_vae = BASE_DIR / "vae"
    _pretrain(tmp_path / "work", tmp_path / "base", "--family", "animatediff", "--vae", str(shipped_vae))
    index = json.loads((tmp_path / "base" / "model_index.json").read_text())
    assert index["_class_name"] == "AnimateDiffPipeline" and index["unet"][1] == "UNetMotionModel"
    assert json.loads((tmp_path / "base" / "toyworld.json").read_text())["family"] == "animatediff"
    base = load_base(tmp_path / "base")
    assert base.family == "animatediff" and isinstance(base.unet, UNetMotionModel)
    trained = load_file(str(tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors"))
    fresh = model.build_components(model.TinyBaseConfig(), tmp_path / "work" / "tokenizer", family="animatediff")["unet"]
    moved = [k for k, v in fresh.state_dict().items() if not torch.equal(v, trained[k])]
    assert any("motion_modules" in k for k in moved) and any("attentions" in k for k in moved)  # both kinds trained
