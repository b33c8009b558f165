"""The broker goes away mid-stream and comes back: the worker recovers by itself, losing nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import produce_requests, read_all, wait_until_committed
from harness.workers import InProcessWorker
from tests.pipeline.conftest import ids_of, requests_for
from worker.config import Settings
from worker.engine import Embedder


def test_broker_stopped_and_restarted_mid_stream(
    private_kafka_broker: KafkaBroker,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    s3_client: Any,
) -> None:
    broker = private_kafka_broker
    bucket, keys = photo_bucket
    base = make_settings(bucket, bootstrap=broker.bootstrap_servers)
    kafka = base.kafka
    for topic, partitions in ((kafka.input_topic, 3), (kafka.output_topic, 2), (kafka.dead_letter_topic, 1)):
        broker.create_topic(topic, partitions)
    requests = requests_for(bucket, keys, 1200)
    produce_requests(broker.bootstrap_servers, kafka.input_topic, requests)

    with InProcessWorker(base, embedder=Embedder.load(base.model), s3_client=s3_client) as worker:
        deadline = time.monotonic() + 60
        while worker.counter("clip_worker_records_embedded_total") < 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        broker.stop()
        time.sleep(3)  # long enough for every connection to fail and the clients to retry
        broker.start()
        wait_until_committed(broker.bootstrap_servers, kafka.group_id, kafka.input_topic, timeout=180)
        worker.stop()

    seen = ids_of(read_all(broker.bootstrap_servers, kafka.output_topic))
    assert set(seen) == {r.id for r in requests}, "no id is missing after the outage"
    print(f"broker outage: {sum(seen.values()) - len(seen)} duplicates")
