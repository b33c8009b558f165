"""Edges of the main loop: a stop that arrives while the input is paused still sends the partial
batch (it used to wait out the grace period); a drain that cannot finish still leaves the worker time
to flush, commit and leave within the grace period (it used to drain to its very end); a record from
a partition this consumer does not hold is dropped, not tracked (it used to start tracking the
partition, and its watermark); and a consumer whose close never returns ends the worker as wedged,
for its restart (it used to hang the process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import committed_and_end_offsets, produce_requests, read_all
from harness.models import tiny_model_settings
from harness.workers import InProcessWorker
from tests.conftest import Credentials
from tests.pipeline.conftest import SlowDevice, requests_for
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import ClientWedged
from worker.metrics import Metrics
from worker.stream import loop as runtime_module
from worker.stream.build import build_runtime

MODEL: dict[str, Any] = {"preprocess_mode": "fast", "inference_batch_size": 64, "preprocess_workers": 2}


def test_a_stop_while_paused_still_sends_the_partial_batch(
    kafka_broker: KafkaBroker,
    aws_credentials: Credentials,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tiny_checkpoint: Path,
) -> None:
    bucket, keys = photo_bucket
    settings = make_settings(
        bucket, input_partitions=1, model=MODEL,
        pipeline={"max_in_flight": 8, "max_batch_wait_ms": 600_000, "shutdown_grace_seconds": 20},
    )
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    produce_requests(bootstrap, kafka.input_topic, requests_for(bucket, keys, 20))
    embedder = Embedder.load(tiny_model_settings(tiny_checkpoint, **MODEL))
    with InProcessWorker(settings, embedder=embedder) as worker:
        deadline = time.monotonic() + 60
        while not (worker.counter("clip_worker_consumer_paused") == 1
                   and worker.counter("clip_worker_records_in_flight") == 8):
            assert time.monotonic() < deadline, "the worker never filled up and paused"
            time.sleep(0.05)
        started = time.monotonic()
        worker.stop()
        assert time.monotonic() - started < 10, "the partial batch waited out the grace period"

    assert len(read_all(bootstrap, kafka.output_topic)) == 8
    committed, _ends = committed_and_end_offsets(bootstrap, kafka.group_id, kafka.input_topic)
    assert committed == {0: 8}


def test_a_drain_that_cannot_finish_still_leaves_time_to_commit_and_leave_within_the_grace_period(
    kafka_broker: KafkaBroker,
    aws_credentials: Credentials,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tiny_checkpoint: Path,
) -> None:
    bucket, keys = photo_bucket
    grace = 8.0  # a quarter of it, 2 s, is kept for the flush, the commit and leaving
    settings = make_settings(bucket, input_partitions=1, model=MODEL | {"inference_batch_size": 4},
                             pipeline={"max_batch_wait_ms": 10, "shutdown_grace_seconds": grace})
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    produce_requests(bootstrap, kafka.input_topic, requests_for(bucket, keys, 2000))
    device = SlowDevice(Embedder.load(tiny_model_settings(tiny_checkpoint, **MODEL)), delay=0.0)
    with InProcessWorker(settings, embedder=device) as worker:
        deadline = time.monotonic() + 60
        while len(read_all(bootstrap, kafka.output_topic, timeout=1)) < 4:
            assert time.monotonic() < deadline, "no output"
        device.delay = 30.0  # the batches from now on cannot finish before the grace period ends
        time.sleep(0.5)
        assert worker.counter("clip_worker_records_in_flight") > 0, "the stop comes with records in flight"
        started = time.monotonic()
        worker.stop()
        stopped = time.monotonic() - started

    assert stopped < grace, f"stopped {stopped:.1f} s after the request, past its {grace} s grace period"
    committed, _ends = committed_and_end_offsets(bootstrap, kafka.group_id, kafka.input_topic)
    assert committed[0] >= 4, "what was done before the stop is committed"


class ForeignMessage:
    """A record of a partition the consumer does not hold (fetched just before it was revoked)."""

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "someone-elses"

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 42


def test_a_record_of_a_partition_not_held_is_dropped_not_tracked(
    photo_bucket: tuple[str, list[str]], make_settings: Callable[..., Settings], tiny_checkpoint: Path
) -> None:
    settings = make_settings(photo_bucket[0], input_partitions=1, model=MODEL)
    metrics = Metrics()
    runtime = build_runtime(settings, embedder=Embedder.load(settings.model), metrics=metrics)
    runtime._take(ForeignMessage())  # type: ignore[arg-type]
    assert runtime._tracker.in_flight() == 0
    assert metrics.registry.get_sample_value("clip_worker_records_unassigned_total") == 1


class CloseNeverReturns:
    """The worker's consumer, except that close() does not return until released: a consumer fenced
    by a fatal error can hang in it for good (confluent-kafka-go #1588)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.released = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)

    def close(self) -> None:
        self.released.wait()


def test_a_consumer_close_that_never_returns_stops_the_worker_as_wedged_by_its_deadline(
    kafka_broker: KafkaBroker,
    aws_credentials: Credentials,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime_module, "_CLOSE_SECONDS", 0.5)
    settings = make_settings(photo_bucket[0], input_partitions=1, model=MODEL)
    worker = InProcessWorker(settings, embedder=Embedder.load(tiny_model_settings(tiny_checkpoint, **MODEL)))
    hanging = CloseNeverReturns(worker.runtime._clients.current.consumer)
    worker.runtime._clients.current.consumer = hanging  # type: ignore[assignment]
    worker.start()
    deadline = time.monotonic() + 60
    while not worker.runtime.assigned:
        assert time.monotonic() < deadline, "the worker never got its partition"
        time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(ClientWedged, match="consumer close did not return within 0 s"):
        worker.stop(timeout=30)
    assert time.monotonic() - started < 10, "the stop waited on the hanging close"
    hanging.released.set()
    hanging.consumer.close()
