"""Real bases' folder layouts, as diffusers' own pipelines save them (published configs, widths
divided by 32, random weights): ModelScope / ZeroScope with and without the fp16 variant,
AnimateDiff as `AnimateDiffPipeline` saves it and as an image UNet beside motion_adapter/.
`load_base` loads each, samples with the scheduler the folder names, tunes; refuses pickled
weights without unpickling them; fingerprints every weight file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from motioncrafter.base import fingerprint_folder, load_base
from motioncrafter.config import AdapterConfig, RenderConfig, TuneConfig
from motioncrafter.published import write_folder
from motioncrafter.render import render
from motioncrafter.trainer import tune_clip

pytestmark = pytest.mark.filterwarnings("ignore")

LAYOUTS = {  # name: (family, layout, variant, unet class after loading, scheduler the folder names)
    "modelscope": ("modelscope", "pipeline", None, "UNet3DConditionModel", "DDIMScheduler"),
    "modelscope-fp16": ("modelscope", "pipeline", "fp16", "UNet3DConditionModel", "DDIMScheduler"),
    "animatediff-pipeline": ("animatediff", "pipeline", None, "UNetMotionModel", "PNDMScheduler"),
    "animatediff-unet2d": ("animatediff", "unet2d", None, "UNetMotionModel", "PNDMScheduler"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    return {name: write_folder(root / name, fam, scale=32, variant=var, layout=lay) for name, (fam, lay, var, _, _) in LAYOUTS.items()}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_loads_samples_and_tunes(folders, name, clip):
    family, layout, variant, unet_cls, sched_cls = LAYOUTS[name]
    folder = folders[name]
    files = {p.name for p in (folder / "unet").iterdir()}
    assert ("diffusion_pytorch_model.fp16.safetensors" in files) == (variant == "fp16")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"][1] == ("UNet2DConditionModel" if layout == "unet2d" else unet_cls)

    base = load_base(folder, dtype=torch.bfloat16)
    assert base.family == ("unet3d" if family == "modelscope" else "animatediff")
    assert type(base.unet).__name__ == unet_cls and type(base.scheduler).__name__ == sched_cls
    assert {p.dtype for p in base.unet.parameters()} == {torch.bfloat16} and base.fingerprint == fingerprint_folder(folder)
    if family == "animatediff":  # the motion modules came from motion_adapter/, not random
        from diffusers import MotionAdapter

        adapter = MotionAdapter.from_pretrained(folder / "motion_adapter")
        ours = dict(base.unet.down_blocks[0].motion_modules[0].named_parameters())
        for k, v in adapter.down_blocks[0].motion_modules[0].named_parameters():
            assert torch.equal(ours[k], v.to(torch.bfloat16)), k

    videos = render(base, ["a red circle moves left"], [0], RenderConfig(num_steps=2, height=64, width=64, num_frames=4))
    assert videos.shape == (1, 4, 64, 64, 3) and videos.dtype == np.uint8
    frames = np.repeat(np.repeat(clip.frames[:4], 2, axis=1), 2, axis=2)  # 64 x 64: latents 8 x 8
    result = tune_clip(base, frames, clip.caption, TuneConfig(mode="temporal_only", steps=1, num_frames=4, progress=False),
                       AdapterConfig(rank=2))
    assert result.adapter.tensors and all(t.dtype == torch.float32 for t in result.adapter.tensors.values())
    assert result.adapter.meta["base_fingerprint"] == base.fingerprint


def test_pickled_weights_are_refused_unread(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "bin", "modelscope", scale=32, safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").exists()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a user's file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ValueError) as err:
        load_base(folder)
    message = str(err.value)
    assert f"{folder / 'unet'}: only pickled weights (diffusion_pytorch_model.bin)" in message
    assert "never unpickles" in message and "UNet3DConditionModel.from_pretrained(" in message
    assert "save_pretrained(" in message and "safe_serialization=True" in message


def test_fingerprint_covers_every_weight_file(tmp_path):
    a = write_folder(tmp_path / "a", "modelscope", scale=32, safe_serialization=False, seed=0)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert fingerprint_folder(a) == fingerprint_folder(b)
    (b / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"other weights")  # only a .bin differs
    assert fingerprint_folder(a) != fingerprint_folder(b)
    (b / "unet" / "config.json").write_text("{}")  # configs are not weights
    shutil.copy(a / "vae" / "diffusion_pytorch_model.bin", b / "vae" / "diffusion_pytorch_model.bin")
    assert fingerprint_folder(a) == fingerprint_folder(b)
