"""The stream's view of the work it feeds the image path: every input is a polled Kafka record."""

from __future__ import annotations

from worker.formats.positions import KafkaPosition
from worker.formats.records import PolledRecord
from worker.images.work import Work


def kafka_position(work: Work) -> KafkaPosition:
    position = work.position
    assert isinstance(position, KafkaPosition), "the stream only handles Kafka records"
    return position


def polled(work: Work) -> PolledRecord:
    record = work.polled
    assert record is not None, "the stream only handles polled records"
    return record
