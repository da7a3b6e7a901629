"""SIGINT, then SIGTERM, to a running `motioncrafter run` while it trains (the shipped tiny base, four
clips), then the same command again until it completes.

Each interrupted run exits 128 + the signal with run.json saying "interrupted"; each re-run keeps the
adapters committed before (the same marker and weight bytes: not tuned twice) and tunes the rest once;
the last one accounts for every manifest row. The signals are sent on a concrete event (a new commit
marker on disk), never after a fixed sleep, and every wait is generous: under load a gang takes long
to start, which must not fail the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline_support import TINY, write_manifest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIPS = 4
SETS = [*TINY, "tune.steps=20", "tune.mode=temporal_only", "pipeline.num_gangs=1", "pipeline.ray_num_cpus=3"]


def _start(manifest: Path, output: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "motioncrafter_cli", "run", "--manifest", str(manifest), "--output", str(output),
            "--run-id", "r1", *(a for s in SETS for a in ("--set", s))]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    env.pop("RAY_ADDRESS", None)  # an embedded Ray of its own
    # its own session: the test can end it and Ray's processes if something goes wrong
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _committed(root: Path) -> dict[str, tuple[bytes, str]]:
    """motion_id -> (its commit marker's bytes, the sha256 of its adapter weights)."""
    return {p.parent.name: (p.read_bytes(), hashlib.sha256((p.parent / "adapter.safetensors").read_bytes()).hexdigest())
            for p in (root / "adapters").glob("*/_COMMITTED")}


def _interrupt_after_a_commit(proc: subprocess.Popen, root: Path, sig: signal.Signals, before: int) -> str:
    """Wait until more than `before` adapters are committed, send `sig`, return the run's output."""
    deadline = time.time() + 1200
    while len(_committed(root)) <= before:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before a new commit:\n{proc.communicate()[0][-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("no new adapter committed in 20 minutes")
        time.sleep(0.5)
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the run did not stop within 300 s of {sig.name}:\n{proc.communicate()[0][-3000:]}")


def _session_ends(proc: subprocess.Popen, within_s: float = 30) -> bool:
    """Whether every process of the run's session (the embedded Ray's included) is gone within `within_s`."""
    import psutil

    def alive() -> list[psutil.Process]:  # zombies do not count: a container's init may never reap them
        found = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getpgid(p.pid) == proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (ProcessLookupError, psutil.Error):
                pass
        return found

    deadline = time.time() + within_s
    while alive():
        if time.time() > deadline:
            return False
        time.sleep(0.5)
    return True


def _check_interrupted(proc: subprocess.Popen, out: str, root: Path, sig: signal.Signals) -> dict:
    assert proc.returncode == 128 + sig.value, out[-3000:]
    assert _session_ends(proc), "the embedded Ray's processes outlived the interrupted driver"
    assert f"interrupted by {sig.name}; run it again with the same --run-id to resume" in out
    info = json.loads((root / "run.json").read_text())
    assert (info["status"], info["signal"], info["interrupted_in"]) == ("interrupted", sig.name, "train"), info
    committed = _committed(root)
    assert len(committed) < CLIPS, "every clip was committed before the signal: it came too late to test a resume"
    return committed


def test_sigint_then_sigterm_stop_the_run_and_the_same_run_id_resumes_it(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, CLIPS, seed=17)
    out, root = tmp_path / "out", tmp_path / "out" / "r1"
    procs = []
    try:
        procs.append(first := _start(manifest, out))
        after_int = _check_interrupted(first, _interrupt_after_a_commit(first, root, signal.SIGINT, 0), root, signal.SIGINT)

        procs.append(second := _start(manifest, out))
        text = _interrupt_after_a_commit(second, root, signal.SIGTERM, len(after_int))
        after_term = _check_interrupted(second, text, root, signal.SIGTERM)
        assert {m: after_term[m] for m in after_int} == after_int  # kept as they were: not tuned again
        assert json.loads((root / "run.json").read_text())["resumed"]

        procs.append(last := _start(manifest, out))
        text = last.communicate(timeout=1800)[0]
        assert last.returncode == 0, text[-3000:]
    finally:  # each run's session, Ray's processes included: a driver that died early leaves them running
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    info = json.loads((root / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"]
    train = info["stages"]["train"]
    assert (train["resumed"], train["trained"], train["commit_conflicts"]) == (len(after_term), CLIPS - len(after_term), 0)
    final = _committed(root)
    assert len(final) == CLIPS and {m: final[m] for m in after_term} == after_term
    # every manifest row ends as a result or a failure row, once
    summary, failures = pd.read_parquet(root / "summary"), pd.read_parquet(root / "failures")
    assert sorted(summary.row) == list(range(CLIPS)) and failures.empty
    assert info["counts"] == {"rows": CLIPS, "summary": CLIPS, "failures": 0, "adapters": CLIPS}
    resumed = set(summary[summary.resumed].motion_id)
    assert resumed == set(after_term)
