"""Where a store lives: a local directory or ``s3://bucket/prefix`` on any S3-compatible service.

S3 settings come from the environment unless given explicitly, so the same flow
code runs against AWS, MinIO or a local test server:

========================  ==================================================
``RS_EMBED_S3_ENDPOINT``  endpoint URL (else ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``)
``RS_EMBED_S3_REGION``    region (else ``AWS_REGION``, ``AWS_DEFAULT_REGION``, ``us-east-1``)
``AWS_ACCESS_KEY_ID``     with ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``)
``RS_EMBED_S3_ANONYMOUS`` ``1`` for public, unsigned reads
========================  ==================================================

Without explicit keys the SDK's default chain (profile, instance role) is used.
A custom endpoint implies path-style addressing (MinIO, moto) and allows plain
HTTP when its scheme is ``http``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StoreInputError


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True)
class StoreConfig:
    """A store location and how to reach it.

    Attributes:
        location: the text the user gave (a path or ``s3://bucket/prefix``).
        path: absolute local directory (local stores only).
        bucket, prefix: S3 bucket and key prefix (S3 stores only).
        endpoint_url, region, allow_http, force_path_style, anonymous: S3 connection settings.
    """

    location: str
    path: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    allow_http: bool = False
    force_path_style: bool = False
    anonymous: bool = False

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def lock_path(self) -> str | None:
        """File lock next to a local store (icechunk's local storage does not serialise commits)."""
        return None if self.path is None else self.path.rstrip("/") + ".lock"

    @classmethod
    def from_location(cls, location: str | os.PathLike[str] | StoreConfig, **overrides: Any) -> StoreConfig:
        """Parse a path or ``s3://bucket/prefix``; S3 settings not in ``overrides`` come from the environment."""
        if isinstance(location, StoreConfig):
            return location
        text = os.fspath(location)
        if not text:
            raise StoreInputError("store location is empty: give a directory or s3://bucket/prefix")
        if "://" not in text:
            return cls(location=text, path=str(Path(text).expanduser().resolve()))
        scheme, rest = text.split("://", 1)
        if scheme != "s3":
            raise StoreInputError(f"store location scheme {scheme!r} is not supported: use a local path or s3://")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StoreInputError(f"store location {text!r} has no bucket: use s3://bucket/prefix")
        endpoint = overrides.pop("endpoint_url", None) or _env(
            "RS_EMBED_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
        )
        region = overrides.pop("region", None) or _env("RS_EMBED_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
        values: dict[str, Any] = {
            "location": text,
            "bucket": bucket,
            "prefix": prefix.strip("/"),
            "endpoint_url": endpoint,
            "region": region or "us-east-1",
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "force_path_style": bool(endpoint),
            "anonymous": _env("RS_EMBED_S3_ANONYMOUS") in ("1", "true", "yes"),
        }
        unknown = set(overrides) - set(values)
        if unknown:
            raise StoreInputError(f"unknown StoreConfig settings {sorted(unknown)}; allowed: {sorted(values)}")
        values.update(overrides)
        return cls(**values)

    def storage(self) -> Any:
        """The icechunk ``Storage`` for this location (credentials read now, from the environment)."""
        import icechunk

        if self.path is not None:
            return icechunk.local_filesystem_storage(self.path)
        kwargs: dict[str, Any] = {
            "bucket": self.bucket,
            "prefix": self.prefix or None,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            "allow_http": self.allow_http,
            "force_path_style": self.force_path_style,
        }
        key, secret = _env("AWS_ACCESS_KEY_ID"), _env("AWS_SECRET_ACCESS_KEY")
        if self.anonymous:
            kwargs["anonymous"] = True
        elif key and secret:
            kwargs.update(access_key_id=key, secret_access_key=secret, session_token=_env("AWS_SESSION_TOKEN"))
        else:
            kwargs["from_env"] = True
        return icechunk.s3_storage(**kwargs)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description without credentials (for logs and commit metadata)."""
        if self.path is not None:
            return {"kind": "local", "path": self.path}
        return {
            "kind": "s3",
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
        }
