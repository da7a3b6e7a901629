"""Render (Ray Data actors): each committed motion's eval prompts x seeds, with its adapter hot-swapped in.

A `Renderer` actor opens the base once and keeps it; per motion it loads the
adapter under one fixed name (so `attach` only copies the new weights in), renders
the prompt grid in batches of `render.max_batch`, and writes an MP4 and a GIF
per video and a grid PNG per motion. The rendered frames flow on to `evaluate`
in the same streaming dataset, so they are scored without being read back from
lossy video files.
"""

from __future__ import annotations

import json
import time

import numpy as np
import ray

from motioncrafter.adapters import attach, detach, load_adapter
from motioncrafter.base import open_base
from motioncrafter.config import Config
from motioncrafter.progress import progress
from motioncrafter.render import render_grid
from motioncrafter.runformat import Failure, RunLayout
from motioncrafter.video import VideoError, frame_grid, read_video, write_gif, write_mp4, write_png
from pipelines.ingest import Clip, load_frames
from pipelines.manifest import ManifestRow

STAGE = "render"
SLOT = "motion"  # the adapter name every motion is attached under: a hot swap, not a reload


class Renderer:
    def __init__(self, cfg: Config, layout: RunLayout):
        self.cfg, self.layout = cfg, layout
        self.base = open_base(cfg.model)
        self.attached_kind: str | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("row_json", "frames_uri", "adapter_uri", "videos", "shape", "pairs_json",
                                                 "uris_json", "render_seconds", "error")}
        for row_json, frames_uri, adapter_uri in zip(batch["row_json"], batch["frames_uri"], batch["adapter_uri"]):
            started = time.time()
            try:
                videos, pairs, uris = self._render_motion(ManifestRow(**json.loads(row_json)), adapter_uri, frames_uri)
                fields = {"videos": videos.tobytes(), "shape": list(videos.shape), "pairs_json": json.dumps(pairs),
                          "uris_json": json.dumps(uris), "error": ""}
            except Exception as err:  # this motion's failure, not the dataset's
                fields = {"videos": b"", "shape": [0] * 5, "pairs_json": "[]", "uris_json": "[]", "error": f"{type(err).__name__}: {err}"}
            fields |= {"row_json": row_json, "frames_uri": frames_uri, "adapter_uri": adapter_uri, "render_seconds": time.time() - started}
            for key, value in fields.items():
                out[key].append(value)
        return out

    def _render_motion(self, row: ManifestRow, adapter_uri: str, frames_uri: str) -> tuple[np.ndarray, list, list]:
        cfg = row.config(self.cfg)
        adapter = load_adapter(adapter_uri)
        if self.attached_kind not in (None, adapter.kind):  # LoRA and full adapters do not swap into each other
            detach(self.base, SLOT)
            self.attached_kind = None
        attach(self.base, adapter, SLOT)
        self.attached_kind = adapter.kind
        pairs, videos = render_grid(self.base, row.eval_prompts or [row.prompt], cfg.render.seeds, cfg.render)
        uris = video_uris(self.layout, row.motion_id, len(videos))
        for video, (mp4, gif) in zip(videos, uris):
            write_mp4(video, mp4, fps=cfg.video.fps)
            write_gif(video, gif, fps=cfg.video.fps)
        write_png(frame_grid(list(videos)), self.layout.grid(row.motion_id))
        write_gif(load_frames(frames_uri), self.layout.reference_gif(row.motion_id), fps=cfg.video.fps)  # for the report
        return videos, [list(p) for p in pairs], uris


def video_uris(layout: RunLayout, motion_id: str, count: int) -> list[list[str]]:
    """[mp4, gif] of each of a motion's videos, k = 0..count-1 in render_grid's (prompt-major) order."""
    return [[layout.video(motion_id, k, "mp4"), layout.video(motion_id, k, "gif")] for k in range(count)]


def _items(clips: list[Clip], adapters: dict[str, dict]) -> list[dict]:
    return [{"row_json": json.dumps(c.row.to_dict()), "frames_uri": c.frames_uri, "adapter_uri": adapters[c.row.motion_id]["adapter_uri"]}
            for c in clips if c.row.motion_id in adapters]


def read_rendered(item: dict, layout: RunLayout, cfg: Config) -> dict:
    """A motion's videos as an earlier `render` left them on storage, in Renderer's output form (for
    `motioncrafter evaluate` alone). Decoded from the MP4s: scores can differ slightly from the ones
    a whole run computes on the frames in memory."""
    row = ManifestRow(**json.loads(item["row_json"]))
    rcfg = row.config(cfg).render
    pairs = [[p, s] for p in row.eval_prompts or [row.prompt] for s in rcfg.seeds]
    uris = video_uris(layout, row.motion_id, len(pairs))
    started = time.time()
    try:
        videos = np.stack([read_video(mp4, rcfg.num_frames, rcfg.height, rcfg.width) for mp4, _ in uris])
        fields = {"videos": videos.tobytes(), "shape": list(videos.shape), "pairs_json": json.dumps(pairs),
                  "uris_json": json.dumps(uris), "error": ""}
    except (VideoError, OSError) as err:
        fields = {"videos": b"", "shape": [0] * 5, "pairs_json": "[]", "uris_json": "[]",
                  "error": f"not rendered ({err}): run `motioncrafter render` first"}
    return item | fields | {"render_seconds": time.time() - started}


def stored_renders(clips: list[Clip], adapters: dict[str, dict], layout: RunLayout, cfg: Config) -> ray.data.Dataset:
    """Like `render_motions`, from the videos on storage instead of rendering them."""
    items = _items(clips, adapters)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 1000)))
    return ds.map(read_rendered, fn_kwargs={"layout": layout, "cfg": cfg})


def render_motions(clips: list[Clip], adapters: dict[str, dict], layout: RunLayout, cfg: Config) -> ray.data.Dataset:
    """A lazy dataset of rendered motions, one row per clip with a committed adapter (see `evaluate`)."""
    items = _items(clips, adapters)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 1000)))
    return ds.map_batches(Renderer, fn_constructor_args=(cfg, layout), batch_size=1,
                          compute=ray.data.ActorPoolStrategy(size=min(cfg.pipeline.render_concurrency, len(items))), num_cpus=1,
                          num_gpus=cfg.pipeline.render_gpus or None)


def write_renders(rendered: ray.data.Dataset, total: int) -> tuple[int, list[Failure]]:
    """Run a render dataset for its files alone (`motioncrafter render`): videos written, render failures."""
    videos, failures = 0, []
    # only what is counted here reaches the driver: the frames stay in the object store
    rows = rendered.select_columns(["row_json", "uris_json", "error"]).iter_rows()
    for out in progress(rows, total=total, desc="render", unit="motion"):
        row = ManifestRow(**json.loads(out["row_json"]))
        if out["error"]:
            failures.append(Failure(row.motion_id, row.row, STAGE, out["error"]))
        else:
            videos += len(json.loads(out["uris_json"]))
    return videos, failures
