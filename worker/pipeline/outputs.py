"""The output stage: each embedded record becomes one Avro record on the output topic, keyed by id."""

from __future__ import annotations

from confluent_kafka import KafkaError

from worker.encoding import EmbeddingEncoder
from worker.errors import EncodeError, OutputRejected
from worker.metrics import Metrics
from worker.pipeline.deadletter import DeadLetterStage
from worker.pipeline.produce import Emitter, OutRecord
from worker.pipeline.work import Work


class OutputStage:
    def __init__(
        self,
        *,
        emitter: Emitter,
        encoder: EmbeddingEncoder,
        topic: str,
        dead_letters: DeadLetterStage,
        metrics: Metrics,
    ) -> None:
        self._emitter = emitter
        self._encoder = encoder
        self._topic = topic
        self._dead_letters = dead_letters
        self._metrics = metrics

    def submit(self, work: Work) -> None:
        assert work.request is not None and work.embedding is not None
        try:
            value = self._encoder.encode(
                request=work.request, embedding=work.embedding, source=work.source, topic=self._topic
            )
        except EncodeError as exc:
            self._dead_letters.fail(work, exc, stage=exc.stage)
            return
        record = OutRecord(
            topic=self._topic, key=work.request.id.encode(), value=value, headers=self._encoder.headers
        )
        self._emitter.emit(work, record, on_done=self._done, on_refused=self._refused)

    def _done(self, work: Work) -> None:
        self._metrics.embedded.inc()
        self._dead_letters.record_success()

    def _refused(self, work: Work, err: KafkaError) -> None:
        # Outside transactions the delivery timeout is infinite, so an error here is a refusal for good.
        self._dead_letters.fail(work, OutputRejected(f"output record refused: {err.str()}"), stage="produce")
