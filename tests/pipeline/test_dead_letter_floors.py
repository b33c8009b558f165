"""The dead-letter streak's floors: the dead letters move them, the committers only read them."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import BadMessage
from worker.formats.positions import KafkaPosition, Partition
from worker.formats.records import OutRecord, PolledRecord
from worker.images.work import Work
from worker.metrics import Metrics
from worker.stream.deadletter import DeadLetters
from worker.stream.delivery.acked import StoredOffsetsCommitter
from worker.stream.offsets import OffsetTracker
from worker.stream.produce import OnDone, OnRefused
from worker.stream.stop import Stop

TP = Partition("images", 0)


class AcceptingEmitter:
    """Every dead letter acknowledged at once."""

    def emit(self, work: Work, record: OutRecord | None, *, on_done: OnDone, on_refused: OnRefused) -> None:
        on_done(work)

    def forget(self, tp: Partition | None = None) -> None:
        return None


class StoringConsumer:
    def __init__(self) -> None:
        self.stored: list[Any] = []

    def store_offsets(self, *, offsets: list[Any]) -> None:
        self.stored.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def commit(self, *, asynchronous: bool) -> None:
        return None


def bad_record(offset: int) -> Work:
    return Work(position=KafkaPosition(*TP, offset),
                polled=PolledRecord(generation=0, key=None, value=b"{", headers=[], timestamp_ms=None))


def dead_letters() -> DeadLetters:
    return DeadLetters(emitter=AcceptingEmitter(), topic="dlq", policy="dead-letter", max_consecutive=10,
                           max_bytes=1_000_000, worker_id="w", metrics=Metrics(), stop=Stop())


def test_committers_see_the_floors_move_but_cannot_modify_them() -> None:
    letters = dead_letters()
    tracker = OffsetTracker()
    generation = tracker.assign(TP)
    consumer = StoringConsumer()
    committer = StoredOffsetsCommitter(consumer=consumer, tracker=tracker, floors=letters.floors)  # type: ignore[arg-type]
    for offset in range(4):
        tracker.add(TP, offset)
    letters.fail(bad_record(1), BadMessage("broken"), stage="decode-message")
    for offset in range(4):
        tracker.finish(TP, offset, generation)

    assert committer.commit()
    assert consumer.stored == [{TP: 1}], "capped at the streak's first failure, which the committer saw"
    with pytest.raises(TypeError):
        committer._floors[TP] = 4  # type: ignore[index]
    with pytest.raises(AttributeError):
        committer._floors.clear()  # type: ignore[attr-defined]
    assert letters.floors == {TP: 1}

    letters.record_success()
    assert committer.commit()
    assert consumer.stored[-1] == {TP: 4}, "the success lifted the floor, as the committer sees it"
