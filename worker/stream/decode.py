"""The stream's first step: the polled message's value decoded into an ImageRequest.

A Sink (sink.py), not a stage: it decodes inline on the main thread, in microseconds, and hands the
record on (or fails it) before submit() returns, so it has nothing to poll and nothing to close.
"""

from __future__ import annotations

from worker.formats.messages import ConfluentDecoder, InputFormat, decode_request
from worker.images.stages import Stage
from worker.images.work import Work
from worker.stream.failures import FailureRouter
from worker.stream.inputs import polled


class MessageDecoder:
    """Decodes the message value into an ImageRequest and submits the record to the image path."""

    name = "decode-message"  # where a record failed, in the metrics and the dead letter

    def __init__(
        self,
        *,
        input_format: InputFormat,
        confluent: ConfluentDecoder | None,
        next_step: Stage[Work],
        failures: FailureRouter,
    ) -> None:
        self._format = input_format
        self._confluent = confluent
        self._next = next_step
        self._failures = failures.sink(resume=self)  # a registry outage: decoded again after it

    def submit(self, item: Work) -> None:
        try:
            item.request = decode_request(polled(item).value, input_format=self._format, confluent=self._confluent)
        except Exception as exc:  # BadMessage, a registry outage, or anything decode_request missed
            self._failures.fail(item, exc, stage=self.name)
            return
        self._next.submit(item)
