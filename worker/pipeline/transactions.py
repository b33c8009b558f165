"""Exactly-once commits: outputs and input offsets in one Kafka transaction.

librdkafka's send_offsets_to_transaction can block past its timeout, forever, when the group
coordinator went away and came back (librdkafka #5456 and #5511: a broker restart is enough). A
blocked call would stop the poll loop for good, so every transactional call runs on a daemon
thread with a deadline; when one does not return, the worker raises ClientWedged and exits, and
its successor (same transactional.id) fences the open transaction and resumes from the commit.
Nothing is lost or doubled: the open transaction is aborted by the broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaException, Producer, TopicPartition

from worker.errors import FatalError
from worker.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
_ATTEMPTS = 10  # retriable failures (a coordinator moving, a timeout) before giving up
_CALL_SECONDS = 10.0  # what librdkafka is asked to wait
_DEADLINE_SECONDS = 30.0  # what we wait before calling librdkafka wedged


class ClientWedged(FatalError):
    """A librdkafka call did not return by its deadline; the client cannot be closed cleanly."""


def call_with_deadline(fn: Callable[[], T], *, what: str, seconds: float = _DEADLINE_SECONDS) -> T:
    outcome: list[T | BaseException] = []
    thread = threading.Thread(target=lambda: outcome.append(_capture(fn)), name=f"kafka-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise ClientWedged(f"librdkafka {what} did not return within {seconds:.0f} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _capture(fn: Callable[[], T]) -> T | BaseException:
    try:
        return fn()
    except BaseException as exc:  # handed back to the calling thread
        return exc


class TransactionCommitter:
    def __init__(self, *, producer: Producer, metrics: Metrics) -> None:
        self._producer = producer
        self._metrics = metrics

    def start(self) -> None:
        call_with_deadline(lambda: self._producer.init_transactions(_CALL_SECONDS * 3), what="init_transactions")
        self._producer.begin_transaction()

    def commit(self, offsets: list[TopicPartition], group_metadata: object) -> bool:
        """Commit the open transaction with `offsets`, then begin the next one. False when it had
        to be aborted: the caller must rewind to the committed offsets."""
        producer = self._producer
        committed = True
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                if offsets:
                    call_with_deadline(
                        lambda: producer.send_offsets_to_transaction(offsets, group_metadata, _CALL_SECONDS),
                        what="send_offsets_to_transaction",
                    )
                call_with_deadline(lambda: producer.commit_transaction(_CALL_SECONDS), what="commit_transaction")
                self._metrics.transactions.labels(outcome="committed").inc()
                break
            except KafkaException as exc:
                error = exc.args[0]
                if error.retriable() and attempt < _ATTEMPTS:
                    log.warning("transaction commit failed (attempt %d), retrying: %s", attempt, error.str())
                    continue
                if not error.txn_requires_abort():
                    raise FatalError(f"transaction failed: {error.str()}") from exc
                log.warning("transaction aborted, rewinding to the committed offsets: %s", error.str())
                call_with_deadline(lambda: producer.abort_transaction(_CALL_SECONDS), what="abort_transaction")
                self._metrics.transactions.labels(outcome="aborted").inc()
                committed = False
                break
        producer.begin_transaction()
        return committed

    def abort_open(self) -> None:
        """At shutdown: abort the (empty) transaction begun after the last commit."""
        call_with_deadline(lambda: self._producer.abort_transaction(_CALL_SECONDS), what="abort_transaction")
