"""The broker goes away mid-stream and comes back: nothing is lost, and the worker never exits.

One worker per delivery mode, side by side on the same broker, through the same outage. Two client
failures can happen as the broker returns: a static member whose session timed out during the
outage is fenced by its own rejoin (a fatal librdkafka error), and, exactly-once,
send_offsets_to_transaction can hang for good after its group coordinator restarts (librdkafka
#5456, #5511; counted as wedged 5 s past kafka.transaction_call_seconds, 5 s here against the
default 10). Either way the worker replaces its Kafka clients in the process
(worker/stream/clients.py) and resumes from the commit: every id arrives, and a read_committed
reader sees each input exactly once in exactly-once mode.
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

pytestmark = pytest.mark.slow(minutes=1.5)

RECORDS = 1200


def test_a_broker_stopped_and_restarted_mid_stream_loses_nothing_and_never_ends_the_worker(
    private_kafka_broker: KafkaBroker,
    s3_server: S3Server,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    broker = private_kafka_broker
    bucket, keys = photo_bucket
    requests = requests_for(bucket, keys, RECORDS)
    workers: dict[str, tuple[Settings, WorkerProcess]] = {}
    try:
        for delivery in ("at-least-once", "exactly-once"):
            settings = make_settings(
                bucket,
                bootstrap=broker.bootstrap_servers,
                kafka={"group_instance_id": "worker-0", "consumer_config": {"session.timeout.ms": "6000"},
                       "transaction_call_seconds": 5},
                # A small in-flight bound keeps the consumer paused much of the time, so that the outage
                # often lands while it is paused: partitions it gets back must not stay paused.
                pipeline={"delivery": delivery, "max_in_flight": 100},
                model={"decode_journal_dir": tmp_path / delivery},  # each pod has its own
            )
            kafka = settings.kafka
            for topic, partitions in ((kafka.input_topic, 3), (kafka.output_topic, 2), (kafka.dead_letter_topic, 1)):
                broker.create_topic(topic, partitions)
            produce_requests(broker.bootstrap_servers, kafka.input_topic, requests)
            env = settings_env(settings) | s3_server.env()
            workers[delivery] = settings, WorkerProcess(env, log_path=tmp_path / f"{delivery}.log").start()

        def check_alive(when: str) -> None:
            for delivery, (_, worker) in workers.items():
                assert worker.process is not None
                assert worker.process.poll() is None, f"the {delivery} worker exited {when}\n{worker.log_tail()}"

        deadline = time.monotonic() + 60
        for settings, worker in workers.values():
            while written_count(broker.bootstrap_servers, settings.kafka.output_topic) < 200:
                check_alive("before the outage")
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.05)
        broker.stop()
        time.sleep(3)  # long enough for every connection to fail and the clients to retry
        broker.start()
        deadline = time.monotonic() + 240
        for settings, worker in workers.values():
            kafka = settings.kafka
            while True:
                committed, ends = committed_and_end_offsets(broker.bootstrap_servers, kafka.group_id, kafka.input_topic)
                if committed == ends:
                    break
                check_alive("after the outage")
                assert time.monotonic() < deadline, f"committed {committed} of {ends}\n{worker.log_tail()}"
                time.sleep(0.25)
        for _, worker in workers.values():
            assert worker.terminate(timeout=60) == 0, worker.log_tail()
    finally:
        for _, worker in workers.values():
            worker.close()

    for delivery, (settings, worker) in workers.items():
        kafka = settings.kafka
        seen = ids_of(read_all(broker.bootstrap_servers, kafka.output_topic))
        assert set(seen) == {r.id for r in requests}, f"{delivery}: no id is missing after the outage"
        duplicates = sum(seen.values()) - len(seen)
        replaced = worker.log_path.read_text(errors="replace").count("replacing the Kafka clients")
        print(f"broker outage, {delivery}: {duplicates} duplicates, {replaced} client replacements")
        if delivery == "exactly-once":
            assert duplicates == 0, "a read_committed reader sees each input once, outage or not"
        assert read_all(broker.bootstrap_servers, kafka.dead_letter_topic) == [], f"{delivery}: nothing dead-lettered"
