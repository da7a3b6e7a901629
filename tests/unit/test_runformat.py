"""The run-format contract: paths, table schemas written exactly, marker and metadata records."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from motioncrafter import storage
from motioncrafter.runformat import (
    TABLES,
    AdapterMeta,
    CommitMarker,
    RunLayout,
    committed_adapters,
    write_table,
)


def test_layout_paths_are_the_documented_ones() -> None:
    layout = RunLayout("s3://bucket/runs", "r1")
    assert layout.root == "s3://bucket/runs/r1"
    assert layout.committed("m") == "s3://bucket/runs/r1/adapters/m/_COMMITTED"
    assert layout.adapter_files("m").weights == "s3://bucket/runs/r1/adapters/m/adapter.safetensors"
    assert layout.table("results") == "s3://bucket/runs/r1/results/results.parquet"
    assert layout.adapters_index == "s3://bucket/runs/r1/adapters.parquet"
    assert layout.table("ingest") == "s3://bucket/runs/r1/ingest.parquet"
    assert layout.latents_cache("fp", "k") == "s3://bucket/runs/_cache/latents/fp/k.safetensors"
    assert RunLayout.of("s3://bucket/runs/r1/") == layout
    with pytest.raises(ValueError, match="unknown table"):
        layout.table("nope")


def test_every_table_is_written_in_its_declared_schema_empty_or_not(tmp_path) -> None:
    """Two runs' tables, one empty and one filled, concatenate as they are (no type drift)."""
    filled = {
        "results": [{"motion_id": "m", "row": 0, "k": 0, "prompt": "p", "seed": 1, "video_uri": "v", "gif_uri": "g",
                     "flow_fidelity": 0.5}],
        "summary": [{"motion_id": "m", "row": 0, "prompt": "p", "adapter_uri": "a", "grid_uri": "g", "num_videos": 1,
                     "resumed": False, "train_seconds": 1.0, "motion_fidelity": float("nan")}],
        "failures": [{"motion_id": "m", "row": 3, "stage": "ingest", "reason": "bad"}],
        "adapters": [{"motion_id": "m", "row": 0, "adapter_uri": "a", "rank": 8, "bytes": 10, "committed_at": 1.7e9}],
        "ingest": [{"motion_id": "m", "row": 0, "video_uri": "v", "size": 3, "version": "e", "params_sha256": "p",
                    "key": "k", "clip_sha256": "c", "ingested_at": 1.7e9}],
    }
    for name, table in TABLES.items():
        a, b = RunLayout(str(tmp_path), "a"), RunLayout(str(tmp_path), "b")
        write_table(a, name, filled[name])
        write_table(b, name, [])
        first, second = storage.read_parquet(a.table(name)), storage.read_parquet(b.table(name))
        assert first.schema.equals(table.schema) and second.schema.equals(table.schema), name
        both = pa.concat_tables([first, second])
        assert both.column("run_id").to_pylist() == ["a"], name
    adapters = storage.read_parquet(RunLayout(str(tmp_path), "a").adapters_index)
    assert adapters.schema.field("committed_at").type == pa.timestamp("us", tz="UTC")
    assert adapters.column("committed_at")[0].as_py() == datetime.fromtimestamp(1.7e9, timezone.utc)


def test_an_undeclared_column_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"results: columns \['new_metric'\] are not declared"):
        write_table(RunLayout(str(tmp_path), "r"), "results", [{"motion_id": "m", "row": 0, "new_metric": 1.0}])


def test_marker_and_metadata_read_files_written_before_the_contract() -> None:
    old_marker = {"motion_id": "m0", "clip_sha256": "97d8", "run_id": "run-a", "gang": "gang-0", "attempt": 1,
                  "train_seconds": 0.5, "committed_at": 1.7e9}
    marker = CommitMarker.from_json(json.dumps(old_marker | {"added_later": 1}))
    assert json.loads(marker.to_json()) == old_marker | {"writer": ""}
    with pytest.raises(ValueError, match="not a commit marker"):
        CommitMarker.from_json("[1]")
    meta = AdapterMeta.from_dict({"kind": "lora", "format_version": 1, "rank": 4, "reference": {"prompt": "p", "subject": None,
                                  "clip_sha256": "c"}, "pipeline": {"motion_id": "m0", "row": 2, "run_id": "r"}, "unknown": 3})
    assert meta.reference.prompt == "p" and meta.pipeline is not None and meta.pipeline.row == 2
    assert AdapterMeta.from_dict(meta.to_dict()) == meta


def test_committed_adapters_are_found_by_one_listing(tmp_path, monkeypatch) -> None:
    layout = RunLayout(str(tmp_path), "r")
    for motion_id in ("a", "b", "c"):
        storage.write_bytes(layout.adapter_files(motion_id).weights, b"w" * 7)
    for motion_id in ("a", "c"):
        storage.write_bytes(layout.committed(motion_id), CommitMarker(motion_id).to_json())
    calls = []
    find = storage.find
    monkeypatch.setattr(storage, "find", lambda uri: calls.append(uri) or find(uri))
    monkeypatch.setattr(storage, "exists", lambda uri: pytest.fail(f"exists({uri}) called"))
    found = committed_adapters(layout)
    assert sorted(found) == ["a", "c"] and found["a"]["adapter.safetensors"]["size"] == 7
    assert calls == [layout.adapters_dir]
