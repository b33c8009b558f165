"""The main loop: poll, hand records down the stages, commit what finished, repeat; and shutdown.

Only this thread talks to the consumer, and it never waits on S3 or the device for longer than a
busy poll (a turn with records in flight waits for a stage's signal, 20 ms at most), so consume()
runs many times a second and max.poll.interval.ms is never at risk
(backpressure.py pauses the input when the rest falls behind). No record can stop this loop: every
stage turns what goes wrong with one record into that record's failure (failures.py); only
FatalError - a fenced or wedged client, a broken device, the stop policy, the failure streak - ends
it, and then nothing more is committed than what finished. What the stages meet is reported to the
pipeline's Stop (stop.py), and this loop raises it, after each record taken and after each turn.
A Kafka client that is done (ClientFatal) or wedged (ClientWedged) ends only the turn: the clients
are replaced (clients.py) and the loop goes on from the committed offsets, within a budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from worker.config import PipelineSettings
from worker.errors import ClientFatal, ClientWedged, WorkerError
from worker.formats.positions import Partition
from worker.images.budget import InFlightBytes
from worker.images.stages import Stage
from worker.images.wake import busy_wait
from worker.kafka.boundary import is_code, kafka_call, translate
from worker.metrics import Metrics
from worker.stream.backpressure import Backpressure
from worker.stream.clients import Clients
from worker.stream.delivery.acked import Committer
from worker.stream.inputs import polled_work
from worker.stream.offsets import OffsetTracker
from worker.stream.pipeline import Pipeline
from worker.stream.produce import Outbox
from worker.stream.rebalance import Rebalancer

log = logging.getLogger(__name__)
_IDLE_POLL_SECONDS = 0.1
_CLOSE_SECONDS = 30.0  # the consumer's close: leaving the group takes a round trip or two
_CLOSE_RESERVE_SECONDS = 5.0  # the grace period's end kept for flush, commit and leave (a quarter at most)
_MAX_CONSUME = 500


class Runtime:
    def __init__(
        self, *, clients: Clients, outbox: Outbox, tracker: OffsetTracker, budget: InFlightBytes,
        pipeline: Pipeline, settings: PipelineSettings, metrics: Metrics, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._outbox = outbox
        self._tracker = tracker
        self._budget = budget
        self._pipeline = pipeline
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._stop_deadline: float | None = None
        self._draining = False
        self._more_input = False  # the last consume filled its count: more may be waiting
        self._idle_at = clock()
        self.last_loop_at = clock()

    # The clients of the current generation (clients.py): read afresh, since a replacement swaps them.
    @property
    def _committer(self) -> Committer:
        return self._clients.current.committer

    @property
    def _rebalancer(self) -> Rebalancer:
        return self._clients.current.rebalancer

    @property
    def _backpressure(self) -> Backpressure:
        return self._clients.current.backpressure

    @property
    def replacing(self) -> bool:
        """True while the Kafka clients are being replaced (not ready)."""
        return self._clients.replacing

    # -- lifecycle -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking work; drain within the grace period (called from a signal handler)."""
        if self._stop_deadline is None:
            self._stop_deadline = self._clock() + self._settings.shutdown_grace_seconds

    def run(self) -> None:
        error: BaseException | None = None
        try:
            self._clients.start()
            while not self._finished_stopping():
                try:
                    self.step()
                except (ClientFatal, ClientWedged) as exc:
                    if self._stop_deadline is not None:
                        raise  # stopping anyway: the restart resumes from the commit, as before
                    self._clients.replace(exc)  # raises once the replacements allowed are spent
                    self._pipeline.stop.clear(exc)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._close(error)

    def step(self) -> None:
        """One turn of the loop; never blocks for longer than a poll timeout."""
        now = self.last_loop_at = self._clock()
        stopping = self._stop_deadline is not None
        if stopping and not self._draining:  # once: stop the input, send partial batches now
            self._draining = True
            if not self._backpressure.paused:
                self._backpressure.pause()
            self._pipeline.batcher.flush()
        in_flight = self._tracker.in_flight()
        if in_flight == 0:
            self._idle_at = now
        elif not self._more_input:
            # Busy, the turn waits on what moves the pipeline: the device finishing a batch, fetch
            # threads or decoders to give records to (wake.py), or the next batch falling due; then
            # it takes what Kafka has without waiting on it as well.
            batcher = self._pipeline.batcher
            self._pipeline.wake.wait(busy_wait(batcher.seconds_to_deadline(), held=batcher.held()))
        wanted = max(1, min(self._settings.max_in_flight - in_flight, _MAX_CONSUME))
        timeout = _IDLE_POLL_SECONDS if in_flight == 0 else 0.0
        consumer = self._clients.current.consumer
        messages = kafka_call(lambda: consumer.consume(wanted, timeout), what="consume") or []
        self._more_input = len(messages) == wanted  # more may be waiting: the next turn does not wait
        for message in messages:
            self._take(message)
            self._raise_if_stopped()  # the rest of this batch of messages is redone after the restart
        self._advance()
        if self._tracker.in_flight() == 0:
            self._pipeline.dead_letters.settle()
        if not self._committer.commit():
            self._rebalancer.rewind()
        if not stopping:
            self._backpressure.update(
                self._tracker.in_flight(), self._bytes_in_flight(), hold=self._pipeline.outages.active
            )

    @property
    def assigned(self) -> set[Partition]:
        """The partitions this worker holds now."""
        return self._rebalancer.assigned

    def stalled_seconds(self) -> float:
        """How long records have been in flight with no offset finished; 0 when idle or in an outage
        (waiting out an outage is not a stall)."""
        if self._tracker.in_flight() == 0 or self._pipeline.outages.active:
            return 0.0
        return self._clock() - max(self._tracker.progressed_at, self._idle_at)

    # -- the data path ---------------------------------------------------------------------------

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            translated = translate(error, what="consume")
            if isinstance(translated, ClientFatal):
                # e.g. a static member fenced after its session timed out during a broker outage:
                # this client instance is done; its replacement rejoins and resumes at the commit.
                raise translated
            if not is_code(error, "_PARTITION_EOF"):
                log.warning("consumer error: %s", translated)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        if (topic, partition) not in self._rebalancer.assigned:
            self._metrics.unassigned.inc()  # fetched just before a revoke: the next owner reads it
            return
        self._metrics.consumed.inc()
        generation = self._tracker.add(Partition(topic, partition), offset)
        self._pipeline.decode.submit(polled_work(message, generation=generation))

    def _advance(self) -> None:
        pipeline = self._pipeline
        for stage in pipeline.images:
            stage.poll()
        pipeline.batcher.poll()
        pipeline.inference.poll()
        pipeline.outages.poll()
        self._outbox.poll()
        self._raise_if_stopped()
        self._metrics.in_flight.set(self._tracker.in_flight())

    def _raise_if_stopped(self) -> None:
        reason = self._pipeline.stop.reason
        if reason is not None:
            raise reason

    def _bytes_in_flight(self) -> int:
        held = self._budget.held()
        self._metrics.in_flight_bytes.set(held)
        return held

    # -- shutdown --------------------------------------------------------------------------------

    def _finished_stopping(self) -> bool:
        if self._stop_deadline is None:
            return False
        if self._tracker.in_flight() == 0:
            return True
        if self._clock() >= self._stop_deadline - self._close_reserve():
            log.warning("grace period over with %d records unfinished; they will be redone", self._tracker.in_flight())
            return True
        return False

    def _close_reserve(self) -> float:
        """The end of the grace period kept for the steps after the drain and the stages."""
        return min(_CLOSE_RESERVE_SECONDS, self._settings.shutdown_grace_seconds / 4)

    def _close(self, error: BaseException | None) -> None:
        """1. stop the stages (waiting no later than the drain's deadline), 2. flush outputs, 3. commit
        offsets, 4. leave the group, 5. end the transaction, 6. close the producer: in that order."""
        deadline = self._stop_deadline or self._clock() + self._settings.shutdown_grace_seconds
        pipeline = self._pipeline
        stages: tuple[Stage[Any], ...] = (*pipeline.images, pipeline.inference)
        for stage in stages:
            stage.close(deadline - self._close_reserve())
        pipeline.wake.close()
        if isinstance(error, ClientWedged):
            return  # nothing can be flushed or committed through a wedged client; the successor fences it
        try:
            self._outbox.flush(max(1.0, deadline - self._clock()))
            self._committer.commit(force=True)
        except WorkerError as exc:  # a fenced or failed client: what was not committed is redone
            log.warning("final commit failed: %s", exc)
        finally:
            self._rebalancer.leaving()
            self._close_clients()

    def _close_clients(self) -> None:
        """Close the consumer, the committer and the producer. The consumer's close has a deadline: a
        consumer fenced by a fatal error can hang in it for good (confluent-kafka-go #1588), after a
        broker restart too, committing nothing. Past it the process exits (ClientWedged) to be
        restarted, as for a wedged transaction."""
        wedged: ClientWedged | None = None
        try:
            kafka_call(self._clients.current.consumer.close, what="consumer close", deadline=_CLOSE_SECONDS)
        except ClientWedged as exc:
            wedged = exc
        except WorkerError as exc:
            log.warning("close failed: %s", exc)
        for close in (self._committer.close, self._outbox.close):
            try:
                kafka_call(close, what="close")
            except WorkerError as exc:
                log.warning("close failed: %s", exc)
        if wedged is not None:
            raise wedged
