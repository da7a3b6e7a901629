"""Ingest (Ray Data): manifest rows -> decoded reference frames + VAE latents, cached.

    rows --plan (driver: the ingest index and listings)--> clips ingested before: no Ray, no video read
         --map (tasks)--> fetch, hash, decode + sample frames  -> _cache/frames/<key>
         --map_batches (actors holding the VAE)--> encode        -> _cache/latents/<base>/<key>

The cache key is the hash of the video's bytes and of every decoding parameter,
so the same clip under two ids, or in a re-run, is decoded once. Finding that key
means reading the video, so the ingest index (`<run>/ingest.parquet`) records, for
every ingested row, the source file's size and ETag (object stores) or mtime (file
systems) as listed when it was read, its cache key, and the base its latents were
encoded for (by the listing of the base's folder). A re-run or a later stage run
alone lists the sources (one listing per folder of clips) and the cache, and takes
every row whose source and base are unchanged and whose cache files are there
from the index: metadata only, not a byte of video. A changed source (other size or
version) is read and decoded again. A clip that cannot be fetched or decoded
becomes a failure row; the dataset goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import ray
import safetensors.numpy
import torch

from motioncrafter import storage
from motioncrafter.config import Config, ModelConfig, VideoConfig
from motioncrafter.runformat import Failure, RunLayout, cache_key, read_table, write_table
from motioncrafter.toyworld import BASE_DIR
from motioncrafter.trainer import clip_hash
from motioncrafter.video import VideoError, read_video, video_bytes_hash
from pipelines.devices import open_worker_base
from pipelines.manifest import ManifestRow

STAGE = "ingest"
log = logging.getLogger(__name__)


@dataclass
class Clip:
    """A manifest row whose reference frames are decoded and cached."""

    row: ManifestRow
    frames_uri: str
    latents_uri: str  # the VAE latents of the frames, for this base: training does not encode again
    clip_sha256: str  # hash of the decoded frames (what the adapter metadata records)
    decoded: bool  # False: the frames came from the cache


@dataclass
class IngestResult:
    clips: list[Clip]
    failures: list[Failure]
    decoded: int
    encoded: int
    seconds: float
    indexed: int = 0  # clips the ingest index answered: their videos were not read


def save_array(uri: str, name: str, array: np.ndarray, meta: dict | None = None) -> None:
    """One array as a safetensors file: nothing in the cache is ever unpickled."""
    storage.write_bytes(uri, safetensors.numpy.save({name: np.ascontiguousarray(array)}, metadata=meta))


def load_array(uri: str, name: str) -> np.ndarray:
    return safetensors.numpy.load(storage.read_bytes(uri))[name]


def load_frames(uri: str) -> np.ndarray:
    """Cached uint8 frames (T, H, W, 3)."""
    return load_array(uri, "frames")


def _decoding(video: VideoConfig, row: dict) -> dict:
    params = {**asdict(video), "start_sec": row["start_sec"], "end_sec": row["end_sec"]}
    params.pop("fps")  # only used when writing videos
    return params


def clip_key(video_bytes: bytes, video: VideoConfig, row: dict) -> str:
    """Content hash of a clip as decoded: its bytes and every parameter of the decoding."""
    text = json.dumps({"video_sha256": video_bytes_hash(video_bytes), **_decoding(video, row)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def decoding_hash(video: VideoConfig, row: dict) -> str:
    """Hash of every parameter that decides how a row's clip is decoded (its part of the cache key)."""
    return hashlib.sha256(json.dumps(_decoding(video, row), sort_keys=True).encode()).hexdigest()[:32]


def base_version(model: ModelConfig) -> str:
    """What changes when the base's files change, from one listing of its folder (no weight is read):
    the index trusts the fingerprint an encoder found for the base while this stays the same."""
    source = model.base_model or str(BASE_DIR)
    files = storage.find(source)
    listing = sorted((uri[len(source):], info.get("size"), storage.version(info)) for uri, info in files.items())
    return hashlib.sha256(json.dumps([storage.redact(source), listing]).encode()).hexdigest()[:16]


def _outcome(row: dict, **fields) -> dict:
    # Every output row has every column with one type, so Ray Data blocks always share a schema.
    return {"row": row["row"], "key": "", "frames": b"", "clip_sha256": "", "decoded": False, "error": ""} | fields


def decode_row(item: dict, layout: RunLayout, video: VideoConfig, decode: bool = True) -> dict:
    """Fetch one clip, then decode it unless its frames are cached (a Ray Data task). An item with
    a `key` (the index knows its frames) reads nothing. `decode=False` (a later stage run alone)
    only looks the clip up in the cache."""
    row = json.loads(item["row_json"])
    if item["key"]:
        return _outcome(row, key=item["key"], clip_sha256=item["clip_sha256"])
    try:
        data = storage.read_bytes(row["video_uri"])
        key = clip_key(data, video, row)
        cached = layout.frames_cache(key)
        if storage.exists(cached):
            frames = load_frames(cached)
            return _outcome(row, key=key, clip_sha256=clip_hash(frames))
        if not decode:
            return _outcome(row, error="not ingested yet: run `motioncrafter ingest` (or `motioncrafter run`) first")
        frames = read_video(data, video.num_frames, video.height, video.width, video.sampling, video.stride,
                            row["start_sec"], row["end_sec"])
        save_array(cached, "frames", frames, {"video_uri": storage.redact(row["video_uri"])})
        return _outcome(row, key=key, frames=frames.tobytes(), clip_sha256=clip_hash(frames), decoded=True)
    except VideoError as err:  # decoded from bytes: the error cannot name the URI, so we do
        return _outcome(row, error=f"{type(err).__name__}: {storage.redact(row['video_uri'])}: {err.reason}")
    except OSError as err:  # storage errors name the URI themselves (credentials redacted)
        return _outcome(row, error=f"{type(err).__name__}: {err}")
    except Exception as err:  # any per-clip error is that row's failure, never the dataset's
        return _outcome(row, error=f"{storage.redact(row['video_uri'])}: {type(err).__name__}: {err}")


class Encoder:
    """Holds the base's VAE; encodes a batch of clips whose latents are not cached yet (a Ray Data actor)."""

    def __init__(self, model: ModelConfig, layout: RunLayout, video: VideoConfig):
        # The whole base is opened because encode_frames lives on BaseModel; only its VAE runs here.
        self.base = open_worker_base(model)
        self.layout, self.shape = layout, (video.num_frames, video.height, video.width, 3)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        encoded = np.zeros(len(batch["row"]), dtype=bool)
        uris = [self.layout.latents_cache(self.base.fingerprint, key) for key in batch["key"]]
        todo, frames = [], []
        for i, (uri, key, error) in enumerate(zip(uris, batch["key"], batch["error"])):
            if error or storage.exists(uri):
                continue
            raw = batch["frames"][i]
            clip = np.frombuffer(raw, np.uint8).reshape(self.shape) if len(raw) else load_frames(self.layout.frames_cache(key))
            todo.append((i, uri))
            frames.append(clip)
        if frames:
            with torch.no_grad():
                latents = self.base.encode_frames(np.stack(frames)).cpu().numpy()
            for (i, uri), z in zip(todo, latents):
                save_array(uri, "latents", z)
                encoded[i] = True
        out = {k: v for k, v in batch.items() if k != "frames"}  # the frames are cached; do not carry them on
        out["encoded"] = encoded
        out["latents_uri"] = np.array(uris, dtype=object)
        out["base_fingerprint"] = np.array([self.base.fingerprint] * len(uris), dtype=object)
        return out


@dataclass
class _Plan:
    clips: list[Clip]  # taken from the index: nothing to read or run
    todo: list[dict]  # Ray Data items; those with a `key` have their frames cached already
    entries: dict[int, dict]  # manifest row -> its index entry so far
    sources: dict[str, dict]  # video_uri -> listing info
    base_version: str


def _plan(rows: list[ManifestRow], layout: RunLayout, cfg: Config) -> _Plan:
    """Which rows the ingest index answers (source and base unchanged, cache files listed)."""
    known = {(e["video_uri"], e["params_sha256"]): e for e in read_table(layout, "ingest")}
    sources = storage.stat_many(sorted({r.video_uri for r in rows}))
    version = base_version(cfg.model)
    frames = {cache_key(u) for u in storage.find(layout.frames_dir)} if known else set()
    fingerprints = {e["base_fingerprint"] for e in known.values() if e["base_version"] == version}
    latents = {u for fp in fingerprints for u in storage.find(layout.latents_dir(fp))}
    plan = _Plan([], [], {}, sources, version)
    for row in rows:
        params = decoding_hash(cfg.video, row.to_dict())
        source = sources.get(row.video_uri)
        entry = known.get((row.video_uri, params))
        item = {"row_json": json.dumps(row.to_dict()), "key": "", "clip_sha256": ""}
        if (entry and source and entry["size"] == source.get("size") and storage.version(source)
                and entry["version"] == storage.version(source) and entry["key"] in frames):
            plan.entries[row.row] = entry | {"motion_id": row.motion_id, "row": row.row}
            latents_uri = layout.latents_cache(entry["base_fingerprint"], entry["key"])
            if entry["base_version"] == version and latents_uri in latents:
                plan.clips.append(Clip(row, layout.frames_cache(entry["key"]), latents_uri, entry["clip_sha256"], False))
                continue
            item |= {"key": entry["key"], "clip_sha256": entry["clip_sha256"]}  # frames cached, latents not (for this base)
        plan.todo.append(item)
    return plan


def ingest(rows: list[ManifestRow], layout: RunLayout, cfg: Config, decode: bool = True,
           connect: Callable[[], object] = lambda: None) -> IngestResult:
    """Decode and encode every row's clip (cached ones are neither, indexed ones are not even read);
    per-row errors become failures. `decode=False`: clips not in the cache fail instead of being
    decoded (stages run alone). Writes the ingest index of every clip it returns. `connect()` is called
    before Ray is first needed (a re-run the index answers whole never starts it)."""
    if not rows:
        return IngestResult([], [], 0, 0, 0.0)
    started, pc = time.time(), cfg.pipeline
    by_row = {r.row: r for r in rows}
    plan = _plan(rows, layout, cfg)
    clips, failures, decoded, encoded = list(plan.clips), [], 0, 0
    if plan.todo:
        connect()
        clips_before = len(clips)
        # one row per block (up to 1000 blocks): decode tasks spread over the cluster, not one task taking all rows
        n = len(plan.todo)
        ds = ray.data.from_items(plan.todo, override_num_blocks=min(n, 1000))
        ds = ds.map(decode_row, fn_kwargs={"layout": layout, "video": cfg.video, "decode": decode},
                    compute=ray.data.TaskPoolStrategy(size=min(pc.ingest_concurrency, n)), num_cpus=1)
        ds = ds.map_batches(Encoder, fn_constructor_args=(cfg.model, layout, cfg.video), batch_size=8,
                            compute=ray.data.ActorPoolStrategy(size=min(pc.encode_concurrency, n)), num_cpus=1,
                            num_gpus=pc.encode_gpus or None)
        for out in ds.iter_rows():
            row = by_row[int(out["row"])]
            if out["error"]:
                failures.append(Failure(row.motion_id, row.row, STAGE, out["error"]))
                continue
            clips.append(Clip(row, layout.frames_cache(out["key"]), out["latents_uri"], out["clip_sha256"], bool(out["decoded"])))
            decoded += bool(out["decoded"])
            encoded += bool(out["encoded"])
            source = plan.sources.get(row.video_uri, {})
            plan.entries[row.row] = plan.entries.get(row.row) or {
                "video_uri": row.video_uri, "size": source.get("size"), "version": storage.version(source),
                "params_sha256": decoding_hash(cfg.video, row.to_dict()), "key": out["key"], "clip_sha256": out["clip_sha256"],
                "ingested_at": time.time()}
            plan.entries[row.row] |= {"motion_id": row.motion_id, "row": row.row, "base_version": plan.base_version,
                                      "base_fingerprint": out["base_fingerprint"]}
        log.info("ingest: %d clips from the index, %d through Ray Data", clips_before, len(clips) - clips_before)
    clips.sort(key=lambda c: c.row.row)
    write_table(layout, "ingest", [plan.entries[c.row.row] for c in clips])
    return IngestResult(clips, failures, decoded, encoded, time.time() - started, indexed=len(plan.clips))
