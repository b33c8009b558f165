"""Records that can never succeed: dead-letter them (default), skip them, or stop the worker.

A dead-letter record copies the original key, value, headers and timestamp (as Kafka Connect's
DeadLetterQueueReporter does) and adds Connect's own context headers, so that the tools that read
Connect's dead-letter topics read these too, and `clip-worker replay` (worker/stream/replay.py) can put
the original back:

    __connect.errors.topic / .partition / .offset      where the original was read
    __connect.errors.stage                 decode-message | fetch | decode-image | preprocess | embed | encode | produce
    __connect.errors.exception.class.name  e.g. SourceNotFound (worker/errors.py)
    __connect.errors.exception.message     the reason, never a credential
    __connect.errors.exception.stacktrace  only for UnexpectedError (a bug): its last frames, bounded
and the worker's own, under the `clip_worker.` prefix:
    clip_worker.original.timestamp   the original's timestamp (ms), which a LogAppendTime topic would not keep
    clip_worker.fetch.attempts       S3 requests made
    clip_worker.worker.id            the Kafka client.id (the pod name with static membership)
    clip_worker.worker.version
    clip_worker.value.truncated, clip_worker.original.value.size, clip_worker.original.key.size,
    clip_worker.original.headers.dropped   only when the original did not fit (below)

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

The stop policy, the streak's end and a refused dead letter are reported to the loop's Stop
(stop.py), never raised from here: fail() runs inside whichever stage's poll() or delivery callback
met the record. Once stopped, nothing more is dead-lettered and the floors stay where they are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

from worker import __version__
from worker.errors import FatalError, OutputTooLarge, UnexpectedError
from worker.formats.positions import Partition
from worker.formats.records import Headers, OutRecord
from worker.images.work import Work
from worker.logs import record_context
from worker.metrics import Metrics
from worker.stream.inputs import kafka_position, polled
from worker.stream.produce import Emitter
from worker.stream.stop import Stop
from worker.text import safe_bytes, safe_text

log = logging.getLogger(__name__)
Policy = Literal["dead-letter", "skip", "stop"]
_MAX_KEY_BYTES = 16 * 1024
_MAX_ORIGINAL_HEADER_BYTES = 64 * 1024
_SIZE_HEADERS_BYTES = 256  # room kept for the headers that say what was cut
_MAX_HEADER_CHARS = 4000  # the stack trace is the longest; the message is capped at safe_text's 1000

# Header names; replay.py reads them back. Every header the worker adds starts with one of PREFIXES.
TOPIC = "__connect.errors.topic"
PARTITION = "__connect.errors.partition"
OFFSET = "__connect.errors.offset"
STAGE = "__connect.errors.stage"
EXCEPTION_CLASS = "__connect.errors.exception.class.name"
EXCEPTION_MESSAGE = "__connect.errors.exception.message"
STACKTRACE = "__connect.errors.exception.stacktrace"
ORIGINAL_TIMESTAMP = "clip_worker.original.timestamp"
FETCH_ATTEMPTS = "clip_worker.fetch.attempts"
WORKER_ID = "clip_worker.worker.id"
WORKER_VERSION = "clip_worker.worker.version"
VALUE_TRUNCATED = "clip_worker.value.truncated"
ORIGINAL_VALUE_SIZE = "clip_worker.original.value.size"
ORIGINAL_KEY_SIZE = "clip_worker.original.key.size"
ORIGINAL_HEADERS_DROPPED = "clip_worker.original.headers.dropped"
PREFIXES = ("__connect.errors.", "clip_worker.")


def dead_letter_record(
    work: Work, error: Exception, *, stage: str, topic: str, max_bytes: int, worker_id: str, minimal: bool = False,
) -> OutRecord:
    """The dead-letter record of `work`; never raises, never larger than `max_bytes` in total.
    `minimal` leaves out the original value and headers (the broker refused the full record)."""
    source, record = kafka_position(work), polled(work)
    context: list[tuple[str, object]] = [
        (TOPIC, source.topic),
        (PARTITION, source.partition),
        (OFFSET, source.offset),
        (STAGE, stage),
        (EXCEPTION_CLASS, type(error).__name__),
        (EXCEPTION_MESSAGE, safe_text(error)),
    ]
    if isinstance(error, UnexpectedError):
        context.append((STACKTRACE, error.trace()))
    context += [
        (ORIGINAL_TIMESTAMP, "" if record.timestamp_ms is None else record.timestamp_ms),
        (FETCH_ATTEMPTS, work.fetch_attempts),
        (WORKER_ID, worker_id),
        (WORKER_VERSION, __version__),
    ]
    added: Headers = [(name, safe_bytes(value, limit=_MAX_HEADER_CHARS)) for name, value in context]
    budget = max_bytes - _SIZE_HEADERS_BYTES - _size(added)
    key = record.key
    if key is not None and len(key) > _MAX_KEY_BYTES:
        added.append((ORIGINAL_KEY_SIZE, str(len(key)).encode()))
        key = key[:_MAX_KEY_BYTES]
    budget -= len(key or b"")
    kept, dropped = _original_headers(record.headers, min(budget, _MAX_ORIGINAL_HEADER_BYTES), minimal=minimal)
    if dropped:
        added.append((ORIGINAL_HEADERS_DROPPED, str(dropped).encode()))
    budget -= _size(kept)
    value = record.value
    if value is not None and (minimal or len(value) > budget):
        added += [(VALUE_TRUNCATED, b"true"), (ORIGINAL_VALUE_SIZE, str(len(value)).encode())]
        value = b"" if minimal else value[: max(0, budget)]
    return OutRecord(topic=topic, key=key, value=value, headers=kept + added, timestamp_ms=record.timestamp_ms)


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


class DeadLetters:
    """Where records that can never succeed go (through failures.py)."""

    def __init__(
        self, *, emitter: Emitter, topic: str, policy: Policy, max_consecutive: int, max_bytes: int, worker_id: str,
        metrics: Metrics, stop: Stop,
    ) -> None:
        self._emitter = emitter
        self._topic = topic
        self._worker_id = worker_id
        self._policy = policy
        self._max_consecutive = max_consecutive
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._stop = stop
        self._streak = 0
        self._floors: dict[Partition, int] = {}  # per partition: the streak's lowest failed offset
        self._floors_view = MappingProxyType(self._floors)

    @property
    def floors(self) -> Mapping[Partition, int]:
        """Per partition, the offset the committers must not commit past: a live, read-only view."""
        return self._floors_view

    def record_success(self) -> None:
        self._streak = 0
        if self._stop.reason is None:  # stopping: the streak that stopped the worker stays uncommitted
            self._floors.clear()

    def settle(self) -> None:
        """Nothing is in flight: the streak so far is a run of bad records, not a failing worker
        still chewing through its input, so it may be committed (the count goes on)."""
        if self._stop.reason is None:
            self._floors.clear()

    def fail(self, work: Work, error: Exception, *, stage: str) -> None:
        if self._stop.reason is not None:
            return  # stopping: the record stays unfinished, and the restarted worker redoes it
        self._metrics.failed.labels(stage=stage, error=type(error).__name__).inc()
        position = kafka_position(work)
        log.warning("record %s failed at %s: %s: %s", position, stage, type(error).__name__, safe_text(error),
                    extra=record_context(position, work.request.id if work.request else None))
        self._streak += 1
        floor = self._floors.get(position.tp)
        self._floors[position.tp] = position.offset if floor is None else min(floor, position.offset)
        if self._policy == "stop":
            self._stop.report(
                FatalError(f"record {position} failed at {stage} and on_error is stop: {safe_text(error)}"))
            return
        if self._streak > self._max_consecutive:
            self._stop.report(FatalError(
                f"{self._streak} records failed in a row (last: {type(error).__name__} at {stage}); "
                "stopping rather than dead-lettering everything, without committing them"
            ))
            return
        self._send(work, error, stage=stage, minimal=False)

    def _send(self, work: Work, error: Exception, *, stage: str, minimal: bool) -> None:
        record = None
        if self._policy == "dead-letter":
            record = dead_letter_record(
                work, error, stage=stage, topic=self._topic, max_bytes=self._max_bytes, worker_id=self._worker_id,
                minimal=minimal,
            )

        def refused(refused_work: Work, refusal: Exception) -> None:
            if isinstance(refusal, OutputTooLarge) and not minimal:  # the topic's own limit is smaller
                self._send(refused_work, error, stage=stage, minimal=True)
            else:
                self._stop.report(
                    FatalError(f"dead-letter record for {kafka_position(refused_work)} was refused: {refusal}"))

        try:
            self._emitter.emit(work, record, on_done=self._done, on_refused=refused)
        except FatalError as exc:  # the producer is fenced or failed for good
            self._stop.report(exc)

    def _done(self, work: Work) -> None:
        if self._policy == "dead-letter":
            self._metrics.dead_lettered.inc()
