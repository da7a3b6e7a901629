"""`motioncrafter dataset export`: a finished run folder (built by hand) -> Parquet shards + dataset card,
read back with datasets, pandas and DuckDB."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from motioncrafter.dataset import export_dataset
from motioncrafter_cli.dataset import add_parser as add_dataset_parser
from motioncrafter.video import write_mp4

MOTIONS = {"zigzag": "a red circle moves in a zigzag on a black background",
           "orbit": "a blue square moves in a circle on a white background"}
METRICS = ["flow_fidelity", "temporal_consistency", "leakage"]
COLUMNS = ["motion_id", "prompt", "seed", "reference_prompt", "video_uri", "gif_uri", "adapter_uri",
           "base_fingerprint", "mode", *METRICS]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """2 motions x 2 videos, with real tiny MP4s, the three tables and run.json."""
    root = tmp_path / "runs" / "run-test"
    rng = np.random.default_rng(0)
    results, summary, adapters = [], [], []
    for row, (motion_id, reference) in enumerate(MOTIONS.items()):
        adapter_uri = str(root / "adapters" / motion_id)
        for k, seed in enumerate((11, 12)):
            mp4 = root / "videos" / motion_id / f"{k}.mp4"
            write_mp4(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), str(mp4))
            results.append({"motion_id": motion_id, "row": row, "k": k, "prompt": f"a green triangle, video {k}",
                            "seed": seed, "video_uri": mp4.as_uri(), "gif_uri": mp4.with_suffix(".gif").as_uri(),
                            "flow_fidelity": 0.5 + row / 10 + k / 100, "temporal_consistency": 0.9,
                            "leakage": float("nan") if k else 0.0})
        summary.append({"motion_id": motion_id, "row": row, "prompt": reference, "adapter_uri": adapter_uri,
                        "grid_uri": str(root / "grids" / f"{motion_id}.png"), "num_videos": 2, "flow_fidelity": 0.5})
        adapters.append({"motion_id": motion_id, "row": row, "adapter_uri": adapter_uri, "kind": "motion",
                         "mode": "motioncrafter", "base_fingerprint": "abc123", "rank": 4})
    (root / "results").mkdir(parents=True)
    (root / "summary").mkdir()
    pd.DataFrame(results).to_parquet(root / "results" / "results.parquet")
    pd.DataFrame(summary).to_parquet(root / "summary" / "summary.parquet")
    pd.DataFrame(adapters).to_parquet(root / "adapters.parquet")
    info = {"run_id": "run-test", "status": "completed", "output": str(root),
            "config": {"model": {"base_model": ""}, "tune": {"mode": "motioncrafter", "steps": 7}},
            "versions": {"motioncrafter": "0.1.0"}, "counts": {"rows": 2, "summary": 2, "failures": 0, "adapters": 2}}
    (root / "run.json").write_text(json.dumps(info))
    return root


def _video_bytes(run: Path) -> dict[str, bytes]:
    results = pd.read_parquet(run / "results" / "results.parquet")
    return {uri: Path(uri.removeprefix("file://")).read_bytes() for uri in results["video_uri"]}


@pytest.mark.parametrize("embed", [False, True])
def test_export_reads_back_everywhere(run: Path, tmp_path: Path, embed: bool) -> None:
    import duckdb
    from datasets import load_dataset

    out = tmp_path / "export"
    counts = export_dataset(str(run), str(out), embed_videos=embed, rows_per_shard=3)
    assert counts | {"metrics": None, "features": None} == {
        "run_id": "run-test", "motions": 2, "videos": 4, "shards": 2, "metrics": None, "features": None,
        "embedded": embed, "out_uri": str(out), "license": "other"}
    assert counts["metrics"] == METRICS
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    expected = COLUMNS[:4] + (["video"] if embed else []) + COLUMNS[4:]

    ds = load_dataset("parquet", data_files=str(out / "data/*.parquet"), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 4 and ds.column_names == expected

    df = pd.read_parquet(out / "data")
    assert len(df) == 4 and sorted(df.columns) == sorted(expected)
    df = df.sort_values(["motion_id", "seed"]).reset_index(drop=True)
    assert df["reference_prompt"].tolist() == [MOTIONS["orbit"]] * 2 + [MOTIONS["zigzag"]] * 2
    assert set(df["base_fingerprint"]) == {"abc123"} and set(df["mode"]) == {"motioncrafter"}
    assert df["adapter_uri"].tolist() == [str(run / "adapters" / m) for m in ("orbit", "orbit", "zigzag", "zigzag")]
    assert df["seed"].tolist() == [11, 12, 11, 12] and df["leakage"].isna().tolist() == [False, True] * 2
    if embed:  # datasets' Video feature, as datasets itself reads it from the files
        from datasets import Features, Video

        assert isinstance(ds.features["video"], Video)
        assert Features.from_arrow_schema(pq.read_schema(next((out / "data").iterdir())))["video"] == Video()
        files = _video_bytes(run)
        assert all(v["bytes"] == files[u] and v["path"].endswith(".mp4") for v, u in zip(df["video"], df["video_uri"]))
        assert all(r["video"]["bytes"] == files[r["video_uri"]] for r in ds.cast_column("video", Video(decode=False)))
    assert ds.features["seed"].dtype == "int64" and ds.features["prompt"].dtype == "string"

    with duckdb.connect() as con:
        assert con.execute(f"SELECT count(*) FROM '{out}/data/*.parquet'").fetchone()[0] == 4

    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    assert front["task_categories"] == ["text-to-video"]
    assert front["license"] == "other"
    features = {f["name"]: f["dtype"] for f in front["dataset_info"]["features"]}
    assert list(features) == expected and features["seed"] == "int64" and features.get("video", "video") == "video"
    assert front["dataset_info"]["splits"] == [{"name": "train", "num_examples": 4}]
    for text in ("run-test", "motions: 2", "videos (rows): 4", "`abc123`", "`motioncrafter`", "7 steps",
                 "flow_fidelity", "temporal_consistency", "load_dataset(\"parquet\"", "pd.read_parquet", "SELECT"):
        assert text in card


def test_fewer_shards_replace_the_old_ones(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_dataset(str(run), str(out), rows_per_shard=1)
    assert len(list((out / "data").iterdir())) == 4
    assert export_dataset(str(run), str(out))["shards"] == 1
    assert [p.name for p in (out / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    assert len(pd.read_parquet(out / "data")) == 4


def test_not_a_finished_run(run: Path, tmp_path: Path) -> None:
    (run / "results" / "results.parquet").unlink()
    with pytest.raises(ValueError, match=r"not a finished run \(no results/results.parquet\)"):
        export_dataset(str(run), str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()
    with pytest.raises(ValueError, match="rows_per_shard"):
        export_dataset(str(run), str(tmp_path / "export"), rows_per_shard=0)


def test_cli(run: Path, tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="motioncrafter")
    add_dataset_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dataset", "export", str(run), str(tmp_path / "export"), "--embed-videos", "--rows-per-shard", "3"])
    assert args.func(args) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "4 videos of 2 motions" in line and "2 shards" in line and "embedded" in line
    assert "video" in pd.read_parquet(tmp_path / "export" / "data").columns
    help_text = parser._subparsers._group_actions[0].choices["dataset"].format_help()
    assert "motioncrafter dataset export runs/" in help_text and "--embed-videos" in help_text
