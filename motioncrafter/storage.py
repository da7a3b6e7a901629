"""Every path in the project is an fsspec URI: a local path, file://, memory://, s3://...

S3 credentials and endpoints come only from the standard AWS provider chain (env,
~/.aws/config, instance roles). s3fs (through aiobotocore) honours
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, so any S3-compatible store (MinIO, Ceph,
moto) needs no code here: set the variable. fsspec caches filesystem instances,
so set it before the first s3:// access in a process.

Storage calls are retried with exponential backoff on transient errors
(`retry`), and only there: S3 filesystems are made with botocore's and s3fs's
own retrying off, so attempts do not multiply (5 x 5 x 5 requests for one read).
Errors that retrying cannot fix (missing file, no permission) are raised at
once. Every error names what was attempted and the URI (`redact`ed, never
credentials).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import IO, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

T = TypeVar("T")
URI = str | os.PathLike

RETRY_ATTEMPTS = 5
RETRY_BASE_DELAY = 0.5  # seconds; doubles after each failed attempt

# Errors that come back the same however often we ask.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_ERRNO_OF_TYPE = (
    (FileNotFoundError, errno.ENOENT),
    (PermissionError, errno.EACCES),
    (IsADirectoryError, errno.EISDIR),
    (NotADirectoryError, errno.ENOTDIR),
    (FileExistsError, errno.EEXIST),
    (TimeoutError, errno.ETIMEDOUT),
    (ConnectionError, errno.ECONNABORTED),
)


def redact(uri: URI) -> str:
    """`uri` as it may appear in logs and errors: without user:password@ and without
    its query string (a presigned URL carries its signature there)."""
    text = str(uri)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    netloc = parts.netloc.rpartition("@")[2]
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# botocore retries throttling, 5xx and dropped connections itself (5 attempts in its legacy mode);
# `retry` does that here, for every backend alike
_NO_BOTOCORE_RETRIES = {"retries": {"mode": "standard", "total_max_attempts": 1}}


def filesystem(uri: URI) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem that serves `uri`, and the path inside it."""
    text = str(uri)
    options = {}
    if "://" in text and text.split("://", 1)[0] in ("s3", "s3a"):
        # kept: a botocore config the user set through fsspec's configuration (addressing style, ...)
        configured = fsspec.config.conf.get("s3", {}).get("config_kwargs", {})
        options = {"config_kwargs": {**configured, **_NO_BOTOCORE_RETRIES}}
    try:
        fs, path = fsspec.core.url_to_fs(text, **options)
    except ValueError as err:  # e.g. "Protocol not known"
        raise ValueError(f"{redact(uri)}: {err}") from err
    if options:
        fs.retries = 1  # s3fs's own retry loop around each call (a class attribute, not an argument)
    return fs, path


def join(uri: URI, *parts: str) -> str:
    """`uri` with `parts` appended, '/'-separated whatever the filesystem."""
    return "/".join([str(uri).rstrip("/"), *(part.strip("/") for part in parts)])


def retry(call: Callable[[], T], uri: URI, action: str, attempts: int = RETRY_ATTEMPTS,
          base_delay: float = RETRY_BASE_DELAY) -> T:
    """`call()`, retried with exponential backoff while it fails with a transient error
    (connection, timeout, I/O). The error finally raised is an OSError whose message
    says what failed: `action` ("read", "write", ...) and the redacted `uri`."""
    attempt = 1
    while True:
        try:
            return call()
        except Exception as err:
            if not isinstance(err, (OSError, *_client_errors())):
                raise  # a bug or a bad argument, not the storage's answer
            if not _transient(err) or attempt >= attempts:
                raise _naming(err, uri, action) from err
            delay = base_delay * 2 ** (attempt - 1)
            log.warning("could not %s %s: %s (attempt %d of %d); retrying in %.1f s",
                        action, redact(uri), type(err).__name__, attempt, attempts, delay)
            time.sleep(delay)
            attempt += 1


@functools.cache
def _client_errors() -> tuple[type[Exception], ...]:
    """What the S3 and HTTP clients raise that is not an OSError (s3fs, through aiobotocore, and
    fsspec's http filesystem are dependencies, so both are installed)."""
    from aiohttp import ClientError
    from botocore.exceptions import BotoCoreError

    return BotoCoreError, ClientError


def _transient(err: Exception) -> bool:
    if isinstance(err, OSError):
        return not isinstance(err, _PERMANENT)
    from aiohttp import ClientConnectionError, ClientPayloadError, ClientResponseError
    from botocore.exceptions import ConnectionError as EndpointError, HTTPClientError
    from botocore.parsers import ResponseParserError

    if isinstance(err, ClientResponseError):  # an HTTP status: server-side trouble and throttling pass
        return err.status >= 500 or err.status == 429
    # a refused or dropped connection, a time-out, a garbled or cut-off response (what s3fs's
    # S3_RETRYABLE_ERRORS and botocore's own retries cover)
    return isinstance(err, (EndpointError, HTTPClientError, ResponseParserError, ClientConnectionError, ClientPayloadError))


def _naming(err: Exception, uri: URI, action: str) -> OSError:
    """An error of the same kind whose message says what was attempted on which URI:
    filesystems report bare paths ('bucket/key'), an endpoint, or nothing at all."""
    code = getattr(err, "errno", None)
    if not isinstance(code, int):
        code = next((c for t, c in _ERRNO_OF_TYPE if isinstance(err, t)), errno.EIO)
    if isinstance(err, OSError):
        detail = err.strerror or str(err)
        # s3fs and memory:// put only the path in the message: say what happened instead
        reason = os.strerror(code) if not detail or detail in str(uri) else detail
    else:  # botocore / aiohttp: their type says what happened (EndpointConnectionError, ...)
        reason = f"{type(err).__name__}: {err}"
    return OSError(code, f"could not {action}: {reason}", redact(uri))  # OSError(ENOENT, ...) is a FileNotFoundError


def exists(uri: URI) -> bool:
    """Whether a file or folder is at `uri`."""
    fs, path = filesystem(uri)
    return retry(partial(fs.exists, path), uri, "check")


def read_bytes(uri: URI) -> bytes:
    """The whole content of the file at `uri`."""
    fs, path = filesystem(uri)
    return retry(partial(fs.cat_file, path), uri, "read")


def write_bytes(uri: URI, data: bytes) -> None:
    """Write `data` to `uri`, creating local parent folders.

    A local file is written under a temporary name and renamed, so readers never see
    half of it. Elsewhere it is written directly: an object-store PUT is already
    all-or-nothing, and its "move" would be a second copy plus a delete.
    """
    fs, path = filesystem(uri)
    if not isinstance(fs, LocalFileSystem):
        retry(partial(fs.pipe_file, path, data), uri, "write")
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def create_exclusive(uri: URI, data: bytes) -> bool:
    """Write `data` to `uri` unless something is there already, with the check and the write one
    step the storage itself enforces: True if this call wrote it, False if another writer did.

    Local (and NFS) folders: a complete temporary file hard-linked to the name, which fails if the
    name exists (O_CREAT | O_EXCL where links are not supported): readers never see half a file.
    S3: a conditional PUT (`If-None-Match: *`, s3fs's mode="create"), which S3 answers with 412
    if the key exists. fsspec's own mode="create" elsewhere is check-then-write, so two writers
    racing on a local or NFS folder would both "create" the file.

    A create retried after a time-out that had in fact succeeded finds its own bytes there:
    that is this writer's file, so True. `data` must therefore be unique to the writer (a token).
    """
    fs, path = filesystem(uri)
    try:
        if isinstance(fs, LocalFileSystem):
            _create_local(Path(path), data)
        else:
            retry(partial(fs.pipe_file, path, data, mode="create"), uri, "create")
        return True
    except FileExistsError:
        return read_bytes(uri) == data


def _create_local(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise
        except OSError as err:  # no hard links here (some FUSE mounts): an exclusive create instead
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP):
                raise
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    finally:
        tmp.unlink(missing_ok=True)


def read_parquet(uri: URI):
    """The Parquet file at `uri` as a pyarrow Table (read through `read_bytes`: retries, named errors)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(read_bytes(uri)))


def write_parquet(table, uri: URI) -> None:
    """A pyarrow Table as one Parquet file at `uri` (through `write_bytes`: atomic locally, retried)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    if table.num_rows:
        pq.write_table(table, sink)
    else:  # the schema and no row group: a row group of 0 rows makes `datasets` fail on the whole load
        pq.ParquetWriter(sink, table.schema).close()  # (it reads in batches of the first row group's size)
    write_bytes(uri, sink.getvalue().to_pybytes())


def find(uri: URI) -> dict[str, dict]:
    """Every file under the folder `uri` with its info (size, ETag or mtime, ...), keyed by URI
    (`uri` joined with the file's relative name), from one fresh recursive listing: on an object
    store that is one request per 1,000 files, not one per file. A missing folder has no files."""
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)  # the caller decides from this listing, so it must not be a cached one
    try:
        found = retry(partial(fs.find, path, detail=True), uri, "list")
    except FileNotFoundError:
        return {}
    base = path.rstrip("/") + "/"
    return {join(uri, name[len(base):]): info for name, info in found.items() if name.startswith(base)}


def stat_many(uris: list[str], list_from: int = 32, threads: int = 16) -> dict[str, dict]:
    """Listing info (size, ETag or mtime, ...) of each of `uris` that is a file, by URI; a missing
    one is left out. A folder holding at least `list_from` of them is listed once (one request per
    1,000 files on an object store); the others get one HEAD each, side by side."""
    from collections import defaultdict
    from concurrent.futures import ThreadPoolExecutor

    by_folder: dict[str, list[str]] = defaultdict(list)
    for uri in uris:
        by_folder[uri.rsplit("/", 1)[0]].append(uri)
    found: dict[str, dict] = {}
    single: list[str] = []
    for folder, members in by_folder.items():
        if len(members) < list_from:
            single += members
            continue
        fs, path = filesystem(folder)
        fs.invalidate_cache(path)
        try:
            entries = retry(partial(fs.ls, path, detail=True), folder, "list")
        except (FileNotFoundError, NotADirectoryError):
            continue
        listed = {join(folder, e["name"].rstrip("/").rsplit("/", 1)[-1]): e for e in entries if e.get("type") == "file"}
        found |= {uri: listed[uri] for uri in members if uri in listed}

    def info(uri: str) -> dict | None:
        fs, path = filesystem(uri)
        try:
            got = retry(partial(fs.info, path), uri, "stat")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return got if got.get("type") == "file" else None

    with ThreadPoolExecutor(max(1, min(threads, len(single)))) as pool:
        found |= {uri: got for uri, got in zip(single, pool.map(info, single)) if got is not None}
    return found


def read_many(uris: list[str], threads: int = 16) -> dict[str, bytes]:
    """The content of each file at `uris`, fetched side by side (small files on an object store cost
    a round trip each, not their size); a missing file is left out."""
    from concurrent.futures import ThreadPoolExecutor

    def read(uri: str) -> bytes | None:
        try:
            return read_bytes(uri)
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(max(1, min(threads, len(uris)))) as pool:
        return {uri: data for uri, data in zip(uris, pool.map(read, uris)) if data is not None}


def open_file(uri: URI, mode: str = "rb") -> IO:
    """An open file object for `uri` (use it in a `with`); writing creates local parent folders."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem) and mode[0] in "wax":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return retry(partial(fs.open, path, mode), uri, "open")


def local_copy(uri: URI, cache_dir: URI) -> Path:
    """A local folder with the content of the folder at `uri`.

    A local path is returned as it is. A remote folder (e.g. a diffusers model on
    s3://) is copied once into `cache_dir/<key>/`, where the key hashes the URI and
    the names, sizes and versions (ETag or mtime) of its files: a later call finds
    the copy while the remote content is unchanged, and makes a new one when it
    changed. The copy is assembled in a temporary folder and renamed into place, so
    an interrupted copy never passes for a complete one.
    """
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        return Path(path)
    files = _listing(fs, path, uri)
    listing = [(name, info.get("size"), version(info)) for name, _, info in files]
    fingerprint = json.dumps([fs.unstrip_protocol(path), listing])  # canonical: "s3://b/m/" and "s3://b/m" are one folder
    target = Path(cache_dir) / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    if not target.is_dir():
        _download(fs, files, target, uri)
    return target


def _listing(fs: AbstractFileSystem, path: str, uri: URI) -> list[tuple[str, str, dict]]:
    """(name relative to the folder, full remote path, info) of every file under `path`."""
    # the listing decides whether a cached copy is stale, so it must be fresh (s3fs's find
    # always lists anew; other backends may answer from their listing cache)
    fs.invalidate_cache(path)
    found = retry(partial(fs.find, path, detail=True), uri, "list")
    files = sorted((os.path.relpath(name, path).replace(os.sep, "/"), name, info) for name, info in found.items())
    if not files:
        raise FileNotFoundError(errno.ENOENT, "No such folder, or it holds no files", redact(uri))
    if files[0][0] == ".":  # `path` is itself a file
        raise NotADirectoryError(errno.ENOTDIR, "Not a folder", redact(uri))
    return files


def version(info: dict) -> str:
    """What changes when a remote file's content changes, whichever store it is on."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "updated", "created"):
        if info.get(key):
            return str(info[key])
    return ""


def _download(fs: AbstractFileSystem, files: list[tuple[str, str, dict]], target: Path, uri: URI) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name, remote, _ in files:
            local = tmp / name
            local.parent.mkdir(parents=True, exist_ok=True)
            retry(partial(fs.get_file, remote, str(local)), join(uri, name), "download")
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # else another process finished the same copy first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
