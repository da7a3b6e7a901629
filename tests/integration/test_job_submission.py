"""Integration test: the documented cluster path ``ray job submit ... -- motioncrafter run ...``
against a real local Ray cluster (a head node started with ``ray start``).

The job's driver joins the cluster through RAY_ADDRESS, which Ray sets for job
drivers (pipelines/run.py `_connect` reads it). The package is installed in the
venv, so the job uploads no working_dir; PYTHONPATH only adds the repo root.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline_support import write_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("RAY_ADDRESS", None)  # `ray start --head` must start a head, not look for another cluster
    # Ray >= 2.5x's `ray start` turns token auth on by itself when RAY_AUTH_MODE is unset and a
    # ~/.ray/auth_token exists (any earlier local ray.init() writes one); this test's client sends no
    # token, so the throwaway local head runs with auth explicitly off (Ray's documented opt-out).
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _start_head(temp_dir: str, port: int, dashboard_port: int) -> subprocess.CompletedProcess:
    cmd = [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard_port}", "--num-cpus=4", "--include-dashboard=true", "--disable-usage-stats",
           f"--temp-dir={temp_dir}"]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _stop_our_ray(temp_dir: str) -> None:
    """Stop only the Ray processes of this head: those whose command line names our own temp dir, and
    their children (the job's driver). `ray stop --force` would kill every Ray of the user on the
    machine, other test sessions' included."""
    import psutil

    me = os.getpid()
    procs: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != me and temp_dir in " ".join(proc.info["cmdline"] or []):
                procs[proc.pid] = proc
                for child in proc.children(recursive=True):
                    procs[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def _client(address: str, deadline_s: float = 120.0):
    """The dashboard's job API can lag `ray start` by a few seconds on a loaded machine."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + deadline_s
    while True:
        try:
            return JobSubmissionClient(address)
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(2)


def _submit(client, temp_dir: str, deadline_s: float = 600.0, **job) -> str:
    """The head's job agent registers well after the dashboard answers on a starved 2-core machine
    (minutes, seen in CI); until then the dashboard says "No available agent". On giving up, the
    agent's own log says why."""
    deadline = time.time() + deadline_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err):
                raise
            if time.time() > deadline:
                logs = sorted(Path(temp_dir).glob("session_*/logs/dashboard_agent*"))
                tail = "".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)
                raise AssertionError(f"no job agent after {deadline_s:.0f} s:\n{tail or '(no agent log)'}") from err
            time.sleep(2)


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline(tmp_path, debug_base_dir):
    from ray.job_submission import JobStatus

    manifest = write_manifest(tmp_path, 1)
    out = tmp_path / "out"
    short = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's socket paths must stay short
    port, dashboard_port = _free_port(), _free_port()
    client = job_id = None
    try:
        started = _start_head(short, port, dashboard_port)
        if started.returncode != 0 and "timed out" in (started.stdout + started.stderr).lower():
            _stop_our_ray(short)  # a starved machine can miss Ray's start-up window; the second try usually makes it
            started = _start_head(short, port, dashboard_port)
        assert started.returncode == 0, f"ray start failed:\n{(started.stdout + started.stderr)[-3000:]}"

        client = _client(f"http://127.0.0.1:{dashboard_port}")
        entrypoint = (f"{shlex.quote(sys.executable)} -m motioncrafter_cli run --manifest {shlex.quote(str(manifest))} "
                      f"--output {shlex.quote(str(out))} --run-id job --base-model {shlex.quote(debug_base_dir)} "
                      "--set tune.steps=2 --set render.num_steps=2 --set 'render.seeds=[0]' --set pipeline.start_timeout_s=300")
        job_id = _submit(client, short, entrypoint=entrypoint, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})

        terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        deadline = time.time() + 900
        status = client.get_job_status(job_id)
        while status not in terminal and time.time() < deadline:
            time.sleep(2)
            status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, f"job {job_id} ended {status}:\n{logs[-3000:]}"
        assert "run job completed" in logs, logs[-3000:]

        import pandas as pd

        summary = pd.read_parquet(out / "job" / "summary" / "summary.parquet")
        assert len(summary) == 1, summary
        assert json.loads((out / "job" / "run.json").read_text())["status"] == "completed"
    finally:
        if client is not None and job_id is not None:
            try:
                if client.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                    client.stop_job(job_id)
            except Exception:
                pass
        _stop_our_ray(short)
        shutil.rmtree(short, ignore_errors=True)
