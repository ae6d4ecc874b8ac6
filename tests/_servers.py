"""Local test servers shared by the test modules (loopback only)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

S3_BUCKET = "embeddings"
S3_REGION = "us-east-1"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(access_key: str = "testing", secret_key: str = "testing") -> Iterator[tuple[str, Any]]:
    """A moto S3 server on 127.0.0.1 with bucket ``embeddings``; yields (endpoint, boto3 client).

    moto keeps its state per process, so callers use a fresh prefix per test.
    """
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=S3_REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
        )
        client.create_bucket(Bucket=S3_BUCKET)
        yield endpoint, client
    finally:
        server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment that points the store (and child processes) at the test server."""
    return {
        "RS_EMBED_S3_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": S3_REGION,
    }
