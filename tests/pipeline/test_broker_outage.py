"""The broker goes away mid-stream and comes back: nothing is lost.

The worker runs as a process under a supervisor that restarts it when it exits, as Kubernetes
would. Two client failures are tested here when they happen: a static member whose session timed
out during the outage is fenced by its own rejoin (a fatal librdkafka error), and, exactly-once,
send_offsets_to_transaction can hang for good after its group coordinator restarts (librdkafka
#5456, #5511; wedged after twice kafka.transaction_call_seconds, 5 s here against the default 10,
which took 14 s more). Either way the worker replaces its Kafka clients in the process
(worker/stream/clients.py); what still makes it exit is restarted by the supervisor. It resumes from
the commit: every id arrives, and a read_committed reader sees each input exactly once in
exactly-once mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import committed_and_end_offsets, produce_requests, read_all, written_count
from harness.s3_server import S3Server
from harness.workers import WorkerProcess, settings_env
from tests.pipeline.conftest import ids_of, requests_for
from worker.config import Settings


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_broker_stopped_and_restarted_mid_stream(
    delivery: str,
    private_kafka_broker: KafkaBroker,
    s3_server: S3Server,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    broker = private_kafka_broker
    bucket, keys = photo_bucket
    settings = make_settings(
        bucket,
        bootstrap=broker.bootstrap_servers,
        kafka={"group_instance_id": "worker-0", "consumer_config": {"session.timeout.ms": "6000"},
               "transaction_call_seconds": 5},
        # A small in-flight bound keeps the consumer paused much of the time, so that the outage
        # often lands while it is paused: partitions it gets back must not stay paused.
        pipeline={"delivery": delivery, "max_in_flight": 100},
    )
    kafka = settings.kafka
    for topic, partitions in ((kafka.input_topic, 3), (kafka.output_topic, 2), (kafka.dead_letter_topic, 1)):
        broker.create_topic(topic, partitions)
    requests = requests_for(bucket, keys, 1200)
    produce_requests(broker.bootstrap_servers, kafka.input_topic, requests)
    env = settings_env(settings) | s3_server.env()

    restarts = 0
    reasons: list[str] = []  # why each exit happened, for the assertion message
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    try:
        deadline = time.monotonic() + 60
        while written_count(broker.bootstrap_servers, kafka.output_topic) < 200:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.05)
        broker.stop()
        time.sleep(3)  # long enough for every connection to fail and the clients to retry
        broker.start()
        deadline = time.monotonic() + 240
        while True:  # supervise it as Kubernetes would: restart it if it exits
            committed, ends = committed_and_end_offsets(broker.bootstrap_servers, kafka.group_id, kafka.input_topic)
            if committed == ends:
                break
            assert time.monotonic() < deadline, f"committed {committed} of {ends}\n{worker.log_tail()}"
            assert worker.process is not None
            if worker.process.poll() is not None:
                assert worker.process.returncode == 1, worker.log_tail()
                restarts += 1
                reasons.append(next((line for line in reversed(worker.log_tail(200).splitlines())
                                     if "stopping" in line or "Error" in line), "?"))
                worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
            time.sleep(0.25)
        assert worker.terminate(timeout=60) == 0, worker.log_tail()
    finally:
        worker.close()

    seen = ids_of(read_all(broker.bootstrap_servers, kafka.output_topic))
    assert set(seen) == {r.id for r in requests}, "no id is missing after the outage"
    duplicates = sum(seen.values()) - len(seen)
    print(f"broker outage, {delivery}: {duplicates} duplicates, {restarts} restarts")
    assert restarts <= 2, f"one exit per client failure at most: {reasons}"
    if delivery == "exactly-once":
        assert duplicates == 0, "a read_committed reader sees each input once, outage or not"
