"""`adapters export` writes what stock diffusers / peft loaders read: each export is loaded with the
stock call alone and gives the outputs of the project's own `attach` (and not the base's).

Before, `AnimateDiffPipeline.load_lora_weights(export)` returned without error and injected 0 LoRA
layers, and `PeftModel.from_pretrained(unet, export)` loaded nothing (keys without peft's prefix).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from motioncrafter import adapters as ad
from motioncrafter import library



@pytest.fixture(scope="module")
def exported(bases, clip, tmp_path_factory, mc):
    """Per family: (base, adapter folder, export folder) of a LoRA whose alpha is not its rank."""
    from motioncrafter.config import AdapterConfig
    from motioncrafter.trainer import tune_clip

    out = {}
    for family, base in bases.items():
        tmp = tmp_path_factory.mktemp(f"export-{family}")
        result = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=3),
                           AdapterConfig(rank=4, alpha=16.0))
        ad.save_adapter(result.adapter, str(tmp / "adapter"))
        written = library.export_adapter(str(tmp / "adapter"), str(tmp / "export"))
        out[family] = (base, str(tmp / "adapter"), tmp / "export", written)
    return out


@torch.no_grad()
def _with_attach(base, adapter_uri: str, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(base output, output with the adapter attached by the project), the base left as it was."""
    plain = base.predict(*inputs)
    ad.attach(base, ad.load_adapter(adapter_uri))
    try:
        return plain, base.predict(*inputs)
    finally:
        ad.detach(base)


def _stock(unet):
    """A fresh diffusers UNet with the base's weights: no trace of the project's own LoRA handling on it."""
    fresh = type(unet).from_config(unet.config)
    fresh.load_state_dict(unet.state_dict())  # strict: the base carries no adapter layers
    return fresh.eval()


def _pipeline(base, unet):
    from diffusers import AnimateDiffPipeline, TextToVideoSDPipeline

    parts = dict(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet, scheduler=base.scheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TextToVideoSDPipeline is deprecated
        if base.family == "animatediff":
            return AnimateDiffPipeline(**parts, motion_adapter=None)
        return TextToVideoSDPipeline(**parts)


def test_animatediff_load_lora_weights_gives_attach_outputs(exported, mc) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    base, adapter_uri, folder, written = exported["animatediff"]
    assert {Path(w).name for w in written} == {"pytorch_lora_weights.safetensors", "adapter_model.safetensors",
                                               "adapter_config.json", "README.md"}
    inputs = mc.unet_inputs(base)
    plain, ours = _with_attach(base, adapter_uri, inputs)
    pipe = _pipeline(base, _stock(base.unet))
    pipe.load_lora_weights(str(folder), adapter_name="motion")  # the stock call, on the folder
    layers = [m for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
    assert len(layers) == len(ad.load_adapter(adapter_uri).meta["lora"]["target_modules"])
    with torch.no_grad():
        theirs = base.predict(*inputs, unet=pipe.unet)
    assert not torch.allclose(ours, plain, atol=1e-4)
    assert torch.allclose(theirs, ours, atol=1e-5)  # alpha 16 on rank 4: the strength came with the file
    assert "pipe.load_lora_weights(" in (folder / "README.md").read_text()


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_peft_model_from_pretrained_gives_attach_outputs(exported, mc, family: str) -> None:
    from peft import PeftModel

    base, adapter_uri, folder, _ = exported[family]
    inputs = mc.unet_inputs(base)
    plain, ours = _with_attach(base, adapter_uri, inputs)
    model = PeftModel.from_pretrained(_stock(base.unet), str(folder))  # the stock call
    with torch.no_grad():
        theirs = base.predict(*inputs, unet=model)
    assert not torch.allclose(ours, plain, atol=1e-4)
    assert torch.allclose(theirs, ours, atol=1e-5)
    assert "PeftModel.from_pretrained(pipe.unet" in (folder / "README.md").read_text()


def test_unet3d_load_lora_weights_fails_loudly(exported) -> None:
    """diffusers has no LoRA loader for UNet3DConditionModel: the stock call must raise, not load 0 layers."""
    base, _, folder, _ = exported["unet3d"]
    pipe = _pipeline(base, _stock(base.unet))
    with pytest.raises(Exception) as caught:
        pipe.load_lora_weights(str(folder))
    assert "load_lora_adapter" in str(caught.value) or "UNet3DConditionModel" in str(caught.value)
    assert "cannot load it" in (folder / "README.md").read_text()


def _base_motion_adapter(unet):
    """The MotionAdapter inside a UNetMotionModel, taken out again (what the base folder ships)."""
    from diffusers import MotionAdapter

    c = unet.config
    motion = MotionAdapter(block_out_channels=c.block_out_channels, motion_layers_per_block=c.layers_per_block,
                           motion_norm_num_groups=c.norm_num_groups, motion_num_attention_heads=c.motion_num_attention_heads,
                           motion_max_seq_length=c.motion_max_seq_length)
    result = motion.load_state_dict({k: v for k, v in unet.state_dict().items() if ".motion_modules." in k}, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "motion_modules" in k]
    return motion


def test_full_animatediff_adapter_exports_as_a_motion_adapter_folder(bases, clip, tmp_path, mc) -> None:
    from diffusers import MotionAdapter

    from motioncrafter.config import AdapterConfig
    from motioncrafter.trainer import tune_clip

    base = bases["animatediff"]
    _base_motion_adapter(base.unet).save_pretrained(tmp_path / "base" / "motion_adapter")
    result = tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=2), AdapterConfig(kind="full"))
    ad.save_adapter(result.adapter, str(tmp_path / "adapter"))
    with pytest.raises(ad.AdapterError, match="pass the base"):
        library.export_adapter(str(tmp_path / "adapter"), str(tmp_path / "nope"))
    written = library.export_adapter(str(tmp_path / "adapter"), str(tmp_path / "export"), base=str(tmp_path / "base"))
    assert {w.split("/export/")[1] for w in written} >= {"temporal_state_dict.safetensors", "motion_adapter/config.json",
                                                         "motion_adapter/diffusion_pytorch_model.safetensors", "README.md"}
    inputs = mc.unet_inputs(base)
    plain, ours = _with_attach(base, str(tmp_path / "adapter"), inputs)
    stock = _stock(base.unet)
    # what AnimateDiffPipeline.from_pretrained(base, motion_adapter=...) does with the base's 2D UNet
    stock.load_motion_modules(MotionAdapter.from_pretrained(tmp_path / "export" / "motion_adapter"))
    with torch.no_grad():
        theirs = base.predict(*inputs, unet=stock)
    assert not torch.allclose(ours, plain, atol=1e-4)
    assert torch.allclose(theirs, ours, atol=1e-5)
