"""The run format: what a pipeline run leaves on storage, as one typed contract.

    <output>/<run_id>/run.json                        config, versions, manifest hash, timings
                      ingest.parquet                  the ingest index: source file -> cache keys
                      adapters/<motion_id>/           adapter.safetensors, adapter.json, _COMMITTED
                      adapters.parquet                the adapter library index
                      videos/<motion_id>/<k>.mp4|gif, reference.gif
                      grids/<motion_id>.png
                      results/results.parquet         one row per rendered video, with metrics
                      summary/summary.parquet         one row per motion
                      failures/failures.parquet       one row per failed manifest row: stage, reason
                      report.html
    <output>/_cache/  decoded frames and VAE latents by content hash, shared by every run
                      under <output> (a re-run never decodes a clip twice)

This module is the only place those paths, the tables' columns and Arrow types,
the `_COMMITTED` marker and the adapter metadata are spelled. It imports neither
Ray nor torch: the pipelines write through it, and the adapter library and the
dataset export read through it. Files written before the contract existed stay
readable: the markers and metadata keep their JSON keys, and readers accept
tables that lack the columns added since (`run_id`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from motioncrafter import storage
from motioncrafter.storage import join

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# Files of an adapter folder (also written by `motioncrafter tune` outside any run).
WEIGHTS_NAME, META_NAME, COMMITTED = "adapter.safetensors", "adapter.json", "_COMMITTED"


def check_run_id(run_id: str) -> str:
    """A run id becomes a folder name: a fixed alphabet, so it cannot reach outside <output>."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} must match {RUN_ID_PATTERN.pattern}")
    return run_id


@dataclass(frozen=True)
class AdapterFolder:
    """The files of one adapter folder, wherever it is."""

    uri: str

    @property
    def weights(self) -> str:
        return join(self.uri, WEIGHTS_NAME)

    @property
    def meta(self) -> str:
        return join(self.uri, META_NAME)

    @property
    def marker(self) -> str:
        return join(self.uri, COMMITTED)


@dataclass(frozen=True)
class RunLayout:
    """Where each file of run `run_id` under `output` (any fsspec URI) goes.

    Every id that becomes a path component has passed `check_run_id` or the
    manifest's `check_id`, so no manifest value can reach outside the run's folder.
    """

    output: str  # the --output URI
    run_id: str

    def __post_init__(self) -> None:
        check_run_id(self.run_id)

    @classmethod
    def of(cls, run_uri: str) -> RunLayout:
        """The layout of the run folder `run_uri` (<output>/<run_id>), as readers are given it."""
        output, _, run_id = str(run_uri).rstrip("/").rpartition("/")
        return cls(output, run_id)

    @property
    def root(self) -> str:
        return join(self.output, self.run_id)

    @property
    def run_json(self) -> str:
        return join(self.root, "run.json")

    @property
    def adapters_dir(self) -> str:
        return join(self.root, "adapters")

    def adapter(self, motion_id: str) -> str:
        return join(self.adapters_dir, motion_id)

    def adapter_files(self, motion_id: str) -> AdapterFolder:
        return AdapterFolder(self.adapter(motion_id))

    def committed(self, motion_id: str) -> str:
        return self.adapter_files(motion_id).marker

    @property
    def adapters_index(self) -> str:
        return self.table("adapters")

    def video(self, motion_id: str, k: int, ext: str) -> str:
        return join(self.root, "videos", motion_id, f"{k}.{ext}")

    def reference_gif(self, motion_id: str) -> str:
        return join(self.root, "videos", motion_id, "reference.gif")

    def grid(self, motion_id: str) -> str:
        return join(self.root, "grids", f"{motion_id}.png")

    def table(self, name: str) -> str:
        """Where table `name` (one of TABLES) is: <name>.parquet for the two indexes, else <name>/<name>.parquet."""
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}; one of {', '.join(TABLES)}")
        return join(self.root, f"{name}.parquet") if name in ("adapters", "ingest") else join(self.root, name, f"{name}.parquet")

    @property
    def report(self) -> str:
        return join(self.root, "report.html")

    @property
    def frames_dir(self) -> str:
        return join(self.output, "_cache", "frames")

    def frames_cache(self, key: str) -> str:
        return join(self.frames_dir, f"{key}.safetensors")

    def latents_dir(self, base_fingerprint: str) -> str:
        return join(self.output, "_cache", "latents", base_fingerprint)

    def latents_cache(self, base_fingerprint: str, key: str) -> str:
        return join(self.latents_dir(base_fingerprint), f"{key}.safetensors")


def cache_key(uri: str) -> str:
    """The key of a cache file (`frames_cache` / `latents_cache`) from its URI."""
    return str(uri).rstrip("/").rsplit("/", 1)[-1].removesuffix(".safetensors")


def committed_adapters(layout: RunLayout) -> dict[str, dict[str, dict]]:
    """The run's committed adapters (those with a marker), found by one listing of adapters/:
    motion_id -> {file name: its listing info (size, ETag or mtime)}."""
    found: dict[str, dict[str, dict]] = {}
    prefix = layout.adapters_dir + "/"
    for uri, info in storage.find(layout.adapters_dir).items():
        motion_id, _, name = uri[len(prefix):].partition("/")
        found.setdefault(motion_id, {})[name] = info
    return {m: files for m, files in found.items() if COMMITTED in files}


# ---------------------------------------------------------------- records on storage


def _known(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class CommitMarker:
    """`adapters/<motion_id>/_COMMITTED`: written last, exclusively; an adapter counts only with one."""

    motion_id: str
    clip_sha256: str = ""  # hash of the decoded reference frames the adapter was tuned on
    run_id: str = ""
    gang: str = ""  # the gang (worker group) that committed it
    attempt: int = 0  # which lease of the clip
    train_seconds: float = 0.0
    committed_at: float = 0.0  # Unix time; tables hold it as a timestamp
    writer: str = ""  # a token of the attempt that wrote it: its own marker, found after a lost reply, is not a conflict

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> CommitMarker:
        """Parse a marker; keys this version does not know are ignored. ValueError if it is not one."""
        found = json.loads(data)
        if not isinstance(found, dict) or not isinstance(found.get("motion_id"), str):
            raise ValueError("not a commit marker (a JSON object with a motion_id)")
        return cls(**_known(cls, found))


@dataclass(frozen=True)
class AdapterReference:
    prompt: str | None = None  # caption of the reference clip
    subject: str | None = None  # its subject phrase, when given
    clip_sha256: str | None = None


@dataclass(frozen=True)
class AdapterProvenance:
    """Where a pipeline-trained adapter came from (absent for `motioncrafter tune`)."""

    motion_id: str
    row: int
    run_id: str


@dataclass(frozen=True)
class AdapterMeta:
    """`adapter.json` (also embedded in adapter.safetensors): what an adapter is and how it was made."""

    kind: str = "lora"  # lora | full
    format_version: int = 0
    mode: str | None = None  # the tuning mode
    family: str | None = None  # base family: unet3d | animatediff
    base_fingerprint: str | None = None
    rank: int | None = None
    lora: dict[str, Any] | None = None  # peft LoraConfig kwargs of a LoRA adapter
    targets: list[str] = field(default_factory=list)
    tune_config: dict[str, Any] = field(default_factory=dict)
    adapter_config: dict[str, Any] = field(default_factory=dict)
    reference: AdapterReference = field(default_factory=AdapterReference)
    train_seconds: float | None = None
    world_size: int | None = None
    pipeline: AdapterProvenance | None = None

    @classmethod
    def from_dict(cls, data: dict) -> AdapterMeta:
        """Parse metadata; keys this version does not know are ignored. ValueError if it is not an object."""
        if not isinstance(data, dict):
            raise ValueError(f"adapter metadata must be a JSON object, got {type(data).__name__}")
        known = _known(cls, data)
        if isinstance(known.get("reference"), dict):
            known["reference"] = AdapterReference(**_known(AdapterReference, known["reference"]))
        if isinstance(known.get("pipeline"), dict):
            known["pipeline"] = AdapterProvenance(**_known(AdapterProvenance, known["pipeline"]))
        return cls(**known)

    @classmethod
    def from_json(cls, data: bytes | str) -> AdapterMeta:
        return cls.from_dict(json.loads(data))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------- tables

# Per-video metrics (`motioncrafter.evaluate.score_video`), float64, null where one does not apply.
VIDEO_METRICS: dict[str, str] = {
    "flow_fidelity": "cosine, clipped to [0, 1], between the dense optical flow of the video and of the reference clip (1: same motion)",
    "flow_fidelity_invariant": "the same on per-frame mean flow vectors, so insensitive to where things move, in [0, 1]",
    "temporal_consistency": "1 - mean absolute difference between consecutive frames / 255, in [0, 1] (1: static video)",
    "motion_fidelity": "MovingShapes ground truth: similarity in [0, 1] of the tracked object's displacement to the reference's",
    "object_found": "MovingShapes ground truth: 1.0 when a single object was found in the video, else 0.0",
    "colour_acc": "MovingShapes ground truth: 1.0 when the object has the colour the prompt asks for",
    "shape_acc": "MovingShapes ground truth: 1.0 when the object has the shape the prompt asks for",
    "background_acc": "MovingShapes ground truth: 1.0 when the background is the one the prompt asks for",
    "appearance_acc": "MovingShapes ground truth: mean of colour_acc, shape_acc and background_acc",
    "leakage": "MovingShapes ground truth: share of the attributes the prompt changes that still show the reference's value "
               "(lower is better; null when the prompt changes none)",
    "clip_text_alignment": "mean CLIP cosine between the frames and the prompt, in [-1, 1]",
    "clip_frame_consistency": "mean CLIP cosine between consecutive frames, in [-1, 1]",
}
# Per-motion metrics (`motioncrafter.evaluate.summarize`): the mean of each video metric, and diversity.
MOTION_METRICS: dict[str, str] = {
    **VIDEO_METRICS,
    "diversity": "mean pairwise difference between the videos of one prompt across seeds",
}

UTC_TIME = pa.timestamp("us", tz="UTC")


def _fields(*pairs: tuple[str, pa.DataType]) -> tuple[pa.Field, ...]:
    return tuple(pa.field(name, kind) for name, kind in pairs)


@dataclass(frozen=True)
class TableFormat:
    """One table of a run: its columns with their Arrow types, declared once and written exactly.

    Every table starts with `run_id`; metric columns follow the fixed ones in the
    order declared above, always present (null where a metric does not apply), so
    tables of different runs concatenate with `pyarrow.concat_tables` as they are.
    """

    name: str
    columns: tuple[pa.Field, ...]
    sort: tuple[str, ...] = ("row",)
    metrics: tuple[str, ...] = ()

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field("run_id", pa.string()), *self.columns, *(pa.field(m, pa.float64()) for m in self.metrics)])

    def to_arrow(self, rows: list[dict], run_id: str) -> pa.Table:
        """Rows (dicts keyed by column name; a missing key is null) as a table of exactly this schema,
        sorted by `sort`. A key that is not a declared column raises ValueError naming it."""
        schema = self.schema
        unknown = sorted({k for r in rows for k in r} - set(schema.names))
        if unknown:
            raise ValueError(f"table {self.name}: columns {unknown} are not declared in motioncrafter.runformat")
        ordered = sorted(rows, key=lambda r: tuple(r.get(k, 0) for k in self.sort))
        values = [{**r, "run_id": run_id} for r in ordered]
        for r in values:
            for f in schema:
                if f.type == UTC_TIME and isinstance(r.get(f.name), (int, float)):
                    r[f.name] = datetime.fromtimestamp(r[f.name], timezone.utc)
        return pa.Table.from_pylist(values, schema=schema)


TABLES: dict[str, TableFormat] = {
    t.name: t for t in (
        TableFormat("results", _fields(
            ("motion_id", pa.string()), ("row", pa.int64()), ("k", pa.int64()), ("prompt", pa.string()),
            ("seed", pa.int64()), ("video_uri", pa.string()), ("gif_uri", pa.string()),
        ), sort=("row", "k"), metrics=tuple(VIDEO_METRICS)),
        TableFormat("summary", _fields(
            ("motion_id", pa.string()), ("row", pa.int64()), ("prompt", pa.string()), ("adapter_uri", pa.string()),
            ("grid_uri", pa.string()), ("num_videos", pa.int64()), ("train_seconds", pa.float64()),
            ("train_attempts", pa.int64()), ("resumed", pa.bool_()), ("render_seconds", pa.float64()),
            ("eval_seconds", pa.float64()),
        ), metrics=tuple(MOTION_METRICS)),
        TableFormat("failures", _fields(
            ("motion_id", pa.string()), ("row", pa.int64()), ("stage", pa.string()), ("reason", pa.string()),
        )),
        TableFormat("adapters", _fields(
            ("motion_id", pa.string()), ("row", pa.int64()), ("adapter_uri", pa.string()), ("prompt", pa.string()),
            ("subject", pa.string()), ("clip_sha256", pa.string()), ("kind", pa.string()), ("mode", pa.string()),
            ("rank", pa.int64()), ("family", pa.string()), ("base_fingerprint", pa.string()),
            ("format_version", pa.int64()), ("bytes", pa.int64()), ("train_seconds", pa.float64()),
            ("committed_at", UTC_TIME), ("committed_by_run", pa.string()),
        )),
        TableFormat("ingest", _fields(
            ("motion_id", pa.string()), ("row", pa.int64()), ("video_uri", pa.string()), ("size", pa.int64()),
            ("version", pa.string()),  # ETag (object stores) or mtime (file systems) of the source when it was read
            ("params_sha256", pa.string()),  # hash of every decoding parameter
            ("key", pa.string()),  # the frames / latents cache key
            ("clip_sha256", pa.string()),
            ("base_version", pa.string()),  # hash of the listing of the base's folder the latents were encoded with
            ("base_fingerprint", pa.string()), ("ingested_at", UTC_TIME),
        )),
    )
}


def write_table(layout: RunLayout, name: str, rows: list[dict]) -> None:
    """Rows of table `name` as its Parquet file, in exactly the declared schema."""
    storage.write_parquet(TABLES[name].to_arrow(rows, layout.run_id), layout.table(name))


def read_table(layout: RunLayout, name: str) -> list[dict]:
    """The rows of table `name` as the run left it (none when it was never written)."""
    uri = layout.table(name)
    return storage.read_parquet(uri).to_pylist() if storage.exists(uri) else []


@dataclass(frozen=True)
class Failure:
    """A row of failures/: one manifest row that did not make it, and why. `row` is the 0-based manifest row."""

    motion_id: str
    row: int
    stage: str
    reason: str

    def to_row(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> Failure:
        return cls(str(row["motion_id"]), int(row["row"]), str(row["stage"]), str(row["reason"]))
