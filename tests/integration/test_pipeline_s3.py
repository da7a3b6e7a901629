"""The demo-sized pipeline with everything on an S3-compatible server (moto on 127.0.0.1):
manifest, clips, base model and output; users' readers (pandas, pyarrow) read the tables from s3://."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray

from motioncrafter import storage
from pipeline_support import start_ray, tiny_config, write_manifest
from motioncrafter.runformat import RunLayout
from pipelines.run import run_pipeline

pytestmark = pytest.mark.slow
LAYOUT = {"run.json", "ingest.parquet", "adapters", "adapters.parquet", "videos", "grids", "results", "summary", "failures", "report.html"}


@pytest.fixture(scope="module")
def s3_ray(s3_server):
    """Ray started after the S3 fixture set the AWS environment, so its workers reach moto too."""
    start_ray()
    yield
    ray.shutdown()


def upload_folder(local: Path, uri: str) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            storage.write_bytes(storage.join(uri, str(path.relative_to(local))), path.read_bytes())


def test_end_to_end_on_object_storage(s3_ray, s3_bucket, debug_base_dir, tmp_path) -> None:
    manifest = write_manifest(tmp_path / "inputs", 2)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    missing = {"motion_id": "missing_on_s3", "video_uri": "clips/absent.mp4", "prompt": rows[0]["prompt"]}
    manifest.write_text(manifest.read_text() + json.dumps(missing) + "\n")
    upload_folder(tmp_path / "inputs", f"{s3_bucket}/inputs")
    upload_folder(Path(debug_base_dir), f"{s3_bucket}/models/debug")

    cfg = tiny_config(f"model.cache_dir={tmp_path / 'model-cache'}")
    info = run_pipeline(f"{s3_bucket}/inputs/manifest.jsonl", f"{s3_bucket}/runs", cfg, "s3run", f"{s3_bucket}/models/debug")
    assert info["counts"] == {"rows": 3, "summary": 2, "failures": 1, "adapters": 2}

    layout = RunLayout(f"{s3_bucket}/runs", "s3run")
    fs, root = storage.filesystem(layout.root)
    assert {Path(p).name for p in fs.ls(root, refresh=True)} == LAYOUT
    for row in rows:
        assert storage.exists(layout.committed(row["motion_id"]))
        assert storage.exists(layout.video(row["motion_id"], 0, "mp4")) and storage.exists(layout.grid(row["motion_id"]))

    summary = pd.read_parquet(f"{layout.root}/summary/")
    assert sorted(summary.motion_id) == sorted(r["motion_id"] for r in rows)
    assert all(uri.startswith("s3://") for uri in summary.adapter_uri)
    failures = pq.read_table(f"{layout.root}/failures/failures.parquet", filesystem=fs).to_pandas()
    assert failures[["motion_id", "row", "stage"]].values.tolist() == [["missing_on_s3", 2, "ingest"]]
    assert "absent.mp4" in failures.reason[0]
    results = pd.read_parquet(f"{layout.root}/results/results.parquet")
    assert len(results) == 2 and all(storage.exists(u) for u in results.video_uri)
    assert len(pd.read_parquet(layout.adapters_index)) == 2
    assert storage.exists(f"{s3_bucket}/runs/_cache/frames")

    # the clips' ETags still match the ingest index: ingesting again reads no video
    again = run_pipeline(f"{s3_bucket}/inputs/manifest.jsonl", f"{s3_bucket}/runs", cfg, "s3run", f"{s3_bucket}/models/debug",
                         stage="ingest")["stages"]["ingest"]
    assert again["indexed"] == 2 and again["decoded"] == 0 and again["failed"] == 1
