"""Helpers for the streaming tests: a worker's settings on the test broker and S3, and output checks."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from harness.kafka_broker import KafkaBroker
from harness.models import tiny_model_settings
from harness.s3_server import S3Server
from tests.conftest import Credentials
from worker.config import Settings
from worker.engine import Embedder, EmbedResult, PreparedImage
from worker.formats.messages import ImageRequest, S3Uri
from worker.formats.positions import KafkaPosition
from worker.images.work import Work

# The tiny model in fast mode, in batches of 8, on two preprocessing threads: the streaming tests'
# worker settings (model=FAST_TINY) and the `embedder` fixture are built from this one dict, so they agree.
FAST_TINY: dict[str, Any] = {"preprocess_mode": "fast", "inference_batch_size": 8, "preprocess_workers": 2}


@pytest.fixture(scope="session")
def embedder(tiny_checkpoint: Path) -> Embedder:
    return Embedder.load(tiny_model_settings(tiny_checkpoint, **FAST_TINY))


@pytest.fixture
def make_settings(
    kafka_broker: KafkaBroker, s3_server: S3Server, tiny_checkpoint: Path, topic_factory: Callable[..., str],
    aws_credentials: Credentials, tmp_path: Path,
) -> Callable[..., Settings]:
    """make_settings(bucket, input_partitions=3, kafka=..., pipeline=..., model=...) -> Settings with
    fresh topics and group on the session broker, the tiny model, and the S3 server. The credentials
    are in the environment (aws_credentials), as in a pod: decoder processes read S3 with their own
    clients, so a client handed to the worker in-process does not reach them. The device journal is
    the test's own, as each pod's is (model={"decode_journal_dir": ...} gives each of its workers one)."""

    def make(
        bucket: str,
        *,
        input_partitions: int = 3,
        bootstrap: str | None = None,
        kafka: dict[str, Any] | None = None,
        pipeline: dict[str, Any] | None = None,
        model: dict[str, Any] | None = None,
        s3: dict[str, Any] | None = None,
    ) -> Settings:
        input_topic = topic_factory(partitions=input_partitions)
        model = {"decode_journal_dir": tmp_path / "journal"} | (model or {})
        return Settings(
            model=tiny_model_settings(tiny_checkpoint, **model),
            kafka={
                "bootstrap_servers": bootstrap or kafka_broker.bootstrap_servers,
                "group_id": f"group-{input_topic}",
                "input_topic": input_topic,
                "output_topic": topic_factory(partitions=2),
                "dead_letter_topic": topic_factory(),
            }
            | (kafka or {}),
            s3={"endpoint_url": s3_server.endpoint_url, "region": "us-east-1", "allowed_sources": (bucket,)}
            | (s3 or {}),
            pipeline={"metrics_port": 0} | (pipeline or {}),
        )

    return make


def requests_for(bucket: str, keys: list[str], n: int) -> list[ImageRequest]:
    return [ImageRequest(id=f"img-{i:05d}", uri=S3Uri(bucket, keys[i % len(keys)])) for i in range(n)]


def ids_of(messages: list[Message]) -> Counter[str]:
    return Counter(m.key().decode() for m in messages)  # type: ignore[union-attr]


class SlowDevice:
    """The real embedder, with every batch taking `delay` seconds longer: a device falling behind.
    Records the size of every batch it is given."""

    def __init__(self, inner: Embedder, *, delay: float) -> None:
        self._inner = inner
        self.delay = delay
        self.batch_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed(self, images: Sequence[PreparedImage]) -> list[EmbedResult]:
        self.batch_sizes.append(len(images))
        time.sleep(self.delay)
        return self._inner.embed(images)


def bare_work(offset: int) -> Work:
    """A record at `offset` of partition 0 of "t", with no message: for stages that never read one."""
    return Work(position=KafkaPosition("t", 0, offset))


class Sink:
    """Next step and failure sink in one: what finished, and how."""

    def __init__(self) -> None:
        self.done: list[Work] = []
        self.failed: list[tuple[Work, Exception, str]] = []

    def submit(self, item: Work) -> None:
        self.done.append(item)

    def poll(self) -> None: ...

    def close(self, deadline: float) -> None: ...

    def fail(self, work: Work, error: Exception, *, stage: str) -> None:
        self.failed.append((work, error, stage))

    @property
    def finished(self) -> int:
        return len(self.done) + len(self.failed)
