"""The stream's view of the work it feeds the image path: every input is a polled Kafka record.

polled_work() makes the Work of a consumed message, once the loop knows its partition is held; the
two accessors read it back where only the stream's own work can arrive (the dead letters, the output,
the emitters), and say so if anything else does.
"""

from __future__ import annotations

import logging

from confluent_kafka import Message

from worker.formats.positions import KafkaPosition
from worker.formats.records import Headers, PolledRecord
from worker.images.work import Work
from worker.kafka.boundary import read_headers

log = logging.getLogger(__name__)


def polled_work(message: Message, *, generation: int) -> Work:
    """The Work of a consumed record of a held partition; `generation` is its tracker's (offsets.py)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    timestamp_type, timestamp = message.timestamp()
    return Work(
        position=KafkaPosition(topic=topic, partition=partition, offset=offset),
        polled=PolledRecord(
            generation=generation,
            key=message.key(),
            value=message.value(),
            headers=_headers(message),
            timestamp_ms=timestamp if timestamp_type else None,
        ),
    )


def kafka_position(work: Work) -> KafkaPosition:
    position = work.position
    assert isinstance(position, KafkaPosition), "the stream only handles Kafka records"
    return position


def polled(work: Work) -> PolledRecord:
    record = work.polled
    assert record is not None, "the stream only handles polled records"
    return record


def _headers(message: Message) -> Headers:
    """The record's headers; none when the client cannot decode them (e.g. a name that is not UTF-8)."""
    headers = read_headers(message)
    if headers is None:
        log.warning("headers of %s [%s] @%s unreadable", message.topic(), message.partition(), message.offset())
        return []
    return headers
