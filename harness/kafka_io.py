"""Kafka helpers shared by the tests, the demo and the benchmarks: produce the input, read the
output back, and compare a group's committed offsets with the end of its input.

Each helper closes its client before it returns, and every client logs through Python logging
(like the worker's, see worker/logs.py), so none prints librdkafka's lines to stderr: not while
it is used, nor after the broker has stopped.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from worker.formats.messages import ImageRequest, encode_request_json

_LOG = logging.getLogger("harness.librdkafka")


def _client(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": _LOG}


def produce(bootstrap: str, topic: str, values: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce (key, value) pairs and wait for every acknowledgement; returns how many."""
    producer = Producer(_client(bootstrap) | {"linger.ms": 5, "enable.idempotence": True})
    try:
        count = 0
        for key, value in values:
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
        if producer.flush(60) != 0:
            raise RuntimeError("input records were not all acknowledged")
        return count
    finally:
        producer.purge()  # a no-op after a full flush; otherwise close() would wait out message.timeout.ms
        producer.close()


def produce_requests(bootstrap: str, topic: str, requests: Iterable[ImageRequest]) -> int:
    return produce(bootstrap, topic, ((r.id.encode(), encode_request_json(r)) for r in requests))


def read_all(
    bootstrap: str, topic: str, *, expect: int | None = None, timeout: float = 60.0, read_committed: bool = True
) -> list[Message]:
    """Every record of `topic` from the beginning: until `expect` are read, or until the end offsets
    are reached when `expect` is None. Raises TimeoutError if they do not arrive in time."""
    consumer = Consumer(
        _client(bootstrap)
        | {
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    try:
        partitions = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
        consumer.assign([TopicPartition(topic, p.partition, 0) for p in partitions])
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions}
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            if expect is not None and len(messages) >= expect:
                return messages
            if expect is None:  # transaction markers occupy offsets too: trust the consumer's position
                positions = {tp.partition: tp.offset for tp in consumer.position(partitions)}
                if all(ends[p] == 0 or positions[p] >= ends[p] for p in ends):
                    return messages
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(messages)} records of {topic}, expected {expect or ends}")
            messages.extend(m for m in consumer.consume(500, 0.2) if m.error() is None)
    finally:
        consumer.close()


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10)
    return sorted(metadata.topics[topic].partitions)


def written_count(bootstrap: str, topic: str) -> int:
    """Records written to `topic` so far, committed or not (transaction markers included)."""
    consumer = Consumer(_client(bootstrap) | {"group.id": f"probe-{uuid.uuid4()}"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in _partitions(consumer, topic)
        )
    finally:
        consumer.close()


def committed_and_end_offsets(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offset and the end offset of each partition of `topic`."""
    consumer = Consumer(_client(bootstrap) | {"group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        return committed, ends
    finally:
        consumer.close()


def wait_until_committed(bootstrap: str, group: str, topic: str, *, timeout: float = 120.0) -> dict[int, int]:
    """Wait until the group has committed the end offset of every partition of `topic` (an empty
    partition, end offset 0, has nothing to commit: no offset counts as its end)."""
    deadline = time.monotonic() + timeout
    committed: dict[int, int] = {}
    ends: dict[int, int] = {}
    while True:
        try:
            committed, ends = committed_and_end_offsets(bootstrap, group, topic)
            if all(committed.get(p, -1) == end or (end == 0 and committed.get(p, -1) < 0) for p, end in ends.items()):
                return committed
        except KafkaException:
            pass  # the group coordinator may be moving (broker restarts)
        if time.monotonic() > deadline:
            raise TimeoutError(f"group {group} committed {committed}, end offsets {ends}")
        time.sleep(0.25)
