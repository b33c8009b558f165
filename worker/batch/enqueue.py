"""`clip-worker enqueue`: an S3 listing or a manifest into the input topic, for the stream workers.

Each input becomes the stream's own JSON message (messages.encode_request_json), keyed by its id, as
any upstream producer writes it; the workers embed it like any other record, under their own
allowlist. Workers read S3 only, so a local file cannot be enqueued: a manifest line naming a local
path is refused, as is a line that is no request or an id seen before (a line on stderr each; the
command then exits 1). With dry_run nothing is produced and the counts say what would be. A broker that does not answer
the first request within CONNECT_SECONDS stops it with one line, before anything is listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import KafkaError, Message, Producer

from worker.batch.inputs import BatchInput, InputError
from worker.config import KafkaSettings
from worker.errors import FatalError, WorkerError
from worker.formats.messages import ImageRequest, S3Uri, encode_request_json
from worker.kafka.boundary import create, kafka_call, translate
from worker.kafka.config import property_settings, tool_producer_config
from worker.kafka.health import KafkaHealth
from worker.text import safe_text

CONNECT_SECONDS = 10.0
_FLUSH_SECONDS = 60.0
_FULL_QUEUE_WAIT_SECONDS = 0.1


@dataclass(slots=True)
class EnqueueTally:
    enqueued: int = 0
    refused: int = 0

    def summary(self, *, topic: str, dry_run: bool) -> str:
        verb = "would enqueue" if dry_run else "enqueued"
        return f"{verb} {self.enqueued} to {topic}, refused {self.refused}"


def enqueue(inputs: Iterable[BatchInput | InputError], *, kafka: KafkaSettings, dry_run: bool,
            report: TextIO) -> EnqueueTally:
    """Produce every S3 input to kafka.input_topic and wait for the acknowledgements; FatalError when
    the broker did not take them all (the records it took stay: enqueue again, the workers take duplicates
    as they take any)."""
    tally = EnqueueTally()
    health = KafkaHealth.for_tool(kafka.bootstrap_servers, kafka.auth_failure_seconds)
    producer = None if dry_run else create(Producer, health.attach(tool_producer_config(kafka)), what="producer",
                                           settings=property_settings(kafka, role="producer"))
    failures: list[WorkerError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(translate(error, what=f"enqueue to {kafka.input_topic}"))

    try:
        if producer is not None:  # a missing broker: one error within CONNECT_SECONDS, before any listing
            health.probe(producer, what="cluster metadata", timeout=CONNECT_SECONDS)
        for item in inputs:
            if isinstance(item, InputError):
                _refuse(report, item.id, item.error.reason, tally)
            elif not isinstance(item.location, S3Uri):
                _refuse(report, item.id, "a local file: workers read S3 only", tally)
            else:
                if producer is not None:
                    request = ImageRequest(id=item.id, uri=item.location, metadata=item.metadata)
                    _produce(producer, kafka.input_topic, request, delivered)
                tally.enqueued += 1
        if producer is not None:
            unacknowledged = kafka_call(lambda: producer.flush(_FLUSH_SECONDS), what="enqueue flush") or 0
            if unacknowledged or failures:
                lost = unacknowledged + len(failures)
                first = failures[0] if failures else f"not acknowledged within {_FLUSH_SECONDS:.0f} s"
                raise FatalError(f"{lost} of {tally.enqueued} records were not enqueued: {first}")
    finally:
        if producer is not None:
            producer.purge()  # nothing left after a full flush; else close() would wait out message.timeout.ms
            producer.close()
    return tally


def _produce(producer: Producer, topic: str, request: ImageRequest, delivered: Any) -> None:
    key, value = request.id.encode(), encode_request_json(request)
    while True:
        try:
            kafka_call(lambda: producer.produce(topic, value, key, on_delivery=delivered), what="enqueue")
            return
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(_FULL_QUEUE_WAIT_SECONDS)


def _refuse(report: TextIO, item_id: str, reason: str, tally: EnqueueTally) -> None:
    tally.refused += 1
    print(f"refused {safe_text(item_id, limit=300)}: {reason}", file=report)
