"""Manifest parsing and per-row validation: every bad-input kind gets its own reason, good rows go on."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from motioncrafter.config import Config
from motioncrafter.runformat import RunLayout
from pipelines.manifest import ManifestError, load_manifest, resolve_uri

GOOD = {"motion_id": "zig", "video_uri": "clips/zig.mp4", "prompt": "a red circle moves in a zigzag on a black background"}


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def reasons(manifest) -> dict[int, str]:
    return {f.row: f.reason for f in manifest.failures}


def test_good_rows_resolve_relative_uris_against_the_manifest(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "m.jsonl", [
        {**GOOD, "eval_prompts": ["a blue square moves in a zigzag on a white background"], "seed": 3,
         "start_sec": 0, "end_sec": 1.5, "subject": "red circle", "toyworld": {"motion": "zigzag"}},
        {**GOOD, "motion_id": "abs", "video_uri": "/data/abs.mp4"},
        {**GOOD, "motion_id": "remote", "video_uri": "s3://bucket/clips/r.mp4"},
        {**GOOD, "motion_id": "up", "video_uri": "../shared/up.mp4"},
    ])
    m = load_manifest(uri)
    assert m.failures == [] and m.total == 4 and m.ignored_columns == []
    first = m.rows[0]
    assert first.video_uri == str(tmp_path / "clips/zig.mp4")
    assert first.seed == 3 and first.start_sec == 0.0 and first.end_sec == 1.5 and first.subject == "red circle"
    assert first.config(Config()).tune.seed == 3
    assert [r.video_uri for r in m.rows[1:]] == ["/data/abs.mp4", "s3://bucket/clips/r.mp4", str(tmp_path.parent / "shared/up.mp4")]
    assert len(m.sha256) == 64


def test_relative_uri_on_object_storage() -> None:
    assert resolve_uri("clips/a.mp4", "s3://bucket/sets/m.jsonl") == "s3://bucket/sets/clips/a.mp4"


def test_each_bad_input_kind_fails_its_row_with_a_reason(tmp_path: Path) -> None:
    rows = [
        GOOD,                                                              # 0 ok
        {"motion_id": "no_prompt", "video_uri": "a.mp4"},                  # 1 missing column
        {**GOOD, "motion_id": "empty", "prompt": "   "},                   # 2 empty prompt
        {**GOOD, "motion_id": "../escape"},                                # 3 bad id (path traversal)
        {**GOOD, "motion_id": "dup"},                                      # 4 duplicate
        {**GOOD, "motion_id": "dup"},                                      # 5 duplicate
        {**GOOD, "motion_id": "scheme", "video_uri": "gopher://x/a.mp4"},  # 6 unknown scheme
        {**GOOD, "motion_id": "window", "start_sec": 2, "end_sec": 1},     # 7 bad window
        {**GOOD, "motion_id": "types", "seed": "seven"},                   # 8 wrong type
        {**GOOD, "motion_id": 12},                                         # 9 wrong type of id
        {**GOOD, "motion_id": "evals", "eval_prompts": "not a list"},      # 10 wrong type
        {**GOOD, "motion_id": "override", "overrides": {"tune.stepz": 3}},  # 11 bad override
        {**GOOD, "motion_id": "subject", "subject": "blue square"},        # 12 subject not in prompt
        {**GOOD, "motion_id": ".hidden"},                                  # 13 hidden name
        {**GOOD, "motion_id": "negative", "start_sec": -1},                # 14 bad window
    ]
    m = load_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    got = reasons(m)
    assert [r.row for r in m.rows] == [0] and sorted(got) == list(range(1, 15))
    assert "missing column prompt" in got[1]
    assert "prompt is empty" in got[2]
    assert "must match" in got[3] and "must match" in got[13]
    assert "duplicate motion_id 'dup' (also on line 6)" in got[4] and "(also on line 5)" in got[5]
    assert "unknown URI scheme 'gopher'" in got[6]
    assert "bad window" in got[7] and "bad window" in got[14]
    assert "seed must be an integer" in got[8]
    assert "motion_id must be a string" in got[9]
    assert "eval_prompts must be a list" in got[10]
    assert "tune.stepz" in got[11] and "did you mean 'steps'" in got[11]
    assert "does not occur in the prompt" in got[12]
    assert all(r.startswith(f"line {i + 1}: ") for i, r in got.items())  # reasons name the line
    assert {f.stage for f in m.failures} == {"manifest"}
    assert {f.row: f.motion_id for f in m.failures}[9] == "12"  # the id as written, even when it is not a string


def test_csv_values_are_parsed_from_text(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame([
        {**GOOD, "eval_prompts": json.dumps(["a b c"]), "seed": "4", "start_sec": "0.5", "end_sec": ""},
        {**GOOD, "motion_id": "bad", "eval_prompts": "[unclosed", "seed": "", "start_sec": "", "end_sec": ""},
    ]).to_csv(path, index=False)
    m = load_manifest(str(path))
    assert [r.row for r in m.rows] == [0]
    assert m.rows[0].eval_prompts == ["a b c"] and m.rows[0].seed == 4 and m.rows[0].start_sec == 0.5 and m.rows[0].end_sec is None
    assert "eval_prompts must be a JSON list" in reasons(m)[1] and reasons(m)[1].startswith("line 3")


def test_parquet_with_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pd.DataFrame([{**GOOD, "seed": 1.0, "eval_prompts": ["x y"]}, {**GOOD, "motion_id": "two", "seed": None, "eval_prompts": None},
                  {**GOOD, "motion_id": "three", "prompt": None, "seed": None, "eval_prompts": None}]).to_parquet(path)
    m = load_manifest(str(path))
    assert [r.motion_id for r in m.rows] == ["zig", "two"] and m.rows[0].seed == 1 and m.rows[1].seed is None
    assert reasons(m) == {2: "row 2: missing column prompt"}


@pytest.mark.parametrize(("name", "text", "match"), [
    ("m.jsonl", json.dumps(GOOD) + "\n{not json\n", "line 2: not valid JSON"),
    ("m.jsonl", "[1, 2]\n", "line 1: expected a JSON object"),
    ("m.csv", "motion_id,video_uri,prompt\na,b,c,d\n", "line 2: more fields"),
    ("m.parquet", "not parquet", "not a readable Parquet file"),
    ("m.txt", "whatever", "unknown manifest format"),
])
def test_unparseable_manifest_stops_with_the_line(tmp_path: Path, name: str, text: str, match: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match=match):
        load_manifest(str(tmp_path / name))


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(str(tmp_path / "absent.jsonl"))


def test_demo_manifest_is_valid() -> None:
    demo = Path(__file__).parents[2] / "manifests" / "demo.jsonl"
    m = load_manifest(str(demo))
    assert m.failures == [] and len(m.rows) >= 5
    assert {r.motion_id.split("_")[1] for r in m.rows} >= {"zigzag", "circle", "bounce", "spiral", "grow"}
    assert all(Path(r.video_uri).exists() and 2 <= len(r.eval_prompts) <= 4 for r in m.rows)


def test_demo_config_loads() -> None:
    from motioncrafter.config import load_config

    cfg = load_config(str(Path(__file__).parents[2] / "manifests" / "demo.toml"), [])
    assert (cfg.tune.steps, cfg.pipeline.num_gangs, cfg.pipeline.render_concurrency) == (100, 2, 2)
    assert cfg.tune.mode == Config().tune.mode  # the demo runs the default mode


@pytest.mark.parametrize("run_id", ["", "_cache", "../x", "a/b", ".x"])
def test_run_ids_cannot_escape_the_output(run_id: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        RunLayout("/tmp/out", run_id)


def test_a_run_that_cannot_proceed_exits_non_zero_with_one_line(tmp_path: Path, capsys) -> None:
    from pipelines.run import main

    (tmp_path / "m.jsonl").write_text("{broken\n")
    assert main(["--manifest", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("motioncrafter run: error:") and "line 1" in err and "\n" not in err
    assert main(["--manifest", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "out"), "--set", "pipeline.num_gangs=0"]) == 1
    assert "pipeline.num_gangs" in capsys.readouterr().err
    (tmp_path / "ok.jsonl").write_text(json.dumps(GOOD) + "\n")
    assert main(["--manifest", str(tmp_path / "ok.jsonl"), "--output", str(tmp_path / "out"), "--base-model", str(tmp_path)]) == 1
    assert "not a diffusers folder" in capsys.readouterr().err


def test_reference_attributes_from_the_column_or_movingshapes_ground_truth(tmp_path: Path) -> None:
    vague = {**GOOD, "prompt": "a shape moves in a zigzag"}
    truth = {"colour": "red", "shape": "circle", "background": "black"}
    m = load_manifest(write_jsonl(tmp_path / "m.jsonl", [
        {**vague, "motion_id": "given", "attributes": {**truth, "colour": "Blue"}},
        {**vague, "motion_id": "toy", "toyworld": {**truth, "motion": "zigzag", "trajectory": [[1, 2]]}},
        {**vague, "motion_id": "none"},
        {**vague, "motion_id": "partial", "attributes": {"colour": "red"}},
        {**vague, "motion_id": "extra", "attributes": {**truth, "texture": "dots"}},
    ]))
    attributes = {r.motion_id: r.attributes for r in m.rows}
    assert attributes == {"given": {**truth, "colour": "blue"}, "toy": truth, "none": {}}
    got = reasons(m)
    assert "attributes must give exactly colour, shape, background" in got[3] and "'texture'" in got[4]
