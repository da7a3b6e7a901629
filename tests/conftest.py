"""Shared fixtures: an S3-compatible server on 127.0.0.1 (moto's server mode).

s3fs reaches it through the standard AWS_ENDPOINT_URL variable, exactly as it
would reach MinIO or Ceph on a cluster: no fsspec configuration is involved.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self):
        """A boto3 S3 client that talks to this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url)

    def create_bucket(self, name: str) -> str:
        """Create bucket `name`; its URI."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server for the session, with the AWS environment pointing at it."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    no_config = str(tmp_path_factory.mktemp("aws") / "absent")
    env = pytest.MonkeyPatch()
    # a developer's own profile, session token or config must not leak into the tests
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        env.delenv(name, raising=False)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": no_config,
        "AWS_SHARED_CREDENTIALS_FILE": no_config,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        env.setenv(name, value)
    # fsspec reuses S3FileSystem instances, and an instance keeps the endpoint it was made with
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield S3Server(endpoint)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        env.undo()
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket: its URI, s3://<name>."""
    return s3_server.create_bucket(f"test-{uuid.uuid4().hex[:16]}")
