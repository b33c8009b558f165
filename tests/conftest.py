"""Fixtures shared by the suite. The real Kafka broker and S3 endpoint come from harness.pytest_plugin."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.models import TINY_MODEL_NAME, write_random_checkpoint
from harness.photos import photo_corpus

pytest_plugins = ["harness.pytest_plugin"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights for the tiny model, saved the way open_clip loads a checkpoint by path."""
    return write_random_checkpoint(TINY_MODEL_NAME, tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=7)


@pytest.fixture(scope="session")
def small_photos() -> list[tuple[str, bytes]]:
    """The photo corpus at 160 px: streaming tests push thousands, and decode cost is not their subject."""
    small = []
    for name, data in photo_corpus(long_sides=(640,), qualities=(85,)):
        image = Image.open(io.BytesIO(data))
        image.thumbnail((160, 160))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        small.append((name, out.getvalue()))
    return small


@pytest.fixture
def photo_bucket(s3_client: Any, s3_bucket: str, small_photos: list[tuple[str, bytes]]) -> tuple[str, list[str]]:
    """A bucket holding the small photos; returns (bucket, keys)."""
    for name, data in small_photos:
        s3_client.put_object(Bucket=s3_bucket, Key=name, Body=data)
    return s3_bucket, [name for name, _ in small_photos]
