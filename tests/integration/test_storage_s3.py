"""`storage` and video IO against an S3-compatible server (moto, on 127.0.0.1)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from motioncrafter import storage
from motioncrafter.video import VideoNotFound, read_video, write_mp4


def test_write_read_exists_join(s3_bucket: str) -> None:
    uri = storage.join(s3_bucket, "/runs/", "r1", "notes.txt")
    assert uri == f"{s3_bucket}/runs/r1/notes.txt"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"hello")
    assert storage.exists(uri) and storage.exists(storage.join(s3_bucket, "runs"))
    assert storage.read_bytes(uri) == b"hello"
    with storage.open_file(uri) as f:
        assert f.read() == b"hello"
    with storage.open_file(storage.join(s3_bucket, "other.txt"), "wb") as f:
        f.write(b"streamed")
    assert storage.read_bytes(storage.join(s3_bucket, "other.txt")) == b"streamed"


def test_objects_land_on_the_configured_endpoint(s3_server, s3_bucket: str) -> None:
    storage.write_bytes(f"{s3_bucket}/a/b.bin", b"\x00\x01")
    body = s3_server.client().get_object(Bucket=s3_bucket.removeprefix("s3://"), Key="a/b.bin")["Body"].read()
    assert body == b"\x00\x01"


def test_missing_object_names_the_uri_and_is_not_retried(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, s3_bucket, "cat_file")
    uri = f"{s3_bucket}/nope.bin"
    with pytest.raises(FileNotFoundError, match="s3://.*/nope.bin") as caught:
        storage.read_bytes(uri)
    assert caught.value.errno == errno.ENOENT and len(calls) == 1


def test_transient_errors_are_retried(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"{s3_bucket}/flaky.bin"
    storage.write_bytes(uri, b"payload")
    calls = count_calls(monkeypatch, s3_bucket, "cat_file", failures=[ConnectionResetError("reset"), TimeoutError()])
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    assert storage.read_bytes(uri) == b"payload"
    assert len(calls) == 3


def test_retry_gives_up_naming_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", delays.append)
    calls = []

    def unavailable():
        calls.append(1)
        raise OSError("Service Unavailable")

    with pytest.raises(OSError, match="could not read: Service Unavailable: 's3://bucket/key'"):
        storage.retry(unavailable, "s3://bucket/key", "read", attempts=4, base_delay=0.5)
    assert len(calls) == 4
    assert delays == [0.5, 1.0, 2.0]  # exponential backoff


def test_redact_drops_credentials_and_signatures() -> None:
    assert storage.redact("https://user:pw@host:9000/a/b.mp4?X-Amz-Signature=s3cret") == "https://host:9000/a/b.mp4?<redacted>"
    assert storage.redact("s3://bucket/a.mp4") == "s3://bucket/a.mp4"
    assert storage.redact("/data/a.mp4") == "/data/a.mp4"


def test_read_video_from_s3(s3_bucket: str) -> None:
    frames = np.stack([np.full((32, 32, 3), 10 * i, np.uint8) for i in range(16)])
    uri = f"{s3_bucket}/clips/counting.mp4"
    write_mp4(frames, uri)
    decoded = read_video(uri, num_frames=4, sampling="stride", stride=2, start_sec=0.5)
    assert (decoded.reshape(4, -1).mean(axis=1) / 10).round().tolist() == [4, 6, 8, 10]
    with pytest.raises(VideoNotFound, match=f"{s3_bucket}/clips/missing.mp4: no such file"):
        read_video(f"{s3_bucket}/clips/missing.mp4")


# --------------------------------------------------------------------------- local_copy


def model_folder(bucket: str) -> str:
    uri = f"{bucket}/models/tiny"
    storage.write_bytes(f"{uri}/model_index.json", b'{"_class_name": "Tiny"}')
    storage.write_bytes(f"{uri}/unet/config.json", b"{}")
    storage.write_bytes(f"{uri}/unet/weights.bin", bytes(range(256)))
    return uri


def test_local_copy_copies_once_and_reuses_the_cache(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = model_folder(s3_bucket)
    first = storage.local_copy(uri, tmp_path)
    assert sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file()) == [
        "model_index.json", "unet/config.json", "unet/weights.bin"]
    assert (first / "unet" / "weights.bin").read_bytes() == bytes(range(256))
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left behind

    copies = count_calls(monkeypatch, s3_bucket, "get_file")
    assert storage.local_copy(uri + "/", tmp_path) == first  # a trailing slash names the same folder
    assert copies == []


def test_local_copy_notices_changed_content(s3_server, s3_bucket: str, tmp_path: Path) -> None:
    uri = model_folder(s3_bucket)
    first = storage.local_copy(uri, tmp_path)
    # another writer changes a file (same size, new content) behind s3fs's listing cache
    s3_server.client().put_object(
        Bucket=s3_bucket.removeprefix("s3://"), Key="models/tiny/unet/weights.bin", Body=bytes(range(255, -1, -1)))
    second = storage.local_copy(uri, tmp_path)
    assert second != first
    assert (second / "unet" / "weights.bin").read_bytes() == bytes(range(255, -1, -1))


def test_interrupted_local_copy_leaves_no_cache(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = model_folder(s3_bucket)
    with monkeypatch.context() as patch:
        count_calls(patch, s3_bucket, "get_file", failures=[None, PermissionError(errno.EACCES, "denied")])
        with pytest.raises(PermissionError, match="unet/config.json"):
            storage.local_copy(uri, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert (storage.local_copy(uri, tmp_path) / "unet" / "config.json").read_bytes() == b"{}"


def test_local_copy_errors_and_local_paths(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{s3_bucket}/models/none"):
        storage.local_copy(f"{s3_bucket}/models/none", tmp_path)
    storage.write_bytes(f"{s3_bucket}/single.bin", b"x")
    with pytest.raises(NotADirectoryError, match=f"{s3_bucket}/single.bin"):
        storage.local_copy(f"{s3_bucket}/single.bin", tmp_path)
    assert storage.local_copy(tmp_path / "model", tmp_path / "cache") == tmp_path / "model"
    assert storage.local_copy(f"file://{tmp_path}/model", tmp_path / "cache") == tmp_path / "model"


def test_local_write_is_atomic_and_creates_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    storage.write_bytes(target, b"old")

    def torn(self: Path, data: bytes) -> None:  # the disk fills up halfway through
        with open(self, "wb") as f:
            f.write(data[:2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", torn)
        with pytest.raises(OSError, match="No space"):
            storage.write_bytes(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]  # no temporary file left behind


# --------------------------------------------------------------------------- helpers


def count_calls(monkeypatch: pytest.MonkeyPatch, bucket: str, method: str, failures: list | None = None) -> list:
    """Record calls to `method` of the S3 filesystem that serves `bucket`; the first
    calls raise the given `failures` (None: pass through) before delegating."""
    fs, _ = storage.filesystem(bucket)  # fsspec hands out this same instance to storage's calls
    real = getattr(fs, method)
    calls: list = []
    pending = list(failures or [])

    def recorded(*args, **kwargs):
        calls.append(args)
        failure = pending.pop(0) if pending else None
        if failure is not None:
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(fs, method, recorded)
    return calls
