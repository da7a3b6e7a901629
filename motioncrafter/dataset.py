"""Export a finished MotionCrafter run as a Hugging Face-style Parquet dataset.

A run folder (see `motioncrafter.runformat`) holds results/results.parquet (one row per
generated video), summary/summary.parquet (one row per motion), adapters.parquet
and run.json. `export_dataset` joins them into one table, one row per video:

    motion_id, prompt, seed, reference_prompt, [video], video_uri, gif_uri,
    adapter_uri, base_fingerprint, mode, <per-video metrics...>

and writes it as Parquet shards `<out>/data/train-00000-of-0000N.parquet` with a
dataset card `<out>/README.md` whose YAML front matter the Hugging Face Hub and
`datasets` understand. `video` (the MP4 bytes, as `datasets`' `Video` feature) is there only with embed_videos=True;
`video_uri` always points at the run's file. Both URIs may be any fsspec URI.

    motioncrafter dataset export runs/run-20250101-000000 datasets/shapes --embed-videos
"""

from __future__ import annotations

import json
import logging
import math
import re

from motioncrafter import storage
from motioncrafter.runformat import VIDEO_METRICS, RunLayout

log = logging.getLogger(__name__)

# Columns of results/results.parquet that are not metrics, whatever their type.
_RESULT_KEYS = ("motion_id", "row", "k", "prompt", "seed", "video_uri", "gif_uri")
_TEXT_COLUMNS = ("motion_id", "prompt", "reference_prompt", "video_uri", "gif_uri", "adapter_uri", "base_fingerprint", "mode")

# `datasets` and the Hub read a column's feature type from the Parquet schema's "huggingface" metadata
# (and the Hub viewer from the card's `dataset_info.features`): `video` is their `Video` feature
_HF_DTYPES = {"string": "string", "int64": "int64", "double": "float64"}


def _hf_features(schema) -> dict:
    """{"column": {"_type": ...}} as `datasets.Features.to_dict()` writes it, for the schema metadata."""
    return {f.name: {"_type": "Video"} if f.name == "video" else {"dtype": _HF_DTYPES[str(f.type)], "_type": "Value"}
            for f in schema}


def export_dataset(run_uri: str, out_uri: str, embed_videos: bool = False, rows_per_shard: int = 1000,
                   license: str = "other") -> dict:
    """Write the videos of the finished run at `run_uri` as a Parquet dataset under `out_uri`.

    Returns counts: run_id, motions, videos, shards, metrics (the metric column names),
    embedded (whether MP4 bytes were written), out_uri. Raises ValueError when `run_uri`
    is not a finished run, or when rows_per_shard < 1.
    """
    import pyarrow as pa

    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    run_uri, out_uri = str(run_uri).rstrip("/"), str(out_uri).rstrip("/")
    info = _read_run(run_uri)
    frame, metrics = _joined(run_uri)

    video = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Video's storage
    schema = pa.schema(
        [(name, pa.string()) for name in ("motion_id", "prompt")] + [("seed", pa.int64()), ("reference_prompt", pa.string())]
        + ([("video", video)] if embed_videos else [])
        + [(name, pa.string()) for name in ("video_uri", "gif_uri", "adapter_uri", "base_fingerprint", "mode")]
        + [(name, pa.float64()) for name in metrics]
    )
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": _hf_features(schema)}})})
    total = len(frame)
    shards = max(1, math.ceil(total / rows_per_shard))
    names = [f"train-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]
    for i, name in enumerate(names):
        part = frame.iloc[i * rows_per_shard:(i + 1) * rows_per_shard]
        if embed_videos:
            part = part.assign(video=[{"bytes": storage.read_bytes(uri), "path": f"{m}/{uri.rsplit('/', 1)[-1]}"}
                                      for m, uri in zip(part["motion_id"], part["video_uri"])])
        table = pa.Table.from_pandas(part[schema.names], schema=schema, preserve_index=False)
        storage.write_parquet(table, storage.join(out_uri, "data", name))
    _remove_stale_shards(out_uri, set(names))

    counts = {"run_id": info.get("run_id", ""), "motions": int(frame["motion_id"].nunique()), "videos": total,
              "shards": shards, "metrics": metrics, "embedded": bool(embed_videos), "out_uri": storage.redact(out_uri),
              "features": _hf_features(schema), "license": license}
    storage.write_bytes(storage.join(out_uri, "README.md"), dataset_card(info | {"output": run_uri}, frame, counts).encode())
    log.info("run %s: %d videos of %d motions -> %s (%d shards)", counts["run_id"], total, counts["motions"],
             storage.redact(out_uri), shards)
    return counts


def _not_finished(run_uri: str, why: str) -> ValueError:
    return ValueError(f"{storage.redact(run_uri)}: not a finished run ({why})")


def _read_run(run_uri: str) -> dict:
    """run.json of a finished run; ValueError naming what is missing otherwise."""
    layout = RunLayout.of(run_uri)
    for uri in (layout.table("results"), layout.table("summary"), layout.adapters_index, layout.run_json):
        if not storage.exists(uri):
            raise _not_finished(run_uri, f"no {uri[len(layout.root) + 1:]}")
    info = json.loads(storage.read_bytes(layout.run_json))
    status = info.get("status")
    if status is not None and status != "completed":
        raise _not_finished(run_uri, f"run.json says status {status!r}; the run is going on or was interrupted")
    return info


def _joined(run_uri: str):
    """The results joined with their motion's summary and adapter, and the metric column names."""
    import pandas as pd

    layout = RunLayout.of(run_uri)
    results = storage.read_parquet(layout.table("results")).to_pandas()
    summary = storage.read_parquet(layout.table("summary")).to_pandas()
    adapters = storage.read_parquet(layout.adapters_index).to_pandas()
    # the metrics this run computed: results hold every declared metric column, null where one does not apply
    metrics = [c for c in results.columns
               if c not in _RESULT_KEYS and pd.api.types.is_float_dtype(results[c]) and results[c].notna().any()]

    motions = pd.DataFrame({
        "motion_id": summary["motion_id"],
        "reference_prompt": summary.get("prompt"),
        "adapter_uri": summary.get("adapter_uri"),
    })
    keys = ["motion_id"]
    if "row" in summary and "row" in results:  # a motion id may come back in several manifest rows
        motions["row"] = summary["row"]
        keys.append("row")
    adapter = pd.DataFrame({"motion_id": adapters["motion_id"], "base_fingerprint": adapters.get("base_fingerprint"),
                            "mode": adapters.get("mode")}).drop_duplicates("motion_id", keep="last")

    frame = results.drop(columns=["reference_prompt", "adapter_uri", "base_fingerprint", "mode"], errors="ignore")
    frame = frame.merge(motions.drop_duplicates(keys, keep="last"), on=keys, how="left")
    frame = frame.merge(adapter, on="motion_id", how="left")
    sort = [c for c in ("row", "k") if c in frame]
    if sort:
        frame = frame.sort_values(sort, kind="stable")
    frame = frame.reset_index(drop=True)
    for column in _TEXT_COLUMNS:  # an all-null column comes back as floats; make it strings (or None)
        if column not in frame:
            frame[column] = None
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["seed"] = frame["seed"].astype("int64")
    for column in metrics:
        frame[column] = frame[column].astype("float64")
    return frame, metrics


def _remove_stale_shards(out_uri: str, keep: set[str]) -> None:
    """Shards of an earlier export with a different shard count would match `train-*.parquet` too."""
    fs, path = storage.filesystem(storage.join(out_uri, "data"))
    try:
        found = fs.ls(path, detail=False)
    except FileNotFoundError:
        return
    for name in found:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if re.fullmatch(r"train-\d{5}-of-\d{5}\.parquet", base) and base not in keep:
            fs.rm_file(name)


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "1M<n<10M"


def _listing(values) -> str:
    found = sorted({str(v) for v in values if v is not None})
    return ", ".join(f"`{v}`" for v in found) if found else "unknown"


def dataset_card(info: dict, frame, counts: dict) -> str:
    """README.md of the exported dataset: Hugging Face YAML front matter, then a description of the run."""
    import yaml

    run_id = counts["run_id"] or "unknown"
    front = {
        "pretty_name": f"MotionCrafter run {run_id}",
        "task_categories": ["text-to-video"],
        "tags": ["motioncrafter", "video", "synthetic"],
        "size_categories": [_size_category(counts["videos"])],
        # the generated videos inherit the base model's terms: "other" unless the exporter names a license
        "license": counts.get("license", "other"),
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
        "dataset_info": {"features": [{"name": name, "dtype": "video" if f["_type"] == "Video" else f["dtype"]}
                                      for name, f in counts.get("features", {}).items()],
                         "splits": [{"name": "train", "num_examples": counts["videos"]}]},
    }
    config = info.get("config") or {}
    tune, model = config.get("tune") or {}, config.get("model") or {}
    versions = info.get("versions") or {}
    out = counts["out_uri"]
    files = f"{out}/data/*.parquet"
    video_line = (
        "| `video` | the generated MP4 (H.264), as `datasets`' `Video` feature (`bytes` + `path`) |\n" if counts["embedded"] else ""
    )
    metric_lines = "".join(
        f"| `{m}` | {VIDEO_METRICS.get(m, 'per-video metric computed by the run (float)')} |\n" for m in counts["metrics"]
    ) or "| (none) | the run recorded no per-video metrics |\n"
    base_model = model.get("base_model") or "the shipped MovingShapes base"
    version_text = ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) if isinstance(versions, dict) else str(versions)
    videos_note = ("The MP4 bytes are embedded in the `video` column; `video_uri` still names the run's file."
                   if counts["embedded"] else
                   "Videos are not embedded: `video_uri` and `gif_uri` name the run's files "
                   "(export again with `--embed-videos` for a self-contained dataset).")
    body = f"""
# MotionCrafter run `{run_id}`

Videos generated by MotionCrafter motion adapters: each motion adapter was tuned on one
reference clip (its caption is `reference_prompt`) and then rendered for new prompts and seeds.
Exported from the run folder `{storage.redact(info.get("output", "")) or "(unknown)"}`.

- motions: {counts["motions"]}
- videos (rows): {counts["videos"]}, in {counts["shards"]} Parquet shard(s) under `data/`
- base model: `{storage.redact(base_model)}`; base fingerprint: {_listing(frame["base_fingerprint"])}
- tuning mode: `{tune.get("mode", "unknown")}` (adapters: {_listing(frame["mode"])}), {tune.get("steps", "unknown")} steps per clip
- software: {version_text or "unknown"}

{videos_note}

## Columns

| column | meaning |
|---|---|
| `motion_id` | the motion (reference clip) whose adapter rendered the video |
| `prompt` | the prompt the video was rendered for |
| `seed` | the sampling seed |
| `reference_prompt` | the caption of the reference clip |
{video_line}| `video_uri` | URI of the generated MP4 |
| `gif_uri` | URI of the same video as a GIF |
| `adapter_uri` | URI of the motion adapter |
| `base_fingerprint` | fingerprint of the base model the adapter belongs to |
| `mode` | how the adapter was tuned |

Metrics (one value per video; null or NaN where a metric does not apply):

| metric | meaning |
|---|---|
{metric_lines}
## Loading

With Hugging Face `datasets`:

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_files="{files}", split="train")
```

With pandas:

```python
import pandas as pd
df = pd.read_parquet("{out}/data")
```

With DuckDB:

```sql
SELECT motion_id, prompt, seed FROM '{files}';
```

For s3:// and other remote URIs, pass the filesystem's credentials as usual
(`storage_options=` for datasets and pandas, `httpfs` for DuckDB).
"""
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n" + body
