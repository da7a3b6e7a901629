"""Render (Ray Data actors): each committed motion's eval prompts x seeds, with its adapter hot-swapped in.

A `Renderer` actor opens the base once and keeps it; per motion it loads the
adapter under one fixed name (so `attach` only copies the new weights in), renders
the prompt grid in batches of `render.max_batch` (decoded `render.decode_chunk`
frames at a time), and writes an MP4 and a GIF per video and a grid PNG per motion. The rendered frames flow on to `evaluate`
in the same streaming dataset, so they are scored without being read back from
lossy video files.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import ray

from motioncrafter.adapters import attach, detach, load_adapter
from motioncrafter.config import Config
from motioncrafter.progress import progress
from motioncrafter.render import render_grid
from motioncrafter.runformat import Failure, RunLayout
from motioncrafter.video import VideoError, frame_grid, read_video, write_gif, write_mp4, write_png
from pipelines.devices import open_worker_base
from pipelines.ingest import Clip, load_frames
from pipelines.manifest import ManifestRow
from pipelines.records import AdapterOutcome

STAGE = "render"
SLOT = "motion"  # the adapter name every motion is attached under: a hot swap, not a reload


@dataclass
class RenderedMotion:
    """One motion's rendered videos on their way to evaluate (a Ray Data row: `to_row` / `from_row`)."""

    row: ManifestRow
    frames_uri: str  # the reference clip's cached frames
    adapter_uri: str
    videos: np.ndarray | None = None  # uint8 (videos, T, H, W, 3), in `pairs` order
    pairs: list[tuple[str, int]] = field(default_factory=list)  # (prompt, seed) of each video
    uris: list[tuple[str, str]] = field(default_factory=list)  # (mp4, gif) of each video
    render_seconds: float = 0.0
    error: str = ""  # why it was not rendered ("" when it was)

    def to_row(self) -> dict:
        # every row has every column with one type, so Ray Data blocks always share a schema
        videos = self.videos if self.videos is not None else np.zeros((0, 0, 0, 0, 0), np.uint8)
        return {"row_json": json.dumps(self.row.to_dict()), "frames_uri": self.frames_uri, "adapter_uri": self.adapter_uri,
                "videos": videos.tobytes(), "shape": list(videos.shape), "pairs_json": json.dumps(self.pairs),
                "uris_json": json.dumps(self.uris), "render_seconds": float(self.render_seconds), "error": self.error}

    @classmethod
    def from_row(cls, row) -> RenderedMotion:
        shape = [int(n) for n in row["shape"]]
        videos = np.frombuffer(row["videos"], np.uint8).reshape(shape) if shape[0] else None
        return cls(ManifestRow(**json.loads(row["row_json"])), str(row["frames_uri"]), str(row["adapter_uri"]), videos,
                   [(p, int(s)) for p, s in json.loads(row["pairs_json"])], [(m, g) for m, g in json.loads(row["uris_json"])],
                   float(row["render_seconds"]), str(row["error"]))


def rows_of(batch: dict) -> list[dict]:
    """A Ray Data batch (column -> values) as its rows."""
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


def batch_of(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


class Renderer:
    def __init__(self, cfg: Config, layout: RunLayout):
        self.cfg, self.layout = cfg, layout
        self.base = open_worker_base(cfg.model)
        self.attached_kind: str | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out = []
        for item in rows_of(batch):
            motion = RenderedMotion(ManifestRow(**json.loads(item["row_json"])), str(item["frames_uri"]), str(item["adapter_uri"]))
            started = time.time()
            try:
                self._render_motion(motion)
            except Exception as err:  # this motion's failure, not the dataset's
                motion.error = f"{type(err).__name__}: {err}"
            motion.render_seconds = time.time() - started
            out.append(motion.to_row())
        return batch_of(out)

    def _render_motion(self, motion: RenderedMotion) -> None:
        row = motion.row
        cfg = row.config(self.cfg)
        adapter = load_adapter(motion.adapter_uri)
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
        write_gif(load_frames(motion.frames_uri), self.layout.reference_gif(row.motion_id), fps=cfg.video.fps)  # for the report
        motion.videos, motion.pairs, motion.uris = videos, [(p, int(s)) for p, s in pairs], uris


def video_uris(layout: RunLayout, motion_id: str, count: int) -> list[tuple[str, str]]:
    """(mp4, gif) of each of a motion's videos, k = 0..count-1 in render_grid's (prompt-major) order."""
    return [(layout.video(motion_id, k, "mp4"), layout.video(motion_id, k, "gif")) for k in range(count)]


def _items(clips: list[Clip], adapters: dict[str, AdapterOutcome]) -> list[dict]:
    return [{"row_json": json.dumps(c.row.to_dict()), "frames_uri": c.frames_uri, "adapter_uri": adapters[c.row.motion_id].adapter_uri}
            for c in clips if c.row.motion_id in adapters]


def read_rendered(item: dict, layout: RunLayout, cfg: Config) -> dict:
    """A motion's videos as an earlier `render` left them on storage, in Renderer's output form (for
    `motioncrafter evaluate` alone). Decoded from the MP4s: scores can differ slightly from the ones
    a whole run computes on the frames in memory."""
    row = ManifestRow(**json.loads(item["row_json"]))
    motion = RenderedMotion(row, item["frames_uri"], item["adapter_uri"])
    rcfg = row.config(cfg).render
    pairs = [(p, s) for p in row.eval_prompts or [row.prompt] for s in rcfg.seeds]
    uris = video_uris(layout, row.motion_id, len(pairs))
    started = time.time()
    try:
        motion.videos = np.stack([read_video(mp4, rcfg.num_frames, rcfg.height, rcfg.width) for mp4, _ in uris])
        motion.pairs, motion.uris = pairs, uris
    except (VideoError, OSError) as err:
        motion.error = f"not rendered ({err}): run `motioncrafter render` first"
    motion.render_seconds = time.time() - started
    return motion.to_row()


def stored_renders(clips: list[Clip], adapters: dict[str, AdapterOutcome], layout: RunLayout, cfg: Config) -> ray.data.Dataset:
    """Like `render_motions`, from the videos on storage instead of rendering them."""
    items = _items(clips, adapters)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 1000)))
    return ds.map(read_rendered, fn_kwargs={"layout": layout, "cfg": cfg})


def render_motions(clips: list[Clip], adapters: dict[str, AdapterOutcome], layout: RunLayout, cfg: Config) -> ray.data.Dataset:
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
