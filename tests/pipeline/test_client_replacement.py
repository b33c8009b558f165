"""A Kafka client that fails for good is replaced in the running process, not the process.

The wedge is a stand-in: librdkafka's ``send_offsets_to_transaction`` blocks past its timeout only
while a group coordinator fails over (test_failover.py makes it happen on a real cluster, when it
does), so here the worker's first producer blocks in it, as librdkafka does, and the worker must
replace its clients, resume from the committed offsets and deliver every record exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import produce_requests, read_all, wait_until_committed
from harness.workers import InProcessWorker
from tests.pipeline.conftest import ids_of, requests_for
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import ClientFatal, ClientWedged
from worker.metrics import Metrics
from worker.stream.clients import Clients


class OffsetsNeverReturn:
    """The worker's producer, except that send_offsets_to_transaction blocks until released."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.released = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self.released.wait()


def closed_soon(producer: Any, timeout: float = 10.0) -> bool:
    """Whether `producer` is closed within `timeout` (a closed one refuses every call)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            producer.poll(0)
        except RuntimeError:
            return True
        time.sleep(0.1)
    return False


def test_a_wedged_send_offsets_replaces_the_clients_and_delivers_each_record_once(
    kafka_broker: KafkaBroker, photo_bucket: tuple[str, list[str]], make_settings: Callable[..., Settings],
    s3_client: Any,
) -> None:
    bucket, keys = photo_bucket
    settings = make_settings(
        bucket, kafka={"group_instance_id": "worker-0", "transaction_call_seconds": 1},
        pipeline={"delivery": "exactly-once"},
    )
    requests = requests_for(bucket, keys, 300)
    produce_requests(kafka_broker.bootstrap_servers, settings.kafka.input_topic, requests)
    worker = InProcessWorker(settings, embedder=Embedder.load(settings.model), s3_client=s3_client)
    committer = worker.runtime._clients.current.committer
    wedged = OffsetsNeverReturn(committer._producer)  # type: ignore[attr-defined]
    committer._producer = wedged  # type: ignore[attr-defined]
    started = time.monotonic()
    try:
        with worker:
            wait_until_committed(kafka_broker.bootstrap_servers, settings.kafka.group_id, settings.kafka.input_topic)
            assert worker.error is None, worker.error
            assert worker.counter("clip_worker_kafka_client_replacements_total", reason="wedged") == 1
            assert closed_soon(wedged.producer), "the abandoned producer is closed on the abandoning thread"
    finally:
        wedged.released.set()
    print(f"wedged send_offsets: all committed {time.monotonic() - started:.1f} s after start")
    seen = ids_of(read_all(kafka_broker.bootstrap_servers, settings.kafka.output_topic))
    assert set(seen) == {r.id for r in requests}, "no id is missing"
    assert sum(seen.values()) == len(seen), "a read_committed reader sees each input once"
    assert read_all(kafka_broker.bootstrap_servers, settings.kafka.dead_letter_topic) == []


class StubGeneration:
    def __init__(self) -> None:
        self.rebalancer = self
        self.consumer = self.producer = self
        self.retired = self.started = self.closed = False

    def retire(self) -> None:
        self.retired = True

    def start(self, topic: str) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    def purge(self) -> None: ...


def test_replacements_are_bounded_per_window_then_the_failure_stops_the_worker() -> None:
    built: list[StubGeneration] = []
    now = [0.0]

    def build() -> Any:
        built.append(StubGeneration())
        return built[-1]

    metrics = Metrics()
    clients = Clients(build=build, input_topic="in", metrics=metrics, max_replacements=2, window_seconds=60,
                      clock=lambda: now[0])
    wedged = ClientWedged("send_offsets_to_transaction did not return")
    clients.replace(wedged)
    now[0] = 30.0
    clients.replace(ClientFatal("fenced"))
    assert [g.retired for g in built] == [True, True, False] and built[-1].started
    with pytest.raises(ClientWedged):
        clients.replace(wedged)  # a third within 60 s: the process exits as before
    now[0] = 61.0  # the first has left the window
    clients.replace(wedged)
    samples = {labels: metrics.registry.get_sample_value("clip_worker_kafka_client_replacements_total",
                                                         {"reason": labels}) for labels in ("wedged", "fatal")}
    assert samples == {"wedged": 2, "fatal": 1}
    assert not clients.replacing


def test_new_clients_that_wedge_as_they_start_are_replaced_in_turn_within_the_budget() -> None:
    failures: list[BaseException] = [ClientWedged("init_transactions did not return")]

    class FailsToStart(StubGeneration):
        def start(self, topic: str) -> None:
            if failures:
                raise failures.pop()
            super().start(topic)

    built: list[StubGeneration] = []

    def build() -> Any:
        built.append(FailsToStart())
        return built[-1]

    metrics = Metrics()
    clients = Clients(build=build, input_topic="in", metrics=metrics, max_replacements=2, window_seconds=60)
    clients.replace(ClientFatal("fenced"))
    assert len(built) == 3 and built[-1].started, "the generation that wedged as it started was replaced too"
    assert metrics.registry.get_sample_value("clip_worker_kafka_client_replacements_total", {"reason": "wedged"}) == 1
