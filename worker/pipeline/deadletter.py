"""Records that can never succeed: dead-letter them (default), skip them, or stop the worker.

A dead-letter record copies the original key, value, headers and timestamp and adds headers in the
style of Kafka Connect's DeadLetterQueueReporter, so that it can be inspected and replayed:

    dlt.original.topic / .partition / .offset / .timestamp
    dlt.stage             decode-message | fetch | decode-image | embed | encode | produce | preprocess
    dlt.exception.class   e.g. SourceNotFound
    dlt.exception.message the reason, never a credential
    dlt.attempts          fetch attempts made
    dlt.worker.version
    dlt.value.truncated, dlt.original.value.size, dlt.original.key.size, dlt.original.headers.dropped
                          only when the original did not fit (below)

A dead-letter record can never fail itself: every header value is made safe text once (worker.text),
and the record is cut to fit the producer's message.max.bytes - original headers first dropped past
a budget, then the value cut - with headers saying what was cut and the original sizes. Were the
dead-letter topic's own limit smaller still, the broker's refusal sends a record without the value.

The offset of a dead-lettered record is finished only when the dead-letter record is acknowledged
(or, exactly-once, written into the transaction). After `max_consecutive` failures in a row with no
success between them the worker stops instead, and the streak is not committed: while records are
in flight, `floors` caps the committed offset of each partition below the streak's first failure, so
a bad deploy under a restart loop cannot drain the topic into the dead-letter topic. Once nothing is
in flight (the input is idle) the streak is a plain run of bad records, and is committed.
"""

from __future__ import annotations

import logging
from typing import Literal

from worker import __version__
from worker.errors import FatalError, OutputTooLarge
from worker.metrics import Metrics
from worker.pipeline.produce import Emitter, Headers, OutRecord
from worker.pipeline.work import Work
from worker.text import safe_bytes, safe_text

log = logging.getLogger(__name__)
Policy = Literal["dead-letter", "skip", "stop"]
_MAX_KEY_BYTES = 16 * 1024
_MAX_ORIGINAL_HEADER_BYTES = 64 * 1024
_SIZE_HEADERS_BYTES = 256  # room kept for the headers that say what was cut


def dead_letter_record(
    work: Work, error: Exception, *, stage: str, topic: str, max_bytes: int, minimal: bool = False
) -> OutRecord:
    """The dead-letter record of `work`; never raises, never larger than `max_bytes` in total.
    `minimal` leaves out the original value and headers (the broker refused the full record)."""
    source = work.source
    added: Headers = [
        (name, safe_bytes(value))
        for name, value in (
            ("dlt.original.topic", source.topic),
            ("dlt.original.partition", source.partition),
            ("dlt.original.offset", source.offset),
            ("dlt.original.timestamp", work.timestamp_ms or ""),
            ("dlt.stage", stage),
            ("dlt.exception.class", type(error).__name__),
            ("dlt.exception.message", safe_text(error)),
            ("dlt.attempts", work.fetch_attempts),
            ("dlt.worker.version", __version__),
        )
    ]
    budget = max_bytes - _SIZE_HEADERS_BYTES - _size(added)
    key = work.key
    if key is not None and len(key) > _MAX_KEY_BYTES:
        added.append(("dlt.original.key.size", str(len(key)).encode()))
        key = key[:_MAX_KEY_BYTES]
    budget -= len(key or b"")
    kept, dropped = _original_headers(work.headers, min(budget, _MAX_ORIGINAL_HEADER_BYTES), minimal=minimal)
    if dropped:
        added.append(("dlt.original.headers.dropped", str(dropped).encode()))
    budget -= _size(kept)
    value = work.value
    if value is not None and (minimal or len(value) > budget):
        added += [("dlt.value.truncated", b"true"), ("dlt.original.value.size", str(len(value)).encode())]
        value = b"" if minimal else value[: max(0, budget)]
    return OutRecord(topic=topic, key=key, value=value, headers=kept + added, timestamp_ms=work.timestamp_ms)


def _original_headers(headers: Headers, budget: int, *, minimal: bool) -> tuple[Headers, int]:
    """The original headers that fit in `budget` bytes, as safe (str, bytes) pairs; and how many did not."""
    kept: Headers = []
    used = 0
    for name, value in [] if minimal else headers:
        safe_name = safe_text(name, limit=256)
        safe_value = value if isinstance(value, bytes) or value is None else safe_bytes(value)
        size = len(safe_name.encode()) + len(safe_value or b"")
        if used + size > budget:
            break
        kept.append((safe_name, safe_value))
        used += size
    return kept, len(headers) - len(kept)


def _size(headers: Headers) -> int:
    return sum(len(name.encode()) + len(value or b"") for name, value in headers)


class DeadLetterStage:
    """Where records that can never succeed go (through failures.py)."""

    def __init__(
        self, *, emitter: Emitter, topic: str, policy: Policy, max_consecutive: int, max_bytes: int, metrics: Metrics
    ) -> None:
        self._emitter = emitter
        self._topic = topic
        self._policy = policy
        self._max_consecutive = max_consecutive
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._streak = 0
        self.floors: dict[tuple[str, int], int] = {}  # per partition: the streak's lowest failed offset
        self.fatal: FatalError | None = None  # set from a delivery callback; the runtime raises it

    def record_success(self) -> None:
        self._streak = 0
        self.floors.clear()

    def settle(self) -> None:
        """Nothing is in flight: the streak so far is a run of bad records, not a failing worker
        still chewing through its input, so it may be committed (the count goes on)."""
        self.floors.clear()

    def fail(self, work: Work, error: Exception, *, stage: str) -> None:
        self._metrics.failed.labels(stage=stage, error=type(error).__name__).inc()
        log.warning("record %s failed at %s: %s: %s", work.source, stage, type(error).__name__, safe_text(error))
        self._streak += 1
        floor = self.floors.get(work.tp)
        self.floors[work.tp] = work.source.offset if floor is None else min(floor, work.source.offset)
        if self._policy == "stop":
            raise FatalError(f"record {work.source} failed at {stage} and on_error is stop: {safe_text(error)}")
        if self._streak > self._max_consecutive:
            raise FatalError(
                f"{self._streak} records failed in a row (last: {type(error).__name__} at {stage}); "
                "stopping rather than dead-lettering everything, without committing them"
            )
        self._send(work, error, stage=stage, minimal=False)

    def _send(self, work: Work, error: Exception, *, stage: str, minimal: bool) -> None:
        record = None
        if self._policy == "dead-letter":
            record = dead_letter_record(
                work, error, stage=stage, topic=self._topic, max_bytes=self._max_bytes, minimal=minimal
            )

        def refused(refused_work: Work, refusal: Exception) -> None:
            if isinstance(refusal, OutputTooLarge) and not minimal:  # the topic's own limit is smaller
                self._send(refused_work, error, stage=stage, minimal=True)
            else:
                self.fatal = FatalError(f"dead-letter record for {refused_work.source} was refused: {refusal}")

        self._emitter.emit(work, record, on_done=self._done, on_refused=refused)

    def _done(self, work: Work) -> None:
        if self._policy == "dead-letter":
            self._metrics.dead_lettered.inc()
