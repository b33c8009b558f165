"""Producing to Kafka: the outbox every record leaves through, and the two ways of emitting.

Commit order, spelled out:
- at-least-once (AckedEmitter): a record is sent as soon as it is ready; it is finished (its offset
  may be stored and committed) only when the broker acknowledged it. The delivery callbacks that
  say so fire inside producer.poll()/flush(), which the runtime calls every loop.
- exactly-once (InOrderEmitter): records are sent into the open transaction in offset order per
  partition, and each is finished as it is sent; the transaction then commits exactly those
  outputs together with the offsets just past them. Out-of-order sends would let a transaction
  hold the output of offset 7 while committing offset 5, and a crash would replay 7.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, Producer

from worker.pipeline.offsets import OffsetTracker
from worker.pipeline.work import Work

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None = None


class Outbox:
    """Produces records; `on_ack(error)` runs when the broker answered. Waits out a full queue."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def send(self, record: OutRecord, *, on_ack: Callable[[KafkaError | None], None] | None = None) -> None:
        kwargs: dict[str, Any] = {"timestamp": record.timestamp_ms} if record.timestamp_ms else {}
        if on_ack is not None:
            kwargs["on_delivery"] = lambda err, _msg: on_ack(err)
        while True:
            try:
                self.producer.produce(record.topic, record.value, record.key, headers=record.headers, **kwargs)
                return
            except BufferError:  # librdkafka's queue is full: serve callbacks until there is room
                self.producer.poll(0.05)

    def poll(self) -> None:
        self.producer.poll(0)

    def flush(self, timeout: float) -> int:
        """Wait for every acknowledgement; returns how many records are still unacknowledged."""
        remaining: int = self.producer.flush(timeout)
        return remaining


OnDone = Callable[[Work], None]
OnRefused = Callable[[Work, KafkaError], None]


class Emitter(Protocol):
    def emit(self, work: Work, record: OutRecord | None, *, on_done: OnDone, on_refused: OnRefused) -> None:
        """Send `record` for `work` (None: nothing to send, just finish it)."""

    def forget(self, tp: tuple[str, int] | None = None) -> None:
        """Drop held records of a revoked partition (all partitions when None)."""


class AckedEmitter:
    """At-least-once: send now, finish on acknowledgement."""

    def __init__(self, *, outbox: Outbox, tracker: OffsetTracker) -> None:
        self._outbox = outbox
        self._tracker = tracker

    def emit(self, work: Work, record: OutRecord | None, *, on_done: OnDone, on_refused: OnRefused) -> None:
        if not self._tracker.is_current(work.tp, work.generation):
            return  # its partition was revoked: the new owner redoes it
        if record is None:
            self._finish(work, on_done)
            return

        def acked(err: KafkaError | None) -> None:
            if err is None:
                self._finish(work, on_done)
            else:
                on_refused(work, err)

        self._outbox.send(record, on_ack=acked)

    def _finish(self, work: Work, on_done: OnDone) -> None:
        if self._tracker.is_current(work.tp, work.generation):
            self._tracker.finish(work.tp, work.source.offset, work.generation)
            on_done(work)

    def forget(self, tp: tuple[str, int] | None = None) -> None:
        return None  # nothing is held: in-flight sends finish or go stale by generation


class InOrderEmitter:
    """Exactly-once: hold each ready record until every earlier offset of its partition is ready,
    then send them into the open transaction in offset order."""

    def __init__(self, *, outbox: Outbox, tracker: OffsetTracker) -> None:
        self._outbox = outbox
        self._tracker = tracker
        self._held: dict[tuple[str, int], dict[int, tuple[Work, OutRecord | None, OnDone]]] = {}
        self.sent = 0  # records written since the runtime last committed a transaction

    def emit(self, work: Work, record: OutRecord | None, *, on_done: OnDone, on_refused: OnRefused) -> None:
        if not self._tracker.is_current(work.tp, work.generation):
            return  # polled under an earlier assignment, or before a rewind: replayed from the commit
        held = self._held.setdefault(work.tp, {})
        held[work.source.offset] = (work, record, on_done)
        for offset in self._tracker.finish(work.tp, work.source.offset, work.generation):
            ready_work, ready_record, ready_done = held.pop(offset)
            if ready_record is not None:
                self._outbox.send(ready_record)  # failures surface in commit_transaction
                self.sent += 1
            ready_done(ready_work)

    def forget(self, tp: tuple[str, int] | None = None) -> None:
        if tp is None:
            self._held.clear()
        else:
            self._held.pop(tp, None)
