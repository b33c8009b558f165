"""Producing to Kafka: the outbox every record leaves through, and the two ways of emitting.

Commit order, spelled out:
- at-least-once (AckedEmitter): a record is sent as soon as it is ready; it is finished (its offset
  may be stored and committed) only when the broker acknowledged it. The delivery callbacks that
  say so fire inside producer.poll()/flush(), which the runtime calls every loop.
- exactly-once (InOrderEmitter): records are sent into the open transaction in offset order per
  partition, and each is finished as it is sent; the transaction then commits exactly those
  outputs together with the offsets just past them. Out-of-order sends would let a transaction
  hold the output of offset 7 while committing offset 5, and a crash would replay 7.

A record over the producer's message.max.bytes would make produce() raise synchronously, in the
middle of the loop; so the size is checked before (`fits`), and a record that does not fit is the
record's failure (OutputTooLarge), never the loop's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import Producer

from worker.formats.positions import Partition
from worker.formats.records import OutRecord
from worker.images.work import Work
from worker.kafka.boundary import kafka_call, translate
from worker.stream.inputs import kafka_position, polled
from worker.stream.offsets import OffsetTracker

# librdkafka's per-record framing (lengths, attributes, header counts) and the batch header, with room.
_RECORD_OVERHEAD_BYTES = 1024


class Outbox:
    """Produces records; `on_ack(error)` runs when the broker answered. Waits out a full queue."""

    def __init__(self, producer: Producer, *, max_message_bytes: int) -> None:
        self.producer = producer
        self.max_record_bytes = max_message_bytes - _RECORD_OVERHEAD_BYTES
        self.produced = 0  # records handed to librdkafka since start (the transaction committer reads it)

    def send(self, record: OutRecord, *, on_ack: Callable[[Exception | None], None] | None = None) -> None:
        kwargs: dict[str, Any] = {"timestamp": record.timestamp_ms} if record.timestamp_ms else {}
        if on_ack is not None:
            what = f"record to {record.topic}"
            kwargs["on_delivery"] = lambda err, _msg: on_ack(None if err is None else translate(err, what=what))
        while True:
            try:
                kafka_call(lambda: self.producer.produce(
                    record.topic, record.value, record.key, headers=record.headers, **kwargs), what="produce")
                self.produced += 1
                return
            except BufferError:  # librdkafka's queue is full: serve callbacks until there is room
                self.producer.poll(0.05)

    def poll(self) -> None:
        self.producer.poll(0)

    def flush(self, timeout: float) -> int:
        """Wait for every acknowledgement; returns how many records are still unacknowledged."""
        remaining: int = self.producer.flush(timeout)
        return remaining

    def close(self) -> None:
        """Drop what is still unacknowledged (its offsets were not committed: it is redone), then close.
        close() alone would wait forever for records that an unreachable broker never acknowledges."""
        kafka_call(self.producer.purge, what="purge")
        kafka_call(self.producer.close, what="close")


OnDone = Callable[[Work], None]
OnRefused = Callable[[Work, Exception], None]


class Emitter(Protocol):
    def emit(self, work: Work, record: OutRecord | None, *, on_done: OnDone, on_refused: OnRefused) -> None:
        """Send `record` for `work` (None: nothing to send, just finish it)."""

    def forget(self, tp: Partition | None = None) -> None:
        """Drop held records of a revoked partition (all partitions when None)."""


class AckedEmitter:
    """At-least-once: send now, finish on acknowledgement."""

    def __init__(self, *, outbox: Outbox, tracker: OffsetTracker) -> None:
        self._outbox = outbox
        self._tracker = tracker

    def emit(self, work: Work, record: OutRecord | None, *, on_done: OnDone, on_refused: OnRefused) -> None:
        if not self._tracker.is_current(kafka_position(work).tp, polled(work).generation):
            return  # its partition was revoked: the new owner redoes it
        if record is None:
            self._finish(work, on_done)
            return

        def acked(err: Exception | None) -> None:
            if err is None:
                self._finish(work, on_done)
            else:
                on_refused(work, err)

        self._outbox.send(record, on_ack=acked)

    def _finish(self, work: Work, on_done: OnDone) -> None:
        position, generation = kafka_position(work), polled(work).generation
        if self._tracker.is_current(position.tp, generation):
            self._tracker.finish(position.tp, position.offset, generation)
            on_done(work)

    def forget(self, tp: Partition | None = None) -> None:
        return None  # nothing is held: in-flight sends finish or go stale by generation


class InOrderEmitter:
    """Exactly-once: hold each ready record until every earlier offset of its partition is ready,
    then send them into the open transaction in offset order."""

    def __init__(self, *, outbox: Outbox, tracker: OffsetTracker) -> None:
        self._outbox = outbox
        self._tracker = tracker
        self._held: dict[Partition, dict[int, tuple[Work, OutRecord | None, OnDone]]] = {}

    def emit(self, work: Work, record: OutRecord | None, *, on_done: OnDone, on_refused: OnRefused) -> None:
        position, generation = kafka_position(work), polled(work).generation
        if not self._tracker.is_current(position.tp, generation):
            return  # polled under an earlier assignment, or before a rewind: replayed from the commit
        held = self._held.setdefault(position.tp, {})
        held[position.offset] = (work, record, on_done)
        for offset in self._tracker.finish(position.tp, position.offset, generation):
            ready_work, ready_record, ready_done = held.pop(offset)
            if ready_record is not None:
                self._outbox.send(ready_record)  # failures surface in commit_transaction
            ready_done(ready_work)

    def forget(self, tp: Partition | None = None) -> None:
        if tp is None:
            self._held.clear()
        else:
            self._held.pop(tp, None)

