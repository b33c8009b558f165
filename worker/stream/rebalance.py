"""Partitions coming and going: assignment, revocation, loss, and the rewind after an abort.

- assigned: a new generation per partition (offsets.py), so work polled under an earlier assignment
  can never move the watermark of this one; assigned while paused means paused at once.
- revoked: finish what was delivered, commit it, and drop the rest for the next owner.
- lost: another member may own them already, so commit nothing, just drop.
- rewind (exactly-once, after an abort): drop all in-flight work and seek every partition back to
  its committed offset.
- retire (the consumer is being replaced, clients.py): its callbacks do nothing more; drop all.
Dropping means: the tracker forgets the partition, the emitter its held records, the outage gate its
parked records, and the pause flag is cleared (librdkafka keeps the flag of a partition this
consumer paused, lost and got back: it would never be fetched again).
"""

from __future__ import annotations

import logging

from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

from worker.errors import ClientFatal, WorkerError
from worker.formats.positions import Partition
from worker.kafka.boundary import kafka_call
from worker.metrics import Metrics
from worker.stream.backpressure import Backpressure
from worker.stream.delivery.acked import Committer
from worker.stream.offsets import OffsetTracker
from worker.stream.outage import OutageGate
from worker.stream.produce import Emitter, Outbox

log = logging.getLogger(__name__)
_REWIND_SECONDS = 10.0


class Rebalancer:
    def __init__(
        self, *, consumer: Consumer, outbox: Outbox, tracker: OffsetTracker, emitter: Emitter, committer: Committer,
        backpressure: Backpressure, outages: OutageGate, metrics: Metrics, cooperative: bool, flush_seconds: float,
    ) -> None:
        self._consumer = consumer
        self._outbox = outbox
        self._tracker = tracker
        self._emitter = emitter
        self._committer = committer
        self._backpressure = backpressure
        self._outages = outages
        self._metrics = metrics
        self._cooperative = cooperative
        self._flush_seconds = flush_seconds
        self.assigned: set[Partition] = set()
        self._leaving = False
        self._retired = False

    def retire(self) -> None:
        """This consumer is being replaced (clients.py): from now on its callbacks do nothing, and all
        in-flight work is dropped without a call to it; the next consumer redoes it from the commit."""
        self._retired = True
        self._emitter.forget()
        self._outages.forget()
        for key in self.assigned:
            self._tracker.revoke(key)
        self.assigned.clear()

    def leaving(self) -> None:
        """The worker is closing its consumer: the revoke that follows is not a rebalance, and what
        could be committed was, by the shutdown (loop.py); it only drops the partitions."""
        self._leaving = True

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._retired:
            return
        self._metrics.rebalances.labels(kind="assigned").inc()
        for tp in partitions:
            key = Partition(tp.topic, tp.partition)
            self._tracker.assign(key)
            self.assigned.add(key)
        if partitions and self._backpressure.paused:  # assign now, so they are paused before any fetch
            if self._cooperative:
                consumer.incremental_assign(partitions)
            else:
                consumer.assign(partitions)
            consumer.pause(partitions)
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._retired:
            return
        if not self._leaving:
            self._metrics.rebalances.labels(kind="revoked").inc()
            self._outbox.flush(self._flush_seconds)
            try:
                self._committer.commit(force=True)
            except WorkerError as exc:  # the next owner redoes what this could not commit
                log.warning("commit on revoke failed: %s", exc)
        self._forget(partitions)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._retired:
            return
        self._metrics.rebalances.labels(kind="lost").inc()
        self._forget(partitions)

    def rewind(self) -> None:
        """After an aborted transaction: every in-flight record is redone from the committed offsets.
        If the committed offsets cannot be read, this consumer is given up (ClientFatal): its
        replacement starts from them (clients.py)."""
        self._emitter.forget()
        self._outages.forget()
        assigned = [TopicPartition(t, p) for t, p in self.assigned]
        for tp in self.assigned:
            self._tracker.assign(tp)  # a new generation: in-flight results are now stale
        try:
            committed = kafka_call(lambda: self._consumer.committed(assigned, timeout=_REWIND_SECONDS),
                                   what="committed") or []
            for position in committed:
                self._seek(position)
        except WorkerError as exc:
            raise ClientFatal(f"cannot rewind to the committed offsets after an abort: {exc}") from exc

    def _seek(self, position: TopicPartition) -> None:
        offset = position.offset
        if offset == OFFSET_INVALID:  # nothing committed yet: back to the start of the partition
            low_high = kafka_call(lambda: self._consumer.get_watermark_offsets(position, timeout=_REWIND_SECONDS),
                                  what="get_watermark_offsets")
            offset = low_high[0] if low_high else 0
        target = TopicPartition(position.topic, position.partition, offset)
        kafka_call(lambda: self._consumer.seek(target), what="seek")

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self._backpressure.release(partitions)
        for tp in partitions:
            key = Partition(tp.topic, tp.partition)
            self._tracker.revoke(key)
            self._emitter.forget(key)
            self._outages.forget(key)
            self.assigned.discard(key)
        log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in partitions))
