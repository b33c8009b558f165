"""The main loop: poll, hand records down the stages, store or commit what finished, repeat.

Only this thread talks to the consumer, and it never waits on S3 or the device, so poll() runs
every few milliseconds and max.poll.interval.ms is never at risk (backpressure.py pauses the input
when the rest falls behind). Rebalances are handled here too, since they touch every piece of state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from worker.config import PipelineSettings
from worker.encoding import Source
from worker.errors import BadMessage, FatalError
from worker.messages import ConfluentDecoder, decode_request
from worker.metrics import Metrics
from worker.pipeline.backpressure import Backpressure
from worker.pipeline.batching import Batcher
from worker.pipeline.deadletter import DeadLetterStage
from worker.pipeline.inference import InferenceStage
from worker.pipeline.offsets import OffsetTracker
from worker.pipeline.produce import Emitter, Headers, InOrderEmitter, Outbox
from worker.pipeline.stages import ThreadStage
from worker.pipeline.transactions import ClientWedged, TransactionCommitter
from worker.pipeline.work import Work

log = logging.getLogger(__name__)
_BUSY_POLL_SECONDS = 0.005  # while work is in flight: results arrive on other threads
_IDLE_POLL_SECONDS = 0.1
_MAX_CONSUME = 500


@dataclass(slots=True)
class Stages:
    fetch: ThreadStage
    preprocess: ThreadStage
    batcher: Batcher
    inference: InferenceStage
    dead_letters: DeadLetterStage


class Runtime:
    def __init__(
        self,
        *,
        consumer: Consumer,
        outbox: Outbox,
        emitter: Emitter,
        tracker: OffsetTracker,
        stages: Stages,
        input_topic: str,
        settings: PipelineSettings,
        metrics: Metrics,
        cooperative: bool,
        confluent_decoder: ConfluentDecoder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._outbox = outbox
        self._emitter = emitter
        self._tracker = tracker
        self._stages = stages
        self._input_topic = input_topic
        self._settings = settings
        self._metrics = metrics
        self._decoder = confluent_decoder
        self._cooperative = cooperative
        self._clock = clock
        self._transactions = (
            TransactionCommitter(producer=outbox.producer, metrics=metrics)
            if isinstance(emitter, InOrderEmitter)
            else None
        )
        self._backpressure = Backpressure(consumer=consumer, max_in_flight=settings.max_in_flight, metrics=metrics)
        self._stop_deadline: float | None = None
        self._closed = False
        self.last_loop_at = clock()
        self.assigned: set[tuple[str, int]] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking work; drain within the grace period (called from a signal handler)."""
        if self._stop_deadline is None:
            self._stop_deadline = self._clock() + self._settings.shutdown_grace_seconds

    def run(self) -> None:
        self._consumer.subscribe(
            [self._input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        if self._transactions is not None:
            self._transactions.start()
        error: BaseException | None = None
        try:
            while not self._finished_stopping():
                self.step()
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._close(error)

    def step(self) -> None:
        """One turn of the loop; never blocks for longer than a poll timeout."""
        self.last_loop_at = self._clock()
        stopping = self._stop_deadline is not None
        if stopping and not self._backpressure.paused:
            self._backpressure.pause()
            self._stages.batcher.flush()
        room = self._settings.max_in_flight - self._tracker.in_flight()
        messages = self._consumer.consume(max(1, min(room, _MAX_CONSUME)), self._poll_timeout())
        for message in messages:
            self._take(message)
        self._advance()
        self._commit()
        if not stopping:
            self._backpressure.update(self._tracker.in_flight())

    # -- the data path ---------------------------------------------------------------------------

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.fatal() or error.code() == KafkaError._FATAL:
                # e.g. a static member fenced after its session timed out during a broker outage:
                # this client instance is done; a restarted process rejoins and resumes at the commit.
                raise FatalError(f"consumer error: {error.str()}")
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error.str())
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        generation = self._tracker.add((topic, partition), offset)
        self._metrics.consumed.inc()
        work = Work(
            source=Source(topic=topic, partition=partition, offset=offset),
            generation=generation,
            key=message.key(),
            value=message.value(),
            headers=_headers(message),
            timestamp_ms=message.timestamp()[1] if message.timestamp()[0] else None,
        )
        try:
            work.request = decode_request(work.value, input_format=self._settings.input_format, confluent=self._decoder)
        except BadMessage as exc:
            self._stages.dead_letters.fail(work, exc, stage=exc.stage)
            return
        self._stages.fetch.submit(work)

    def _advance(self) -> None:
        stages = self._stages
        stages.fetch.poll()
        stages.preprocess.poll()
        stages.batcher.poll()
        stages.inference.poll()
        self._outbox.poll()
        if stages.dead_letters.fatal is not None:
            raise stages.dead_letters.fatal
        self._metrics.in_flight.set(self._tracker.in_flight())

    def _poll_timeout(self) -> float:
        if self._tracker.in_flight() == 0:
            return _IDLE_POLL_SECONDS
        deadline = self._stages.batcher.seconds_to_deadline()
        return _BUSY_POLL_SECONDS if deadline is None else min(_BUSY_POLL_SECONDS, deadline)

    # -- offsets and transactions ----------------------------------------------------------------

    def _commit(self, *, force: bool = False) -> None:
        if self._transactions is not None:
            self._commit_transaction(force=force)
            return
        moved = self._tracker.take_committable()
        if not moved:
            return
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in moved.items()])
        except KafkaException as exc:
            # _STATE: a partition is no longer ours (librdkafka #3774): that work is someone else's now.
            if exc.args[0].code() != KafkaError._STATE:
                raise

    def _commit_transaction(self, *, force: bool) -> None:
        moved = self._tracker.take_committable()
        emitter = self._emitter
        assert isinstance(emitter, InOrderEmitter)
        if not moved and not emitter.sent and not force:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in moved.items()]
        assert self._transactions is not None
        if not self._transactions.commit(offsets, self._consumer.consumer_group_metadata()):
            self._rewind()
        emitter.sent = 0

    def _rewind(self) -> None:
        """After an abort: drop all in-flight work and seek every partition back to its commit."""
        self._emitter.forget()
        assigned = [TopicPartition(t, p) for t, p in self.assigned]
        for tp in self.assigned:
            self._tracker.assign(tp)  # a new generation: in-flight results are now stale
        for committed in self._consumer.committed(assigned, timeout=30):
            offset = committed.offset
            if offset == OFFSET_INVALID:
                offset, _high = self._consumer.get_watermark_offsets(committed, timeout=30)
            self._consumer.seek(TopicPartition(committed.topic, committed.partition, offset))

    # -- rebalancing -----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._metrics.rebalances.labels(kind="assigned").inc()
        for tp in partitions:
            self._tracker.assign((tp.topic, tp.partition))
            self.assigned.add((tp.topic, tp.partition))
        if partitions and self._backpressure.paused:  # assign now, so they are paused before any fetch
            if self._cooperative:
                consumer.incremental_assign(partitions)
            else:
                consumer.assign(partitions)
            consumer.pause(partitions)
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish what was delivered, commit it, and drop the rest for the next owner."""
        if self._closed:  # leaving the group at shutdown is not a rebalance
            self._forget(partitions)
            return
        self._metrics.rebalances.labels(kind="revoked").inc()
        self._outbox.flush(self._settings.shutdown_grace_seconds)
        self._commit(force=self._transactions is not None)
        if self._transactions is None:
            self._commit_stored(consumer)
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost, not revoked: another member may own them already, so commit nothing."""
        self._metrics.rebalances.labels(kind="lost").inc()
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps the pause flag of a partition this consumer paused and gave up: were it
        # assigned back after a session timeout, it would never be fetched again. Clear it now.
        self._backpressure.release(partitions)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._tracker.revoke(key)
            self._emitter.forget(key)
            self.assigned.discard(key)
        log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def _commit_stored(self, consumer: Consumer) -> None:
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit failed: %s", exc.args[0].str())

    # -- shutdown --------------------------------------------------------------------------------

    def _finished_stopping(self) -> bool:
        if self._stop_deadline is None:
            return False
        if self._tracker.in_flight() == 0:
            return True
        if self._clock() >= self._stop_deadline:
            log.warning("grace period over with %d records unfinished; they will be redone", self._tracker.in_flight())
            return True
        return False

    def _close(self, error: BaseException | None) -> None:
        """Flush outputs, then commit offsets, then leave the group: in that order."""
        stages = self._stages
        for stage in (stages.fetch, stages.preprocess, stages.inference):
            stage.close()
        if isinstance(error, ClientWedged):
            return  # nothing can be flushed or committed through a wedged client; the successor fences it
        try:
            self._outbox.flush(max(1.0, (self._stop_deadline or self._clock()) - self._clock()))
            self._commit(force=True)
            if self._transactions is None:
                self._commit_stored(self._consumer)
        except KafkaException as exc:  # a fenced or failed client: what was not committed is redone
            log.warning("final commit failed: %s", exc.args[0].str())
        finally:
            self._closed = True  # the revocation that close() triggers has nothing left to commit
            self._consumer.close()
            if self._transactions is not None:
                self._transactions.abort_open()


def _headers(message: Message) -> Headers:
    headers = message.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)
