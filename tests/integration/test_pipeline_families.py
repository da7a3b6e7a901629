"""Both families through the whole pipeline: `motioncrafter run` on a tiny base in each family's
published folder layout (`motioncrafter.published`: ModelScope's `TextToVideoSDPipeline` folder, and
an AnimateDiff folder with an image UNet beside motion_adapter/), then `motioncrafter adapters export`,
and the export loaded by the stock call on a pipeline that stock diffusers loads from the same folder.

Tiny on purpose (2 clips, 2 tuning steps, 2 denoising steps, 4 frames at 64 x 64: 8 x 8 latents
through the published 4-level UNets); the quality of either family is not the point here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from motioncrafter import adapters as ad
from motioncrafter.base import load_base
from motioncrafter.published import write_folder
from motioncrafter.runformat import RunLayout
from motioncrafter_cli import main as cli
from pipeline_support import TINY, write_manifest

pytestmark = pytest.mark.slow

# (published family, layout of write_folder, the family load_base reports)
FAMILIES = {"unet3d": ("modelscope", "pipeline"), "animatediff": ("animatediff", "unet2d")}
CLIPS = 2
SMALL = [*TINY, "video.num_frames=4", "video.height=64", "video.width=64", "tune.num_frames=4",
         "render.num_frames=4", "render.height=64", "render.width=64", "tune.mode=temporal_only"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_run_and_export_on_a_published_layout(local_ray, tmp_path, family: str) -> None:
    published, layout_name = FAMILIES[family]
    folder = write_folder(tmp_path / "base", published, scale=32, layout=layout_name)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ("TextToVideoSDPipeline" if family == "unet3d" else "AnimateDiffPipeline")
    if family == "animatediff":
        assert index["unet"][1] == "UNet2DConditionModel" and (folder / "motion_adapter" / "config.json").exists()
    manifest = write_manifest(tmp_path, CLIPS, seed=21)
    out = tmp_path / "out"

    code = cli(["run", "--manifest", str(manifest), "--output", str(out), "--run-id", family, "--base-model", str(folder),
                *(a for s in SMALL for a in ("--set", s))])
    assert code == 0
    layout = RunLayout(str(out), family)
    info = json.loads(Path(layout.run_json).read_text())
    assert info["status"] == "completed"
    assert info["counts"] == {"rows": CLIPS, "summary": CLIPS, "failures": 0, "adapters": CLIPS}
    assert info["stages"]["ingest"]["encoded"] == CLIPS and info["stages"]["train"]["trained"] == CLIPS
    summary = pd.read_parquet(layout.table("summary"))
    assert len(summary) == CLIPS and summary.flow_fidelity.notna().all()
    results = pd.read_parquet(layout.table("results"))
    assert len(results) == CLIPS and all(Path(u).stat().st_size > 0 for u in results.video_uri)
    assert "<html" in Path(layout.report).read_text().lower()
    adapters = pd.read_parquet(layout.adapters_index)
    assert set(adapters.kind) == {"lora"}

    motion_id = str(summary.motion_id.iloc[0])
    adapter_uri = layout.adapter(motion_id)
    assert ad.load_adapter(adapter_uri).meta["family"] == family
    export = tmp_path / "export"
    assert cli(["adapters", "export", adapter_uri, str(export)]) == 0
    _stock_load_matches_attach(folder, family, adapter_uri, export)


def _stock_load_matches_attach(folder: Path, family: str, adapter_uri: str, export: Path) -> None:
    """The export, loaded by the stock call into a pipeline stock diffusers reads from the base folder,
    predicts what the project's own `attach` does on the project's load of that folder (and not the base)."""
    base = load_base(folder)
    assert base.family == family
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, base.unet.config.in_channels, 4, 8, 8, generator=g)
    text = torch.randn(1, 77, base.text_encoder.config.hidden_size, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        plain = base.predict(latents, t, text)
        ad.attach(base, ad.load_adapter(adapter_uri))
        ours = base.predict(latents, t, text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TextToVideoSDPipeline is deprecated
        if family == "animatediff":
            from diffusers import AnimateDiffPipeline, MotionAdapter
            from peft.tuners.tuners_utils import BaseTunerLayer

            pipe = AnimateDiffPipeline.from_pretrained(folder, motion_adapter=MotionAdapter.from_pretrained(folder / "motion_adapter"))
            pipe.load_lora_weights(str(export), adapter_name="motion")
            layers = [m for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
            assert len(layers) == len(ad.load_adapter(adapter_uri).meta["lora"]["target_modules"])
            unet = pipe.unet
        else:
            from diffusers import TextToVideoSDPipeline
            from peft import PeftModel

            unet = PeftModel.from_pretrained(TextToVideoSDPipeline.from_pretrained(folder).unet, str(export))
    with torch.no_grad():
        theirs = base.predict(latents, t, text, unet=unet.eval())
    assert not torch.allclose(ours, plain, atol=1e-6)
    assert torch.allclose(theirs, ours, atol=1e-5)
