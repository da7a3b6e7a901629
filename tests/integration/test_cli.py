"""The single-clip CLI end to end on a saved debug-size base: tune -> adapter folder -> generate."""

import json

import numpy as np
import pytest
import yaml

from motioncrafter_cli import main
from motioncrafter.toyworld.model import debug_base
from motioncrafter.toyworld.world import ClipSpec, render
from motioncrafter.video import read_video, write_mp4


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from diffusers import TextToVideoSDPipeline

    b = debug_base("unet3d")
    folder = tmp_path_factory.mktemp("base")
    TextToVideoSDPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
                          scheduler=b.scheduler).save_pretrained(folder)
    return folder


def test_tune_then_generate(tmp_path, base_dir):
    clip = render(ClipSpec("red", "circle", "black", "zigzag"))
    video = tmp_path / "clip.mp4"
    write_mp4(clip.frames, video)
    fast = ["--base-model", str(base_dir), "--set", "tune.steps=2", "--set", "render.num_steps=2", "--set", "tune.progress=false"]
    assert main(["tune", "--video", str(video), "--prompt", clip.caption, "--out", str(tmp_path / "adapter"), *fast]) == 0
    meta = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    assert meta["mode"] == "motioncrafter" and meta["kind"] == "lora" and meta["tune_config"]["steps"] == 2
    assert meta["reference"]["prompt"] == clip.caption

    out = tmp_path / "videos"
    prompts = ["a blue square moves in a zigzag on a white background", "a green triangle moves in a zigzag on a gray background"]
    args = ["generate", "--adapter", str(tmp_path / "adapter"), "--out", str(out), "--seeds", "0", "1", *fast]
    assert main(args + [x for p in prompts for x in ("--prompt", p)]) == 0
    mp4s = sorted(out.glob("*.mp4"))
    assert len(mp4s) == 4 and len(list(out.glob("*.gif"))) == 4 and (out / "grid.png").exists()
    assert read_video(str(mp4s[0])).shape == (8, 32, 32, 3)


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", "--set", "tune.steps=7", "--set", "render.scheduler=dpm"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["tune"]["steps"] == 7 and shown["render"]["scheduler"] == "dpm"


def test_bad_config_key_is_a_clear_error(capsys):
    assert main(["config", "show", "--set", "tune.stepz=7"]) == 2
    err = capsys.readouterr().err
    assert "tune.stepz: unknown key; did you mean 'steps'?" in err


def test_missing_video_names_the_file(tmp_path, base_dir, capsys):
    code = main(["tune", "--video", str(tmp_path / "nope.mp4"), "--prompt", "a red circle moves", "--out",
                 str(tmp_path / "a"), "--base-model", str(base_dir)])
    assert code == 2 and "nope.mp4" in capsys.readouterr().err
    assert not np.any([p.exists() for p in (tmp_path / "a",)])
