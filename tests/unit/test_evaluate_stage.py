"""The evaluate stage scores leakage against what the reference clip shows, even when its caption is vague."""

from __future__ import annotations

import json
import math

import numpy as np

from motioncrafter.config import Config
from motioncrafter.toyworld.world import ClipSpec, render as render_clip
from pipelines.evaluate import Evaluator
from pipelines.ingest import save_array
from pipelines.manifest import ManifestRow
from pipelines.render import RenderedMotion, batch_of


def _score(tmp_path, row: ManifestRow) -> list[dict]:
    reference = render_clip(ClipSpec("red", "circle", "black", "zigzag")).frames
    copied = render_clip(ClipSpec("red", "circle", "black", "zigzag", (0.02, 0.0))).frames  # the reference's look, again
    save_array(str(tmp_path / "frames.safetensors"), "frames", reference)
    prompt = "a blue square moves in a zigzag on a white background"
    motion = RenderedMotion(row, str(tmp_path / "frames.safetensors"), "unused", copied[None], [(prompt, 0)], [("a.mp4", "a.gif")])
    out = Evaluator(Config())(batch_of([motion.to_row()]))
    assert out["error"] == [""]
    return json.loads(out["results_json"][0])


def test_vague_caption_scores_leakage_from_the_rows_attributes(tmp_path) -> None:
    row = ManifestRow(0, "m", "clip.mp4", "a shape moves in a zigzag",
                      attributes={"colour": "red", "shape": "circle", "background": "black"})
    [scores] = _score(tmp_path, row)
    assert scores["leakage"] == 1.0  # asked for blue / square / white, got the reference's red / circle / black
    assert scores["appearance_acc"] == 0.0


def test_without_attributes_a_vague_caption_has_no_leakage_score(tmp_path) -> None:
    [scores] = _score(tmp_path, ManifestRow(0, "m", "clip.mp4", "a shape moves in a zigzag"))
    assert "leakage" not in scores or math.isnan(scores["leakage"])
    assert np.isfinite(scores["flow_fidelity"])
