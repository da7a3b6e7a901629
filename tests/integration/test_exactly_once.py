"""Exactly-once commits: `storage.create_exclusive` under real races, and the train stage's marker.

Several processes race to create the same marker, released together by a barrier, on a local
folder and on an S3 server: exactly one wins every trial. fsspec's own `pipe_file(mode="create")`
(what the marker was written with before) is check-then-write on local folders: two winners.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from motioncrafter import storage
from pipelines.queue import Lease

WRITERS, TRIALS = 4, 40
LOOKUP_SECONDS = 0.02  # a metadata lookup on a shared (NFS) file system is a network round trip


def _racer(base: str, trials: int, barrier, results, writer: int, endpoint: str | None) -> None:
    """One writer process (spawned: it imports this module, so torch is imported lazily below)."""
    if endpoint:  # this process's S3 endpoint (set before s3fs makes its first filesystem)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
    else:
        from fsspec.implementations.local import LocalFileSystem

        info = LocalFileSystem.info

        def remote_info(self, path, **kwargs):
            time.sleep(LOOKUP_SECONDS)
            return info(self, path, **kwargs)

        LocalFileSystem.info = remote_info
    wins = []
    for trial in range(trials):
        barrier.wait()
        wins.append(storage.create_exclusive(storage.join(base, f"clip{trial}", "_COMMITTED"),
                                             json.dumps({"writer": writer, "trial": trial}).encode()))
    results.put((writer, wins))


def race(base: str, endpoint: str | None = None) -> list[list[int]]:
    """The writers that won each trial, and what each marker holds."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(base, TRIALS, barrier, results, w, endpoint)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    winners = [[w for w in range(WRITERS) if outcome[w][t]] for t in range(TRIALS)]
    for trial, won in enumerate(winners):  # the marker that stands is the winner's
        if len(won) == 1:
            marker = json.loads(storage.read_bytes(storage.join(base, f"clip{trial}", "_COMMITTED")))
            assert marker == {"writer": won[0], "trial": trial}
    return winners


def test_local_race_has_exactly_one_winner(tmp_path: Path) -> None:
    winners = race(str(tmp_path))
    assert [len(w) for w in winners] == [1] * TRIALS, winners
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left


@pytest.fixture
def serial_s3(s3_server) -> Iterator[str]:
    """A moto server that answers one request at a time, for the race on S3: moto's If-None-Match
    is a check then a put in Python, which real S3 makes one atomic step; one request at a time
    makes moto's atomic too, so what is tested is the client's conditional PUT."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=False,
                         request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_s3_race_has_exactly_one_winner(s3_server, serial_s3: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=serial_s3).create_bucket(Bucket="race")
    winners = race("s3://race/run", endpoint=serial_s3)
    assert [len(w) for w in winners] == [1] * TRIALS, winners


def test_a_create_retried_after_a_lost_reply_is_its_own(s3_bucket: str, monkeypatch) -> None:
    """The PUT lands, its reply is lost (a time-out), the retry gets 412: the marker there is this writer's own."""
    uri = storage.join(s3_bucket, "m0", "_COMMITTED")
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    fs, _ = storage.filesystem(uri)
    real, calls = fs.pipe_file, []

    def lost_reply(path, data, **kwargs):
        calls.append(kwargs)
        out = real(path, data, **kwargs)
        if len(calls) == 1:
            raise TimeoutError("read timed out")
        return out

    monkeypatch.setattr(fs, "pipe_file", lost_reply)
    assert storage.create_exclusive(uri, b"mine") is True
    assert [c["mode"] for c in calls] == ["create", "create"]  # retried, and the retry was refused
    assert storage.create_exclusive(uri, b"someone else") is False
    assert storage.read_bytes(uri) == b"mine"


def test_local_create_is_exclusive_and_knows_its_own(tmp_path: Path) -> None:
    uri = str(tmp_path / "a" / "_COMMITTED")
    assert storage.create_exclusive(uri, b"mine") is True
    assert storage.create_exclusive(uri, b"mine") is True  # the same writer again (its bytes are a token)
    assert storage.create_exclusive(uri, b"theirs") is False
    assert (tmp_path / "a" / "_COMMITTED").read_bytes() == b"mine"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["_COMMITTED"]


def _leased(base: str) -> tuple[SimpleNamespace, Lease]:
    import torch

    from motioncrafter.adapters import Adapter
    from pipelines.manifest import ManifestRow
    from pipelines.records import WorkItem

    result = SimpleNamespace(adapter=Adapter({"w": torch.ones(2)}, {"kind": "full"}), seconds=1.0)
    adapter_uri = storage.join(base, "adapters", "m0")
    item = WorkItem(ManifestRow(0, "m0", "clip.mp4", "a prompt"), "frames", "latents", "abc", adapter_uri,
                    storage.join(adapter_uri, "_COMMITTED"), "r")
    return result, Lease("g#1", "m0", item, 1)


def test_commit_after_a_lost_reply_is_fresh_not_a_conflict(s3_bucket: str, monkeypatch) -> None:
    from pipelines.train import _commit

    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    result, lease = _leased(s3_bucket)
    fs, _ = storage.filesystem(s3_bucket)
    real, puts = fs.pipe_file, []

    def lost_reply(path, data, **kwargs):
        puts.append(path)
        out = real(path, data, **kwargs)
        if path.endswith("_COMMITTED") and puts.count(path) == 1:
            raise TimeoutError("read timed out")
        return out

    monkeypatch.setattr(fs, "pipe_file", lost_reply)
    assert _commit(result, lease, "gang0") is True
    marker = json.loads(storage.read_bytes(lease.item.committed_uri))
    assert (marker["gang"], marker["attempt"]) == ("gang0", 1)
    # a second holder of the same clip finds the commit and leaves it alone
    assert _commit(result, replace(lease, attempt=2), "gang1") is False
    assert json.loads(storage.read_bytes(lease.item.committed_uri)) == marker
