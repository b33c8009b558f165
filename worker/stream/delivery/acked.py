"""Committing what finished: the Committer contract, and the at-least-once committer.

Two committers, one contract, chosen once in build.py by the delivery setting:
- StoredOffsetsCommitter (at-least-once, here): finished offsets go to store_offsets every turn and
  librdkafka's auto-commit sends them in the background; on revoke and at close they are committed
  synchronously.
- TransactionalCommitter (exactly-once, transactional.py): outputs and offsets in one transaction.

Both commit offsets only below the dead-letter streak's floors (deadletter.py) and count offsets as
committed only once the commit (or store) succeeded (OffsetTracker.confirm).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from confluent_kafka import Consumer, TopicPartition

from worker.formats.positions import Partition
from worker.kafka.boundary import kafka_call
from worker.stream.offsets import OffsetTracker

log = logging.getLogger(__name__)
Floors = Mapping[Partition, int]  # the dead letters' floors (deadletter.py), as a live read-only view


class Committer(Protocol):
    def start(self) -> None:
        """Before the first poll."""

    def commit(self, *, force: bool = False) -> bool:
        """Commit what finished (every turn; `force` on revoke and at close). False when the work
        since the last commit was lost and must be redone from the committed offsets (the runtime
        then rewinds); True otherwise."""

    def close(self) -> None:
        """After the last commit; must not raise (the worker is stopping, maybe for another error)."""


class StoredOffsetsCommitter:
    def __init__(self, *, consumer: Consumer, tracker: OffsetTracker, floors: Floors) -> None:
        self._consumer = consumer
        self._tracker = tracker
        self._floors = floors

    def start(self) -> None:
        return None

    def commit(self, *, force: bool = False) -> bool:
        offsets = self._tracker.committable(self._floors)
        if offsets:
            # _STATE: a partition is no longer ours (librdkafka #3774): that work is someone else's now.
            kafka_call(lambda: self._consumer.store_offsets(offsets=as_topic_partitions(offsets)),
                       what="store_offsets", ignore=("_STATE",))
            self._tracker.confirm(offsets)
        if force:
            kafka_call(lambda: self._consumer.commit(asynchronous=False), what="commit", ignore=("_NO_OFFSET",))
        return True

    def close(self) -> None:
        return None


def as_topic_partitions(offsets: Mapping[Partition, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]

