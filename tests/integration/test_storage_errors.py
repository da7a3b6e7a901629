"""Storage errors name the URI and what was attempted, and retrying happens in one place.

Against real servers on 127.0.0.1: a closed port (connection refused), a server that answers
every request with one HTTP status (counting them), and the moto S3 server. s3fs and botocore
retry on their own unless told not to; `storage.retry` is the only layer, so one read of an
object whose server keeps failing is exactly RETRY_ATTEMPTS requests (it was 25: botocore's 5
under each of storage's 5).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from motioncrafter import storage


class Answering:
    """An HTTP server on 127.0.0.1 that answers every request with `status`; counts them."""

    def __init__(self, status: int):
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                outer.requests.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_HEAD = do_POST = _answer

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Answering":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens there once the socket is closed


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[callable]:
    """Point s3fs at another endpoint (fsspec caches filesystems with the endpoint they were made with)."""
    import s3fs

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)

    def use(url: str) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        s3fs.S3FileSystem.clear_instance_cache()

    yield use
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_reads_are_retried_in_one_place(no_backoff, s3_endpoint) -> None:
    uri = "s3://bucket/clips/a.mp4"
    with Answering(503) as server:
        s3_endpoint(server.url)
        fs, path = storage.filesystem(uri)
        with pytest.raises(OSError):
            storage.retry(lambda: fs.cat_file(path), uri, "read", attempts=1)
        one_attempt = len(server.requests)
        with pytest.raises(OSError, match=rf"could not read: .*'{uri}'"):
            storage.read_bytes(uri)
    # one attempt is one request (s3fs's size lookup, which fails): botocore and s3fs do not retry it
    assert one_attempt == 1
    assert server.requests == ["HEAD /bucket/clips/a.mp4"] * (1 + storage.RETRY_ATTEMPTS)


def test_http_reads_are_retried_in_one_place(no_backoff) -> None:
    with Answering(503) as server:
        uri = f"{server.url}/clips/a.mp4"
        with pytest.raises(OSError, match=rf"could not read: .*503.*'{uri}'"):
            storage.read_bytes(uri)
    assert server.requests == ["GET /clips/a.mp4"] * storage.RETRY_ATTEMPTS


def test_a_refused_connection_names_the_uri_and_the_action(no_backoff, s3_endpoint) -> None:
    port = closed_port()
    uri = f"http://user:secret@127.0.0.1:{port}/clips/a.mp4?X-Amz-Signature=abc"
    with pytest.raises(ConnectionRefusedError, match=rf"could not read: .*'http://127.0.0.1:{port}/clips/a.mp4\?<redacted>'") as err:
        storage.read_bytes(uri)
    assert "secret" not in str(err.value) and "abc" not in str(err.value)
    s3_endpoint(f"http://127.0.0.1:{port}")
    with pytest.raises(OSError, match=r"could not write: EndpointConnectionError.*'s3://bucket/out/x.bin'"):
        storage.write_bytes("s3://bucket/out/x.bin", b"x")
    with pytest.raises(OSError, match=r"could not check: EndpointConnectionError.*'s3://bucket/out/x.bin'"):
        storage.exists("s3://bucket/out/x.bin")


def test_missing_and_forbidden_name_the_uri_and_the_action(no_backoff, s3_bucket: str, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"could not read: .*'{s3_bucket}/none.mp4'"):
        storage.read_bytes(f"{s3_bucket}/none.mp4")
    with pytest.raises(FileNotFoundError, match=rf"could not read: .*'{tmp_path}/none.mp4'"):
        storage.read_bytes(tmp_path / "none.mp4")
    with Answering(404) as server:
        with pytest.raises(FileNotFoundError, match=rf"could not read: .*'{server.url}/none.mp4'"):
            storage.read_bytes(f"{server.url}/none.mp4")
    assert server.requests == ["GET /none.mp4"]  # not retried
    with Answering(403) as server:
        with pytest.raises(OSError, match=rf"could not read: .*403.*'{server.url}/private.mp4'"):
            storage.read_bytes(f"{server.url}/private.mp4")
    assert server.requests == ["GET /private.mp4"]


def test_a_failure_row_names_the_clip_uri_and_the_action(no_backoff, tmp_path) -> None:
    from motioncrafter.config import VideoConfig
    from pipelines.ingest import decode_row
    from motioncrafter.runformat import RunLayout

    layout = RunLayout(str(tmp_path), "r1")
    port = closed_port()
    for uri, kind in [(f"http://127.0.0.1:{port}/clips/a.mp4", "ConnectionRefusedError"),
                      (str(tmp_path / "missing.mp4"), "FileNotFoundError")]:
        row = {"row": 3, "motion_id": "m3", "video_uri": uri, "start_sec": None, "end_sec": None}
        out = decode_row({"row_json": json.dumps(row), "key": "", "clip_sha256": ""}, layout, VideoConfig())
        assert out["error"].startswith(f"{kind}: "), out["error"]
        assert "could not read" in out["error"] and uri in out["error"], out["error"]
