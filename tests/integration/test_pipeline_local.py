"""The whole pipeline on a local Ray: output layout, the accounting invariant, resume.

One Ray instance and one mixed run are shared by the module; later tests re-run
or resume it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import ray

from motioncrafter.runformat import RunLayout
from pipelines.ingest import ingest
from pipelines.manifest import load_manifest
from pipelines.run import main, run_pipeline
from pipelines.train import train
from pipeline_support import TINY, tiny_config, write_manifest

pytestmark = pytest.mark.slow

GOOD_PROMPT = "a red circle moves in a zigzag on a black background"
# Rows that each fail in their own way; the stage that must catch them is in the key.
BAD_ROWS = [
    ("manifest", {"motion_id": "missing_prompt", "video_uri": "clips/x.mp4"}),
    ("manifest", {"motion_id": "empty_prompt", "video_uri": "clips/x.mp4", "prompt": ""}),
    ("manifest", {"motion_id": "../escape", "video_uri": "clips/x.mp4", "prompt": GOOD_PROMPT}),
    ("manifest", {"motion_id": "dup", "video_uri": "clips/x.mp4", "prompt": GOOD_PROMPT}),
    ("manifest", {"motion_id": "dup", "video_uri": "clips/x.mp4", "prompt": GOOD_PROMPT}),
    ("manifest", {"motion_id": "scheme", "video_uri": "gopher://h/x.mp4", "prompt": GOOD_PROMPT}),
    ("manifest", {"motion_id": "window", "video_uri": "clips/x.mp4", "prompt": GOOD_PROMPT, "start_sec": 3, "end_sec": 1}),
    ("manifest", {"motion_id": "types", "video_uri": "clips/x.mp4", "prompt": GOOD_PROMPT, "seed": "x"}),
    ("ingest", {"motion_id": "absent_file", "video_uri": "clips/absent.mp4", "prompt": GOOD_PROMPT}),
    ("ingest", {"motion_id": "corrupt", "video_uri": "clips/corrupt.mp4", "prompt": GOOD_PROMPT}),
    ("ingest", {"motion_id": "late_window", "video_uri": "clips/GOOD0", "prompt": GOOD_PROMPT, "start_sec": 100}),
    # start_sec 0: another cache key than row 0's clip, so the decode count below is exact
    ("train", {"motion_id": "too_short", "video_uri": "clips/GOOD0", "prompt": GOOD_PROMPT, "start_sec": 0,
               "overrides": {"tune.num_frames": 16}}),
]
LAYOUT = {"run.json", "ingest.parquet", "adapters", "adapters.parquet", "videos", "grids", "results", "summary", "failures", "report.html"}


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def mixed(local_ray, debug_base_dir, tmp_path_factory):
    """One run over 3 good clips (one with markup in an eval prompt) and every bad-input kind."""
    folder = tmp_path_factory.mktemp("mixed")
    manifest = write_manifest(folder, 3)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[2]["eval_prompts"] = [rows[2]["prompt"], "a blue square moves in a circle <script>alert(1)</script>"]
    for _, bad in BAD_ROWS:
        if bad.get("video_uri") == "clips/GOOD0":
            bad["video_uri"] = rows[0]["video_uri"]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + [bad for _, bad in BAD_ROWS]))
    (folder / "clips" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    args = ["--manifest", str(manifest), "--output", str(folder / "out"), "--run-id", "mixed", "--base-model", debug_base_dir]
    code = main(args + sets(TINY))
    return folder, rows, RunLayout(str(folder / "out"), "mixed"), code


def test_run_completes_with_failed_rows_and_the_exact_layout(mixed) -> None:
    folder, rows, layout, code = mixed
    assert code == 0
    root = Path(layout.root)
    assert {p.name for p in root.iterdir()} == LAYOUT
    good = [r["motion_id"] for r in rows]
    assert sorted(p.name for p in (root / "adapters").iterdir()) == sorted(good)
    for motion_id in good:
        assert {p.name for p in (root / "adapters" / motion_id).iterdir()} == {"adapter.safetensors", "adapter.json", "_COMMITTED"}
        assert (root / "grids" / f"{motion_id}.png").stat().st_size > 0
    # reference.gif: the reference clip's preview for the report's card
    assert {p.name for p in (root / "videos" / good[2]).iterdir()} == {"0.mp4", "0.gif", "1.mp4", "1.gif", "reference.gif"}
    assert {p.name for p in (root / "videos" / good[0]).iterdir()} == {"0.mp4", "0.gif", "reference.gif"}  # no eval_prompts: its own prompt


def test_every_manifest_row_is_in_summary_or_failures_exactly_once(mixed) -> None:
    folder, rows, layout, _ = mixed
    root = layout.root
    db = duckdb.connect()
    seen = db.sql(f"SELECT row FROM '{root}/summary/*.parquet' UNION ALL SELECT row FROM '{root}/failures/*.parquet'").fetchall()
    assert sorted(r for (r,) in seen) == list(range(len(rows) + len(BAD_ROWS)))

    failures = pd.read_parquet(f"{root}/failures")
    assert list(failures.columns) == ["run_id", "motion_id", "row", "stage", "reason"] and set(failures.run_id) == {"mixed"}
    expected = {len(rows) + i: (stage, bad.get("motion_id", "")) for i, (stage, bad) in enumerate(BAD_ROWS)}
    assert {r.row: (r.stage, r.motion_id) for r in failures.itertuples()} == expected
    reasons = dict(zip(failures.motion_id, failures.reason))
    assert "not found" in reasons["absent_file"].lower() or "no such file" in reasons["absent_file"].lower()
    assert "corrupt" in reasons["corrupt"].lower() or "video" in reasons["corrupt"].lower()
    assert "start_sec 100" in reasons["late_window"]
    assert "tuning needs at least 16" in reasons["too_short"]

    summary = pd.read_parquet(f"{root}/summary")
    assert list(summary.motion_id) == [r["motion_id"] for r in rows]
    assert {"motion_id", "row", "adapter_uri", "train_seconds", "render_seconds", "flow_fidelity", "motion_fidelity"} <= set(summary.columns)
    results = pd.read_parquet(f"{root}/results")
    assert {"motion_id", "prompt", "seed", "video_uri", "flow_fidelity", "temporal_consistency"} <= set(results.columns)
    assert len(results) == 4 and all(Path(u).exists() for u in results.video_uri)


def test_adapter_library_and_run_json(mixed) -> None:
    folder, rows, layout, _ = mixed
    adapters = duckdb.sql(f"SELECT motion_id, kind, base_fingerprint FROM '{layout.adapters_index}' ORDER BY row").fetchall()
    assert [a[0] for a in adapters] == [r["motion_id"] for r in rows] and {a[1] for a in adapters} == {"lora"}
    info = json.loads(Path(layout.run_json).read_text())
    assert info["status"] == "completed" and info["config"]["tune"]["steps"] == 2
    assert len(info["manifest"]["sha256"]) == 64 and info["versions"]["ray"] == ray.__version__
    assert info["stages"]["ingest"]["decoded"] == 4  # 3 good clips + the one decoded for the too-short row
    assert info["stages"]["train"]["trained"] == 3 and info["stages"]["train"]["commit_conflicts"] == 0
    assert info["counts"] == {"rows": len(rows) + len(BAD_ROWS), "summary": 3, "failures": len(BAD_ROWS), "adapters": 3}
    assert info["manifest"]["ignored_columns"] == []


def test_report_escapes_user_strings(mixed) -> None:
    _, _, layout, _ = mixed
    page = Path(layout.report).read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_rerun_with_the_same_run_id_resumes(mixed, debug_base_dir) -> None:
    folder, rows, layout, _ = mixed
    markers = {r["motion_id"]: Path(layout.committed(r["motion_id"])).read_text() for r in rows}
    info = run_pipeline(str(folder / "manifest.jsonl"), str(folder / "out"), tiny_config(), "mixed", debug_base_dir)
    ingest, train = info["stages"]["ingest"], info["stages"]["train"]
    assert ingest["decoded"] == 0 and ingest["encoded"] == 0  # every clip came from the cache
    assert ingest["indexed"] == 4  # ... found by the ingest index, without reading a video (too_short ingests too)
    assert train["trained"] == 0 and train["resumed"] == 3
    assert {m: Path(layout.committed(m)).read_text() for m in markers} == markers  # commits untouched
    assert info["counts"]["summary"] == 3 and info["resumed"]
    assert info["stages"]["render_evaluate"]["kept"] == 3  # same manifest and config: the earlier scores stand
    assert len(pd.read_parquet(layout.table("results"))) == 4


def test_killed_driver_resumes_without_redoing_finished_clips(local_ray, debug_base_dir, tmp_path) -> None:
    manifest = write_manifest(tmp_path, 4, seed=7)
    out = tmp_path / "out"
    layout = RunLayout(str(out), "killed")
    overrides = [*TINY, "tune.steps=8", f"pipeline.ray_address={ray.get_runtime_context().gcs_address}"]
    cmd = [sys.executable, "-c", "import sys; from pipelines.run import main; sys.exit(main(sys.argv[1:]))",
           "--manifest", str(manifest), "--output", str(out), "--run-id", "killed", "--base-model", debug_base_dir, *sets(overrides)]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    try:
        while not list(Path(layout.root).glob("adapters/*/_COMMITTED")):
            assert driver.poll() is None, "the driver ended before committing anything"
            assert time.time() < deadline, "no adapter committed in time"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    first = {p.parent.name: p.read_text() for p in Path(layout.root).glob("adapters/*/_COMMITTED")}
    assert 1 <= len(first) < 4, "kill came too late to test a resume"

    info = run_pipeline(str(manifest), str(out), tiny_config("tune.steps=8"), "killed", debug_base_dir)
    assert info["stages"]["ingest"]["decoded"] == 0 and info["stages"]["ingest"]["indexed"] == 4  # ingest had finished
    assert info["stages"]["train"]["resumed"] == len(first)
    assert info["stages"]["train"]["trained"] == 4 - len(first)
    assert {m: Path(layout.committed(m)).read_text() for m in first} == first
    assert info["counts"]["summary"] == 4


def test_the_ingest_index_rereads_a_changed_source_and_not_an_unchanged_one(local_ray, debug_base_dir, tmp_path) -> None:
    from motioncrafter.toyworld.world import ClipSpec, render
    from motioncrafter.video import write_mp4

    manifest = write_manifest(tmp_path, 2, seed=3)
    rows = load_manifest(str(manifest)).rows
    cfg = tiny_config(f"model.base_model={debug_base_dir}")
    layout = RunLayout(str(tmp_path / "out"), "indexed")
    first = {c.row.motion_id: c for c in ingest(rows, layout, cfg).clips}
    changed, unchanged = Path(rows[0].video_uri), Path(rows[1].video_uri)
    write_mp4(render(ClipSpec("cyan", "triangle", "white", "spiral")).frames, str(changed), fps=8)  # a new clip there
    # Garbage with the same size and mtime: a metadata-only check cannot tell, so reading it would fail the row.
    stat = unchanged.stat()
    unchanged.write_bytes(b"\x00" * stat.st_size)
    os.utime(unchanged, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    again = ingest(rows, layout, cfg)
    second = {c.row.motion_id: c for c in again.clips}
    assert again.failures == [] and again.indexed == 1 and again.decoded == 1 and again.encoded == 1
    same = lambda c: (c.frames_uri, c.latents_uri, c.clip_sha256)  # noqa: E731
    assert same(second[rows[1].motion_id]) == same(first[rows[1].motion_id])  # not read: the same cache files
    assert second[rows[0].motion_id].frames_uri != first[rows[0].motion_id].frames_uri  # re-read and decoded anew
    index = pd.read_parquet(layout.table("ingest")).set_index("motion_id")
    assert index.loc[rows[0].motion_id, "size"] == changed.stat().st_size and set(index.run_id) == {"indexed"}


def test_per_clip_scheduler(local_ray, debug_base_dir, tmp_path) -> None:
    """One Ray Train run per clip (the benchmark's baseline) gives the same outputs as the gangs."""
    manifest = write_manifest(tmp_path, 2, seed=11)
    info = run_pipeline(str(manifest), str(tmp_path / "out"), tiny_config("pipeline.scheduler=per_clip", "pipeline.num_gangs=2"),
                        "perclip", debug_base_dir)
    assert info["stages"]["train"]["scheduler"] == "per_clip" and info["stages"]["train"]["trained"] == 2
    assert info["counts"] == {"rows": 2, "summary": 2, "failures": 0, "adapters": 2}


def test_a_gang_of_two_ranks_tunes_with_deepspeed(local_ray, debug_base_dir, tmp_path) -> None:
    """workers_per_gang=2: both ranks tune the clip data-parallel under DeepSpeed ZeRO-2, rank 0 commits."""
    manifest = write_manifest(tmp_path, 1, seed=5)
    cfg = tiny_config("pipeline.workers_per_gang=2", "tune.engine=deepspeed", "tune.zero_stage=2", f"model.base_model={debug_base_dir}")
    layout = RunLayout(str(tmp_path / "out"), "ds")
    ingested = ingest(load_manifest(str(manifest)).rows, layout, cfg)
    result = train(ingested.clips, layout, cfg)
    assert result.failures == [] and [a.trained for a in result.adapters.values()] == [True]
    meta = json.loads(Path(layout.adapter(ingested.clips[0].row.motion_id), "adapter.json").read_text())
    assert meta["world_size"] == 2 and meta["tune_config"]["engine"] == "deepspeed"


def test_stages_one_at_a_time(local_ray, debug_base_dir, tmp_path) -> None:
    """ingest, train, render, evaluate, report as separate commands: each works on what the earlier
    ones left on storage and redoes none of it; the end state is the whole run's."""
    manifest = write_manifest(tmp_path, 1, seed=13)
    out, run_id = str(tmp_path / "out"), "staged"
    layout = RunLayout(out, run_id)

    def stage(name: str) -> dict:
        return run_pipeline(str(manifest), out, tiny_config(), run_id, debug_base_dir, stage=name)

    # a later stage before its input exists fails the row with what to run first
    early = stage("train")
    reason = pd.read_parquet(f"{layout.root}/failures").reason[0]
    assert early["counts"]["failures"] == 1 and "run `motioncrafter ingest`" in reason

    assert stage("ingest")["stages"]["ingest"]["decoded"] == 1
    assert not Path(layout.root, "adapters").exists()
    trained = stage("train")["stages"]
    assert trained["ingest"]["decoded"] == 0 and trained["train"]["trained"] == 1
    assert not Path(layout.root, "videos").exists()
    rendered = stage("render")["stages"]
    assert rendered["train"]["trained"] == 0 and rendered["render_evaluate"]["videos"] == 1
    assert Path(layout.video(json.loads(manifest.read_text())["motion_id"], 0, "mp4")).exists()
    assert not Path(layout.root, "summary").exists()
    scored = stage("evaluate")
    assert scored["counts"] == {"rows": 1, "summary": 1, "failures": 0, "adapters": 1}
    results = pd.read_parquet(f"{layout.root}/results")
    assert len(results) == 1 and 0 <= results.motion_fidelity[0] <= 1

    Path(layout.report).unlink()
    assert main(["--output", out, "--run-id", run_id], stage="report") == 0
    page = Path(layout.report).read_text()
    assert "reference.gif" in page and results.prompt[0] in page
