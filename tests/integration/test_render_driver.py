"""`write_renders` counts rendered videos on the driver without pulling their frames there."""

from __future__ import annotations

import json

import numpy as np


def test_write_renders_brings_no_frames_to_the_driver(local_ray, monkeypatch) -> None:
    import ray

    from pipelines.render import write_renders

    frames = np.zeros((2, 8, 64, 64, 3), np.uint8)  # two videos of one motion
    rows = [{"row_json": json.dumps({"motion_id": f"m{i}", "row": i, "video_uri": "v.mp4", "prompt": "p"}),
             "frames_uri": "f", "adapter_uri": "a", "videos": frames.tobytes(), "shape": list(frames.shape),
             "pairs_json": "[]", "uris_json": json.dumps([["a.mp4", "a.gif"]] * 2) if i else "[]",
             "render_seconds": 1.0, "error": "" if i else "RuntimeError: out of memory"} for i in range(3)]
    rendered = ray.data.from_items(rows)
    seen: list[list[str]] = []
    iter_rows = ray.data.Dataset.iter_rows

    def spy(self, *args, **kwargs):
        seen.append(self.columns())
        return iter_rows(self, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "iter_rows", spy)
    videos, failures = write_renders(rendered, total=3)
    assert videos == 4
    assert [(f.motion_id, f.stage, f.reason) for f in failures] == [("m0", "render", "RuntimeError: out of memory")]
    assert seen and all("videos" not in columns for columns in seen), seen
