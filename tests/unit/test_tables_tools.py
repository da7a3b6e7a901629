"""Every run table, empty or not, reads in pyarrow, pandas, DuckDB and Hugging Face `datasets`, alone and
across runs (the schemas themselves are motioncrafter.runformat's).

An empty table used to be a Parquet file with one row group of 0 rows: `datasets` reads in batches of the
first row group's size, so one run with no failures broke `load_dataset` over every run's failures.
"""

from __future__ import annotations

import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from motioncrafter.runformat import TABLES, RunLayout, write_table

ROWS = {  # one row of each table; the columns not given are null
    "results": {"motion_id": "m0", "row": 0, "k": 0, "prompt": "p", "seed": 1, "video_uri": "v.mp4"},
    "summary": {"motion_id": "m0", "row": 0, "prompt": "p", "num_videos": 2, "resumed": False},
    "failures": {"motion_id": "m1", "row": 1, "stage": "ingest", "reason": "could not read"},
    "adapters": {"motion_id": "m0", "row": 0, "adapter_uri": "a", "rank": 4, "committed_at": 1.7e9},
    "ingest": {"motion_id": "m0", "row": 0, "video_uri": "v.mp4", "size": 10, "ingested_at": 1.7e9},
}


def _load_dataset(files: list[str], cache: str):
    import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_empty_and_filled_tables_read_in_every_tool(name: str, tmp_path) -> None:
    import duckdb
    import pandas as pd

    assert set(ROWS) == set(TABLES)
    empty, filled = RunLayout(str(tmp_path), "run-a"), RunLayout(str(tmp_path), "run-b")
    write_table(empty, name, [])
    write_table(filled, name, [ROWS[name]])
    schema = TABLES[name].schema
    for layout, rows in ((empty, 0), (filled, 1)):
        uri = layout.table(name)
        assert pq.read_table(uri).schema == schema and pq.read_table(uri).num_rows == rows
        assert len(pd.read_parquet(uri)) == rows and list(pd.read_parquet(uri).columns) == schema.names
        assert duckdb.sql(f"SELECT count(*) FROM '{uri}'").fetchall() == [(rows,)]
    # the two runs as one table, in each tool
    both = [empty.table(name), filled.table(name)]
    assert pa.concat_tables([pq.read_table(u) for u in both]).num_rows == 1
    assert duckdb.sql(f"SELECT run_id FROM read_parquet({both!r})").fetchall() == [("run-b",)]
    loaded = _load_dataset(both, str(tmp_path / "hf"))
    assert len(loaded) == 1 and loaded[0]["run_id"] == "run-b"
    assert loaded.features.arrow_schema.names == schema.names
    assert loaded.features.arrow_schema.field("row").type == pa.int64()


def test_an_empty_table_alone_is_an_empty_split_in_datasets_terms(tmp_path) -> None:
    """`datasets` has no empty splits, whatever the format (a CSV with only its header is the same):
    it says so in words, not with an Arrow error about batch sizes."""
    layout = RunLayout(str(tmp_path), "run-a")
    write_table(layout, "failures", [])
    assert pq.ParquetFile(layout.table("failures")).metadata.num_row_groups == 0
    with pytest.raises(ValueError, match="corresponds to no data"):
        _load_dataset([layout.table("failures")], str(tmp_path / "hf"))
