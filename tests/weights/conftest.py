"""Weights fixtures: the tiny model's checkpoint in a bucket of the real S3 endpoint, and settings that
fetch it into the test's own cache folder."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.models import tiny_model_settings
from harness.s3_server import S3Server
from tests.conftest import Credentials
from worker.config import S3Settings, Settings


@dataclass(frozen=True)
class StoredCheckpoint:
    uri: str
    sha256: str
    data: bytes


@pytest.fixture
def stored_checkpoint(tiny_checkpoint: Path, s3_client: Any, s3_bucket: str) -> StoredCheckpoint:
    data = tiny_checkpoint.read_bytes()
    s3_client.put_object(Bucket=s3_bucket, Key="models/tiny-vit.pt", Body=data)
    return StoredCheckpoint(f"s3://{s3_bucket}/models/tiny-vit.pt", hashlib.sha256(data).hexdigest(), data)


MakeSettings = Callable[..., Settings]


@pytest.fixture
def weights_settings(
    tiny_checkpoint: Path, s3_server: S3Server, aws_credentials: Credentials, tmp_path: Path,
) -> MakeSettings:
    """weights_settings(pretrained, endpoint_url=..., **model): the tiny model, cached under tmp_path/cache."""

    def make(pretrained: str, *, endpoint_url: str | None = None, **model: object) -> Settings:
        values: dict[str, object] = {"pretrained": pretrained, "cache_dir": tmp_path / "cache"} | model
        return Settings(model=tiny_model_settings(tiny_checkpoint, **values),
                        s3=S3Settings(endpoint_url=endpoint_url or s3_server.endpoint_url))

    return make


def cached_files(root: Path) -> list[Path]:
    """Every file under the cache, temporary ones included."""
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []
