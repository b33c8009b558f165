"""Exactly-once commits: outputs and input offsets in one Kafka transaction per turn of the loop.

Commit order, as numbered steps (each under a deadline, worker/kafka/boundary.py):
1. send_offsets_to_transaction(offsets just past the outputs written, capped at the streak floors);
2. commit_transaction();
3. only now count the offsets as committed (OffsetTracker.confirm), and begin the next transaction.

A step that times out is retried as the same call: librdkafka keeps a timed-out commit_transaction
(or send_offsets) as the current, resumable call, and calling anything else fails at once with a
conflict: sending the offsets again after a timed-out commit would fail every attempt, and the
worker would exit. An abortable error aborts the transaction; the runtime then rewinds to the
committed offsets and redoes the work. A fenced producer is fatal to this producer, and a call that
never returns leaves it wedged for good: either way it is replaced with its consumer (clients.py),
whose new producer fences this one. A wedged committer answers every later call with the same
ClientWedged: its call is still running, and calling anything else would only conflict with it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, Producer

from worker.config.kafka import WEDGE_GRACE_SECONDS
from worker.errors import ClientFatal, ClientWedged, FatalError, KafkaUnavailable, TransactionAborted, WorkerError
from worker.formats.positions import Partition
from worker.kafka.boundary import kafka_call
from worker.metrics import Metrics
from worker.stream.delivery.acked import Floors, as_topic_partitions
from worker.stream.offsets import OffsetTracker
from worker.stream.produce import Outbox

log = logging.getLogger(__name__)
_ATTEMPTS = 10  # timeouts of one commit before giving up (the process restarts and fences)
_INIT_SECONDS = 30.0
_INIT_ATTEMPTS = 4  # init_seconds that pass without an init (the coordinator unavailable) before giving up
# init_transactions is asked again after each slice (librdkafka resumes a timed-out one): a blocked call
# serves none of the producer's error callbacks, so a login the brokers refuse would be seen only late.
_INIT_SLICE_SECONDS = 2.0


class TransactionalCommitter:
    def __init__(
        self, *, producer: Producer, consumer: Consumer, outbox: Outbox, tracker: OffsetTracker, floors: Floors,
        metrics: Metrics, call_seconds: float, init_seconds: float = _INIT_SECONDS,
        deadline_margin: float | None = None, refused: Callable[[], FatalError | None] = lambda: None,
    ) -> None:
        """`call_seconds`: what librdkafka is asked to wait in each call (kafka.transaction_call_seconds);
        a call that has not returned `deadline_margin` (by default WEDGE_GRACE_SECONDS) past that counts as wedged.
        `refused`: the refused login or handshake to stop with, once it has lasted its bound (KafkaHealth)."""
        self._producer = producer
        self._consumer = consumer
        self._outbox = outbox
        self._tracker = tracker
        self._floors = floors
        self._metrics = metrics
        self._committed_produced = 0  # outbox.produced at the last commit
        self._call_seconds = call_seconds
        self._init_seconds = init_seconds
        self._margin = WEDGE_GRACE_SECONDS if deadline_margin is None else deadline_margin
        self._refused = refused
        self._wedged: ClientWedged | None = None

    def start(self) -> None:
        """1. init_transactions (which fences an earlier producer of the same id and aborts its open
        transaction), asked again every few seconds while it times out, for up to _INIT_ATTEMPTS times
        `init_seconds`: the transaction coordinator may be moving to another broker. Between the tries
        the producer serves its error callbacks, and a refused login or handshake past its bound stops
        the start. 2. begin_transaction."""
        self._committed_produced = self._outbox.produced
        started = time.monotonic()
        deadline, warned = started + _INIT_ATTEMPTS * self._init_seconds, 0
        while True:
            wait = max(0.1, min(_INIT_SLICE_SECONDS, deadline - time.monotonic()))
            try:
                self._call(functools.partial(self._producer.init_transactions, wait), "init_transactions", wait)
                break
            except KafkaUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                self._producer.poll(0)
                refusal = self._refused()
                if refusal is not None:
                    raise refusal from None
                periods = int((time.monotonic() - started) // self._init_seconds)
                if periods > warned:
                    warned = periods
                    log.warning("init_transactions has not completed in %.0f s, still trying: %s",
                                time.monotonic() - started, exc)
        self._call(self._producer.begin_transaction, "begin_transaction")

    def commit(self, *, force: bool = False) -> bool:
        offsets = self._tracker.committable(self._floors)
        if not offsets and self._outbox.produced == self._committed_produced and not force:
            return True
        committed = self._commit(offsets)
        if committed:
            self._tracker.confirm(offsets)
        self._committed_produced = self._outbox.produced
        self._call(self._producer.begin_transaction, "begin_transaction")
        return committed

    def _commit(self, offsets: dict[Partition, int]) -> bool:
        producer, seconds = self._producer, self._call_seconds
        offsets_sent = not offsets
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                if not offsets_sent:  # step 1
                    self._call(lambda: producer.send_offsets_to_transaction(
                        as_topic_partitions(offsets), self._consumer.consumer_group_metadata(), seconds),
                        "send_offsets_to_transaction")
                    offsets_sent = True
                self._call(lambda: producer.commit_transaction(seconds), "commit_transaction")  # step 2
                self._metrics.transactions.labels(outcome="committed").inc()
                return True
            except KafkaUnavailable as exc:  # resumable: the same call again
                log.warning("transaction commit attempt %d timed out, resuming it: %s", attempt, exc)
            except TransactionAborted as exc:
                log.warning("transaction aborted, rewinding to the committed offsets: %s", exc)
                self._abort()
                self._metrics.transactions.labels(outcome="aborted").inc()
                return False
        # This producer cannot finish its transaction: its replacement (the same transactional.id)
        # fences it and aborts what it left open (clients.py).
        raise ClientFatal(f"transaction did not commit in {_ATTEMPTS} attempts of {seconds:.0f} s")

    def _abort(self) -> None:
        """abort_transaction, resumed as the same call while it times out (the coordinator may be
        loading after a failover): any other call meanwhile would fail as a conflict with it."""
        producer, seconds = self._producer, self._call_seconds
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                self._call(lambda: producer.abort_transaction(seconds), "abort_transaction")
                return
            except KafkaUnavailable as exc:
                log.warning("transaction abort attempt %d timed out, resuming it: %s", attempt, exc)
        raise ClientFatal(f"transaction did not abort in {_ATTEMPTS} attempts of {seconds:.0f} s")

    def close(self) -> None:
        """At shutdown: abort the transaction begun after the last commit. A fenced or broken client
        cannot, and the error that stopped the worker is the one to report: log this one."""
        try:
            self._call(lambda: self._producer.abort_transaction(self._call_seconds), "abort_transaction")
        except WorkerError as exc:
            log.warning("could not abort the open transaction (its successor will fence it): %s", exc)

    def _call(self, fn: Callable[[], object], what: str, seconds: float | None = None) -> None:
        if self._wedged is not None:
            raise self._wedged
        try:
            kafka_call(fn, what=what, deadline=(self._call_seconds if seconds is None else seconds) + self._margin)
        except ClientWedged as exc:
            self._wedged = exc
            raise
