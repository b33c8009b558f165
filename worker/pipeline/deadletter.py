"""Records that can never succeed: dead-letter them (default), skip them, or stop the worker.

A dead-letter record copies the original key, value, headers and timestamp and adds headers in the
style of Kafka Connect's DeadLetterQueueReporter, so that it can be inspected and replayed:

    dlt.original.topic / .partition / .offset / .timestamp
    dlt.stage             decode-message | fetch | decode-image | embed | encode | produce
    dlt.exception.class   e.g. SourceNotFound
    dlt.exception.message the reason, never a credential
    dlt.attempts          fetch attempts made
    dlt.worker.version

The offset of a dead-lettered record is finished only when the dead-letter record is acknowledged
(or, exactly-once, written into the transaction). After `max_consecutive` failures in a row with no
success between them the worker stops instead: a bad deploy or lost credentials should not
dead-letter a whole topic.
"""

from __future__ import annotations

import logging
from typing import Literal

from confluent_kafka import KafkaError

from worker import __version__
from worker.errors import FatalError
from worker.metrics import Metrics
from worker.pipeline.produce import Emitter, Headers, OutRecord
from worker.pipeline.work import Work

log = logging.getLogger(__name__)
Policy = Literal["dead-letter", "skip", "stop"]
_MAX_MESSAGE = 1000


def dead_letter_headers(work: Work, error: Exception, *, stage: str) -> Headers:
    source = work.source
    added = {
        "dlt.original.topic": source.topic,
        "dlt.original.partition": str(source.partition),
        "dlt.original.offset": str(source.offset),
        "dlt.original.timestamp": str(work.timestamp_ms or ""),
        "dlt.stage": stage,
        "dlt.exception.class": type(error).__name__,
        "dlt.exception.message": (str(error) or type(error).__name__)[:_MAX_MESSAGE],
        "dlt.attempts": str(work.fetch_attempts),
        "dlt.worker.version": __version__,
    }
    return [*work.headers, *((name, value.encode()) for name, value in added.items())]


class DeadLetterStage:
    """The failure sink of every stage."""

    def __init__(
        self, *, emitter: Emitter, topic: str, policy: Policy, max_consecutive: int, metrics: Metrics
    ) -> None:
        self._emitter = emitter
        self._topic = topic
        self._policy = policy
        self._max_consecutive = max_consecutive
        self._metrics = metrics
        self._streak = 0
        self.fatal: FatalError | None = None  # set from a delivery callback; the runtime raises it

    def record_success(self) -> None:
        self._streak = 0

    def fail(self, work: Work, error: Exception, *, stage: str) -> None:
        self._metrics.failed.labels(stage=stage, error=type(error).__name__).inc()
        log.warning("record %s failed at %s: %s: %s", work.source, stage, type(error).__name__, error)
        self._streak += 1
        if self._policy == "stop":
            raise FatalError(f"record {work.source} failed at {stage} and on_error is stop: {error}")
        if self._streak > self._max_consecutive:
            raise FatalError(
                f"{self._streak} records failed in a row (last: {type(error).__name__} at {stage}); "
                "stopping rather than dead-lettering everything"
            )
        record = None
        if self._policy == "dead-letter":
            record = OutRecord(
                topic=self._topic,
                key=work.key,
                value=work.value,
                headers=dead_letter_headers(work, error, stage=stage),
                timestamp_ms=work.timestamp_ms,
            )
        self._emitter.emit(work, record, on_done=self._done, on_refused=self._refused)

    def _done(self, work: Work) -> None:
        if self._policy == "dead-letter":
            self._metrics.dead_lettered.inc()

    def _refused(self, work: Work, err: KafkaError) -> None:
        self.fatal = FatalError(f"dead-letter record for {work.source} was refused: {err.str()}")
