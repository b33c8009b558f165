"""Fixtures shared by the suite. The real Kafka broker and S3 endpoint come from harness.pytest_plugin."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.faulty_proxy import FaultyS3Proxy, faulty_proxy
from harness.models import TINY_MODEL_NAME, write_random_checkpoint
from harness.photos import photo_corpus
from harness.s3_server import S3Server

pytest_plugins = ["harness.pytest_plugin"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest module marked `slow(minutes=...)` first, and the other slow ones spread evenly over
    the first two thirds of the rest: a parallel run (make test, which keeps this order) starts the
    longest at once, never runs the heavy ones all together, and does not end on one."""
    minutes: dict[Path, float] = {}  # each module's, in collection order
    for item in items:
        marker = item.get_closest_marker("slow")
        minutes.setdefault(item.path, float(marker.kwargs["minutes"]) if marker is not None else 0.0)
    slow = sorted((path for path, weight in minutes.items() if weight), key=minutes.__getitem__, reverse=True)
    light = [path for path, weight in minutes.items() if not weight]
    order, spread = slow[:1], slow[1:]
    step = 2 * len(light) / 3 / max(1, len(spread))
    for index, path in enumerate(light):
        order.append(path)
        if spread and index >= step * (len(slow) - len(spread)):
            order.append(spread.pop(0))
    rank = {path: n for n, path in enumerate(order + spread)}
    items.sort(key=lambda item: rank[item.path])


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


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultyS3Proxy]:
    """The fault-injecting proxy in front of the S3 server: point a client at proxy.endpoint_url."""
    with faulty_proxy(s3_server.endpoint_url) as p:
        yield p


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret: str


@pytest.fixture
def aws_credentials(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Credentials:
    """The S3 server's environment, credentials included, for clients that use the standard AWS chain,
    as in a pod. The key and secret are unique to the test (moto takes any), so that finding them
    anywhere they should not be cannot be a coincidence."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    credentials = Credentials(access_key_id=f"AKIA{uuid.uuid4().hex[:16].upper()}", secret=uuid.uuid4().hex * 2)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials.secret)
    return credentials
