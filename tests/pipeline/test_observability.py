"""What an operator sees of one small run on the real broker and S3: every stage's latency histogram
counts each record once, backpressure's pauses are counted in seconds, build_info names what runs;
and what a consumer sees: each output carries the image's SHA-256 and size, and the input's trace
context headers.

One run serves every test here (module scope): six records, each with its own photo and headers,
produced a minute old, through a worker that may hold only two records at a time, so that it pauses.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from PIL import Image

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import read_all, wait_until_committed
from harness.models import TINY_MODEL_NAME, tiny_model_settings
from harness.s3_server import S3Server
from harness.workers import InProcessWorker
from worker import __version__
from worker.config import Settings
from worker.engine import Embedder
from worker.formats.encoding import EmbeddingEncoder
from worker.metrics import Metrics

RECORDS = 6
AGE_SECONDS = 60  # how old the input records are when produced
PER_RECORD = ("fetch", "preprocess", "batch_wait", "produce", "end_to_end")


@dataclass(frozen=True)
class Run:
    metrics: Metrics
    wall_seconds: float
    photos: dict[str, bytes]  # by id
    outputs: dict[str, Message]  # by id
    decoder: EmbeddingEncoder


@pytest.fixture(scope="module")
def run(kafka_broker: KafkaBroker, s3_server: S3Server, tiny_checkpoint: Path,
        small_photos: list[tuple[str, bytes]]) -> Iterator[Run]:
    suffix = uuid.uuid4().hex[:8]
    topics = {role: f"observability-{role}-{suffix}" for role in ("in", "out", "dlq")}
    for name in topics.values():
        kafka_broker.create_topic(name, 2)
    s3, bucket = s3_server.client(), f"observability-{suffix}"
    s3.create_bucket(Bucket=bucket)
    photos = {f"img-{i}": data for i, (_, data) in enumerate(small_photos[:RECORDS])}
    assert len(photos) == RECORDS
    bootstrap = kafka_broker.bootstrap_servers
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    produced_at = int((time.time() - AGE_SECONDS) * 1000)
    for image_id, data in photos.items():
        s3.put_object(Bucket=bucket, Key=f"{image_id}.jpg", Body=data)
        value = json.dumps({"id": image_id, "uri": f"s3://{bucket}/{image_id}.jpg"}).encode()
        headers = [("traceparent", f"00-{image_id}-01".encode()), ("tracestate", b"v=" + image_id.encode()),
                   ("baggage", b"user=7")]
        producer.produce(topics["in"], value, image_id.encode(), headers=headers, timestamp=produced_at)
    assert producer.flush(30) == 0
    settings = Settings(
        model=tiny_model_settings(tiny_checkpoint, preprocess_mode="fast", inference_batch_size=8),
        kafka={"bootstrap_servers": bootstrap, "group_id": f"g-{topics['in']}", "input_topic": topics["in"],
               "output_topic": topics["out"], "dead_letter_topic": topics["dlq"],
               "consumer_config": {"auto.commit.interval.ms": "200"}},
        s3={"endpoint_url": s3_server.endpoint_url, "allowed_sources": (bucket,)},
        pipeline={"metrics_port": None, "max_in_flight": 2},
    )
    embedder = Embedder.load(settings.model)
    started = time.monotonic()
    with InProcessWorker(settings, embedder=embedder, s3_client=s3) as worker:
        wait_until_committed(bootstrap, settings.kafka.group_id, topics["in"], timeout=60)
        worker.stop()
    wall = time.monotonic() - started
    outputs = {m.key().decode(): m for m in read_all(bootstrap, topics["out"])}
    decoder = EmbeddingEncoder(field_name=embedder.field_name, model_name=TINY_MODEL_NAME,
                               pretrained=str(tiny_checkpoint), normalized=True)
    yield Run(metrics=worker.metrics, wall_seconds=wall, photos=photos, outputs=outputs, decoder=decoder)
    for key in photos:
        s3.delete_object(Bucket=bucket, Key=f"{key}.jpg")
    s3.delete_bucket(Bucket=bucket)
    s3.close()


def sample(run: Run, name: str, **labels: str) -> float:
    value = run.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name} {labels}"
    return value


def test_every_per_record_histogram_counts_each_record_once_and_some_time_spent(run: Run) -> None:
    assert sorted(run.outputs) == sorted(run.photos)
    for stage in PER_RECORD:
        assert sample(run, f"clip_worker_{stage}_seconds_count") == RECORDS, stage
        assert sample(run, f"clip_worker_{stage}_seconds_sum") > 0, stage
    batches = sample(run, "clip_worker_inference_seconds_count")
    assert 1 <= batches <= RECORDS and sample(run, "clip_worker_inference_seconds_sum") > 0


def test_end_to_end_latency_runs_from_the_input_records_timestamp(run: Run) -> None:
    assert sample(run, "clip_worker_end_to_end_seconds_bucket", le="30.0") == 0, "the records were a minute old"
    assert sample(run, "clip_worker_end_to_end_seconds_bucket", le="300.0") == RECORDS
    assert sample(run, "clip_worker_end_to_end_seconds_sum") >= AGE_SECONDS * RECORDS


def test_time_paused_by_backpressure_is_counted_in_seconds(run: Run) -> None:
    assert 0 < sample(run, "clip_worker_paused_seconds_total") < run.wall_seconds


def test_build_info_names_the_version_model_checkpoint_device_and_dtype(run: Run, tiny_checkpoint: Path) -> None:
    labels = {"version": __version__, "model": TINY_MODEL_NAME, "pretrained": str(tiny_checkpoint),
              "device": "cpu", "dtype": "float32"}
    assert sample(run, "clip_worker_build_info", **labels) == 1
    assert sample(run, "clip_worker_device_memory_bytes") == 0, "no device memory off CUDA"


def test_each_output_carries_the_sha256_and_the_size_of_its_image(run: Run) -> None:
    for image_id, message in run.outputs.items():
        record: dict[str, Any] = run.decoder.decode(message.value())
        data = run.photos[image_id]
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert (record["width"], record["height"]) == Image.open(io.BytesIO(data)).size


def test_trace_context_headers_are_forwarded_to_the_output_and_other_headers_are_not(run: Run) -> None:
    for image_id, message in run.outputs.items():
        headers = message.headers() or []
        assert ("traceparent", f"00-{image_id}-01".encode()) in headers
        assert ("tracestate", b"v=" + image_id.encode()) in headers
        assert "baggage" not in dict(headers), "only the headers named in forward_headers"
