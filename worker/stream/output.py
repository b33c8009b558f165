"""The output: each embedded record becomes one Avro record on the output topic, keyed by id.

The record is built on the device thread as soon as the embedding exists (encode(): the Avro of the
vector is work the main thread no longer does); submit() on the main thread produces it. A Sink
(sink.py), not a stage: the producer holds what is in flight, and its acknowledgements arrive in
the loop's outbox.poll(), so there is nothing here to poll or to close.
Anything that goes wrong building the record - the encoder, the key, a registry outage - is the
record's failure (or, for the registry, an outage), never the loop's; and a record over the
producer's size limit is refused here, before produce() would raise in the middle of the loop.

The input headers named in `forward_headers` (W3C trace context by default) are copied to the
output record, so that a trace spans the worker. Two latencies are observed as the output is
acknowledged (at-least-once) or written into the transaction (exactly-once): from the send, and end
to end, from the input record's timestamp.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from worker.errors import FatalError, OutputRejected, OutputTooLarge
from worker.formats.encoding import EmbeddingEncoder
from worker.formats.records import Headers, OutRecord
from worker.images.work import Work
from worker.metrics import Metrics
from worker.stream.deadletter import DeadLetters
from worker.stream.failures import FailureRouter
from worker.stream.inputs import polled
from worker.stream.outage import OutageGate
from worker.stream.produce import Emitter, Outbox


class Output:
    name = "encode"  # where a record failed, in the metrics and the dead letter

    def __init__(
        self, *, emitter: Emitter, outbox: Outbox, encoder: EmbeddingEncoder, topic: str, failures: FailureRouter,
        dead_letters: DeadLetters, outages: OutageGate, metrics: Metrics, forward_headers: Iterable[str],
    ) -> None:
        self._emitter = emitter
        self._outbox = outbox
        self._encoder = encoder
        self._topic = topic
        self._failures = failures.sink(resume=self)  # a registry outage: encoded again after it
        self._dead_letters = dead_letters
        self._outages = outages
        self._metrics = metrics
        self._forward = frozenset(forward_headers)

    def encode(self, work: Work) -> None:
        """Build the output record (on the device thread, right after the embedding: the main thread
        then only produces). Never raises: a failure waits in `work.output_error` for submit()."""
        assert work.request is not None and work.embedding is not None
        try:
            value = self._encoder.encode(
                request=work.request, embedding=work.embedding, position=work.position, topic=self._topic,
                sha256=work.sha256, width=work.width, height=work.height,
            )
            record = OutRecord(
                topic=self._topic, key=work.request.id.encode(), value=value, headers=self._headers(work)
            )
            if record.nbytes > self._outbox.max_record_bytes:
                limit = self._outbox.max_record_bytes
                raise OutputTooLarge(f"output record of {record.nbytes} bytes is over the limit of {limit}")
            work.output = record
        except Exception as exc:  # EncodeError, RegistryUnavailable, or anything the encoder missed
            work.output_error = exc

    def submit(self, item: Work) -> None:
        if item.output is None and item.output_error is None:
            self.encode(item)
        record = item.output
        if record is None:
            error, item.output_error = item.output_error, None  # taken: a retry after an outage encodes anew
            assert error is not None
            self._failures.fail(item, error, stage=self.name)
            return
        item.sent_at = time.monotonic()
        try:
            self._emitter.emit(item, record, on_done=self._done, on_refused=self._refused)
        except FatalError as exc:  # the producer is fenced or failed for good: the loop stops
            self._failures.fail(item, exc, stage="produce")

    def _headers(self, work: Work) -> Headers:
        """The encoder's headers, and the forwarded input headers after them (a new list only then)."""
        headers = polled(work).headers
        if not (self._forward and headers):
            return self._encoder.headers
        forwarded = [header for header in headers if header[0] in self._forward]
        return self._encoder.headers + forwarded if forwarded else self._encoder.headers

    def _done(self, work: Work) -> None:
        metrics = self._metrics
        metrics.produce_seconds.observe(time.monotonic() - work.sent_at)
        timestamp_ms = polled(work).timestamp_ms
        if timestamp_ms is not None:
            metrics.end_to_end_seconds.observe(max(0.0, time.time() - timestamp_ms / 1000))
        metrics.embedded.inc()
        self._dead_letters.record_success()
        self._outages.record_success()

    def _refused(self, work: Work, error: Exception) -> None:
        # Outside transactions the delivery timeout is infinite, so an error here is a refusal for good.
        refusal = error if isinstance(error, OutputRejected) else OutputRejected(f"output record refused: {error}")
        self._failures.fail(work, refusal, stage=refusal.stage)
