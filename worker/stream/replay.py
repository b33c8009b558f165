"""`clip-worker replay`: dead letters back to the input, once what failed them is fixed.

A dead letter (worker/stream/deadletter.py) keeps the original key, value, headers and timestamp,
and says in headers where and why it failed. Replay reads the dead-letter topic from its beginning up
to the end offsets it finds at start (dead letters written meanwhile wait for the next run), keeps
those that match every filter given - stage, exception class, and a time range on the original
record's timestamp - and produces each as the original was: key, value, headers without the
dead-letter ones, and timestamp; to the input topic, or --to. A dead letter that was cut to fit its
topic (value, key or headers) is never replayed, only counted: it is not the original any more.

Its consumer assigns the partitions itself, reads committed records only (an aborted transaction's
dead letters are not replayed) and commits nothing: replay keeps no position, and a second run
replays the same records again. Keep runs apart with --since/--until; downstream, an output's key
and sha256 tell a duplicate. Its first request must be answered within CONNECT_SECONDS: with no
broker it stops with one line (worker/kafka/health.py), and librdkafka's own lines are not printed.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from worker.config import KafkaSettings
from worker.errors import ClientFatal, FatalError, WorkerError
from worker.formats.records import Headers, OutRecord
from worker.kafka.boundary import create, kafka_call, read_headers, translate
from worker.kafka.config import property_settings, replay_consumer_config, tool_producer_config
from worker.kafka.health import KafkaHealth
from worker.stream import deadletter as dl
from worker.stream.produce import Outbox
from worker.text import safe_text

CONNECT_SECONDS = 10.0  # no broker answers the first request within this: replay stops, exit code 1
_STALL_SECONDS = 120.0  # no record and no partition finished for this long: an open transaction, or no broker
_MAX_TIMESTAMP_MS = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter record read back: where and why it failed, and the original as it was."""

    stage: str
    exception: str
    timestamp_ms: int | None  # the original record's
    complete: bool  # nothing of the original was cut to fit the dead-letter topic
    key: bytes | None
    value: bytes | None
    headers: Headers  # the original's: the dead-letter headers taken out


def restore(key: bytes | None, value: bytes | None, headers: Headers, timestamp_ms: int | None) -> DeadLetter:
    """Split a dead-letter record into its context and the original. Never raises, whatever the headers
    hold: anyone who may write to the dead-letter topic wrote them."""
    context: dict[str, str] = {}
    original: Headers = []
    for name, header_value in headers:
        if name.startswith(dl.PREFIXES):
            context[name] = safe_text(header_value or "", limit=64)
        else:
            original.append((name, header_value))
    cut = (dl.VALUE_TRUNCATED, dl.ORIGINAL_KEY_SIZE, dl.ORIGINAL_HEADERS_DROPPED)
    return DeadLetter(
        stage=context.get(dl.STAGE, ""), exception=context.get(dl.EXCEPTION_CLASS, ""),
        timestamp_ms=_original_timestamp(context.get(dl.ORIGINAL_TIMESTAMP, ""), timestamp_ms),
        complete=not any(name in context for name in cut), key=key, value=value, headers=original,
    )


def _original_timestamp(header: str, record_ms: int | None) -> int | None:
    """The worker's header (a LogAppendTime dead-letter topic keeps no original time), else the record's."""
    try:
        parsed = int(header)
    except ValueError:
        return record_ms
    return parsed if 0 <= parsed <= _MAX_TIMESTAMP_MS else record_ms


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    to_topic: str | None = None  # None: the input topic
    stages: frozenset[str] = frozenset()  # empty: any
    exceptions: frozenset[str] = frozenset()  # empty: any
    since_ms: int | None = None  # inclusive, on the original record's timestamp
    until_ms: int | None = None  # exclusive
    dry_run: bool = False

    def matches(self, letter: DeadLetter) -> bool:
        ts = letter.timestamp_ms
        return (
            (not self.stages or letter.stage in self.stages)
            and (not self.exceptions or letter.exception in self.exceptions)
            and (self.since_ms is None or (ts is not None and ts >= self.since_ms))
            and (self.until_ms is None or (ts is not None and ts < self.until_ms))
        )


def instant(text: str) -> int:
    """An ISO 8601 time as milliseconds since the epoch, exactly; UTC unless it names a zone. The type of
    the command line's --since and --until (worker/cli/replay.py)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


@dataclass
class ReplayReport:
    read: int = 0
    matched: Counter[tuple[str, str]] = field(default_factory=Counter)  # by (stage, exception class)
    incomplete: int = 0  # matched, but cut to fit the dead-letter topic: not replayed
    unreadable: int = 0  # headers the client could not decode: neither matched nor replayed
    produced: int = 0
    failed: int = 0
    first_error: str = ""

    def format(self, *, source: str, target: str, dry_run: bool) -> str:
        rows = [("STAGE", "EXCEPTION", "RECORDS")] + [(s, e, str(n)) for (s, e), n in sorted(self.matched.items())]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        lines = [f"{stage:<{widths[0]}}  {exc:<{widths[1]}}  {n}" for stage, exc, n in rows]
        matched = sum(self.matched.values())
        lines.append(f"read {self.read} dead letters from {source}, {matched} matched, {self.incomplete} of them "
                     f"incomplete (cut to fit, not replayed), {self.unreadable} unreadable")
        if dry_run:
            lines.append(f"dry run: {matched - self.incomplete} would be replayed to {target}; nothing produced")
        else:
            lines.append(f"replayed {self.produced} to {target}, {self.failed} failed {self.first_error}".rstrip())
        return "\n".join(lines)


def replay_command(kafka: KafkaSettings, options: ReplayOptions) -> int:
    """`clip-worker replay`: the counts on stdout; exit code 1 when a replayed record was refused."""
    report = replay(kafka, options)
    target = options.to_topic or kafka.input_topic
    print(report.format(source=kafka.dead_letter_topic, target=target, dry_run=options.dry_run), flush=True)
    return 1 if report.failed else 0


def replay(kafka: KafkaSettings, options: ReplayOptions) -> ReplayReport:
    target = options.to_topic or kafka.input_topic
    report = ReplayReport()
    health = KafkaHealth.for_tool(kafka.bootstrap_servers, kafka.auth_failure_seconds)
    consumer = create(Consumer, health.attach(replay_consumer_config(kafka)), what="replay consumer",
                      settings=property_settings(kafka, role="consumer"))
    try:
        health.probe(consumer, what="cluster metadata", timeout=CONNECT_SECONDS)
        # The outbox's size check (fits) is not asked: produce() itself refuses a record over the limit (below).
        outbox = None if options.dry_run else Outbox(
            create(Producer, health.attach(tool_producer_config(kafka)), what="replay producer",
                   settings=property_settings(kafka, role="producer")), max_message_bytes=0)
    except WorkerError:
        kafka_call(consumer.close, what="close")
        raise

    def acked(error: Exception | None) -> None:
        if error is None:
            report.produced += 1
        else:
            report.failed += 1
            report.first_error = report.first_error or f"(first: {error})"

    try:
        for message in _read_to_end(consumer, kafka.dead_letter_topic):
            report.read += 1
            headers = read_headers(message)
            if headers is None:  # a foreign record: the dead-letter topic is anyone's to write
                report.unreadable += 1
                continue
            kind, timestamp = message.timestamp()
            letter = restore(message.key(), message.value(), headers, timestamp if kind else None)
            if not options.matches(letter):
                continue
            report.matched[(letter.stage, letter.exception)] += 1
            if not letter.complete:
                report.incomplete += 1
            elif outbox is not None:
                record = OutRecord(target, letter.key, letter.value, letter.headers, letter.timestamp_ms)
                try:
                    outbox.send(record, on_ack=acked)
                except WorkerError as exc:  # refused at once, e.g. over the producer's size limit
                    acked(exc)
        if outbox is not None and outbox.flush(60) > 0:
            raise FatalError(f"replayed records to {target} were not all acknowledged within 60 s")
    finally:
        kafka_call(consumer.close, what="close")
        if outbox is not None:
            outbox.close()
    return report


def _read_to_end(consumer: Consumer, topic: str) -> Iterator[Message]:
    """Every committed record of `topic`, from the beginning to the end offsets at the start."""
    metadata = kafka_call(lambda: consumer.list_topics(topic, timeout=10), what="metadata")
    described = metadata.topics.get(topic) if metadata is not None else None
    if described is None or described.error is not None:
        raise FatalError(f"dead-letter topic {topic}: {described.error if described else 'no metadata'}")
    ends = {p: end for p in described.partitions if (end := _end_offset(consumer, TopicPartition(topic, p))) > 0}
    kafka_call(lambda: consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends]), what="assign")
    progressed = time.monotonic()
    while ends:
        for message in kafka_call(lambda: consumer.consume(500, 0.5), what="consume") or []:
            error = message.error()
            if error is not None:
                translated = translate(error, what=f"reading {topic}")
                if isinstance(translated, ClientFatal):
                    raise translated
                continue  # librdkafka retries the rest itself
            progressed = time.monotonic()
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None and offset < ends.get(partition, 0):  # not past the end
                yield message
        unfinished = [TopicPartition(topic, p) for p in ends]
        for tp in kafka_call(functools.partial(consumer.position, unfinished), what="position") or []:
            if tp.offset >= ends[tp.partition]:
                del ends[tp.partition]
                progressed = time.monotonic()
        if time.monotonic() - progressed > _STALL_SECONDS:
            raise FatalError(f"reading {topic} stalled short of its end offsets {ends}")


def _end_offset(consumer: Consumer, partition: TopicPartition) -> int:
    marks = kafka_call(lambda: consumer.get_watermark_offsets(partition, timeout=10), what="watermarks")
    return marks[1] if marks is not None else 0
