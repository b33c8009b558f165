"""The batch driver: the stream's own stages, fed from files, manifests and listings instead of Kafka.

    inputs            (inputs.py: read lazily, on this thread)
        │  ids already in the output are skipped; at most max_in_flight inputs are unfinished
        ▼
    fetch from S3     (fetch_workers threads)  │  read a local file  (fetch_workers threads, local.py)
        ▼                                        ▼
    decode + preprocess   (preprocess_workers threads; with preprocess_in=processes, S3 objects are
        ▼                  fetched and decoded in decoder processes, as in the stream)
    batcher               (inference_batch_size, or max_batch_wait_ms; flushed once the inputs run out)
        ▼
    embed on the device   (one thread, <= 2 batches outstanding)
        ▼
    one row per input: the output record or an error row (records.py) ─▶ the sink (sinks.py)

Like runtime.py's loop, this thread only hands inputs on and collects what finished: it waits on
no fetch, file or device, only on reading the next manifest line or listing page. Failures are
decided as in the stream (failures.py): a record's own failure is its error row; an outage (S3 or
the credentials failing for everyone) or a broken device stops the run with a FatalError, after
what finished is written, and a rerun over the same output goes on from there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from worker.batch.inputs import BatchInput, InputError
from worker.batch.local import local_fetch_step
from worker.batch.progress import Progress
from worker.batch.records import RowMaker
from worker.batch.sinks import RowSink
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import FatalError, Outage
from worker.formats.encoding import EmbeddingEncoder
from worker.formats.messages import ImageRequest, S3Uri
from worker.images.batching import Batcher
from worker.images.budget import InFlightBytes
from worker.images.failures import classify
from worker.images.inference import InferenceStage
from worker.images.path import (
    after_fetch,
    decoder_stage,
    device_journal,
    device_route,
    fetch_threads,
    preprocess_threads,
)
from worker.images.processes.stage import DecoderStage
from worker.images.stages import FETCH_DEADLINE_GRACE_SECONDS, ThreadStage
from worker.images.wake import Wake
from worker.images.work import Work
from worker.metrics import Metrics
from worker.s3.source import S3Source
from worker.stream.loop import busy_wait

_MAX_TAKE = 500  # inputs taken per turn, so that finished work is collected often


class Finisher:
    """The end of the data path: each unfinished input becomes its row, a vector or an error.

    It is the inference stage's next step and every stage's failure sink (stages.FailureSink)."""

    def __init__(self, *, rows: RowMaker, sink: RowSink, progress: Progress) -> None:
        self.pending: dict[Work, BatchInput] = {}
        self.fatal: FatalError | None = None  # the loop raises it on its next turn
        self._rows = rows
        self._sink = sink
        self._progress = progress

    def submit(self, item: Work) -> None:
        self._sink.embedded(self._rows.embedded(self.pending.pop(item), item))
        self._progress.embedded()

    def fail(self, work: Work, error: Exception, *, stage: str) -> None:
        record_error = classify(error, stage=stage)
        if isinstance(record_error, Outage | FatalError):
            self.fatal = self.fatal or FatalError(f"{stage}: {type(error).__name__}: {error}")
            return
        batch_input = self.pending.pop(work)
        self.fail_input(InputError(id=batch_input.id, source_uri=batch_input.uri, position=batch_input.position,
                                   error=record_error))

    def fail_input(self, failure: InputError) -> None:
        self._sink.failed(self._rows.failed(failure))
        self._progress.failed(type(failure.error).__name__)

    def poll(self) -> None:
        return None

    def close(self, deadline: float) -> None:
        return None


class BatchRun:
    def __init__(
        self, *, settings: Settings, embedder: Embedder, sink: RowSink, written: set[str], progress: Progress,
        s3: S3Source,
    ) -> None:
        model, pipeline = settings.model, settings.pipeline
        encoder = EmbeddingEncoder(field_name=embedder.field_name, model_name=model.model_name,
                                   pretrained=model.pretrained, normalized=model.normalize)
        self._finisher = finisher = Finisher(rows=RowMaker(encoder), sink=sink, progress=progress)
        self._written = written
        self._progress = progress
        self._max_in_flight = pipeline.max_in_flight
        self._grace = pipeline.shutdown_grace_seconds
        timeout = pipeline.record_timeout_seconds
        budget = InFlightBytes(limit=pipeline.max_in_flight_bytes)
        metrics = Metrics()  # the stages count into it; batch mode serves no /metrics
        self._wake = wake = Wake()  # as the stream's loop: a busy turn waits on the stages' signals
        journal = device_journal(settings, embedder)
        inference = InferenceStage(embed=embedder.embed, next_step=finisher, failures=finisher, metrics=metrics,
                                   timeout=timeout, wake=wake, prepare_batch=embedder.prepare_batch, journal=journal)
        self._batcher = Batcher(batch_size=embedder.batch_size, max_wait=pipeline.max_batch_wait_ms / 1000,
                                next_step=inference)
        preprocess = preprocess_threads(settings, embedder, next_step=self._batcher, failures=finisher,
                                        metrics=metrics)
        fetched = after_fetch(journal, preprocess=preprocess, batcher=self._batcher, metrics=metrics)
        route = device_route(embedder)
        fetch_timeout = timeout + FETCH_DEADLINE_GRACE_SECONDS
        max_bytes = settings.s3.max_object_bytes
        self._s3_fetch: ThreadStage | DecoderStage = fetch_threads(
            settings, s3, next_step=fetched, failures=finisher, metrics=metrics, budget=budget, wake=wake, route=route,
        ) if model.preprocess_in == "threads" else decoder_stage(  # S3 objects fetched and decoded in processes
            settings, embedder, next_step=self._batcher, failures=finisher, metrics=metrics, budget=budget,
            wake=wake)
        self._file_fetch = ThreadStage(
            name="read", workers=settings.s3.fetch_workers,
            step=local_fetch_step(self._path_of, max_bytes=max_bytes, read_header=route), next_step=fetched,
            failures=finisher, timeout=fetch_timeout, budget=budget, reserve_bytes=max_bytes, wake=wake,
        )
        self._stages = (self._s3_fetch, self._file_fetch, preprocess, self._batcher, inference)

    def run(self, inputs: Iterable[BatchInput | InputError]) -> None:
        """Every input to a row (or skipped); raises FatalError when the run must stop."""
        remaining = iter(inputs)
        exhausted = False
        try:
            while not exhausted or self._finisher.pending:
                room = min(_MAX_TAKE, self._max_in_flight - len(self._finisher.pending))
                while not exhausted and room > 0:
                    item = next(remaining, None)
                    if item is None:
                        exhausted = True
                        self._batcher.flush()  # no more inputs: the last partial batch goes now
                    else:
                        self._take(item)
                        room -= 1
                self._advance()
                if self._finisher.pending:
                    due = self._batcher.seconds_to_deadline()
                    self._wake.wait(busy_wait(due, held=False))  # the stream's bound on a busy turn
        finally:
            deadline = time.monotonic() + self._grace
            for stage in self._stages:
                stage.close(deadline)
            self._wake.close()

    def _take(self, item: BatchInput | InputError) -> None:
        if item.id in self._written:
            self._progress.skipped()
        elif isinstance(item, InputError):
            self._finisher.fail_input(item)
        else:
            work = Work(position=item.position)
            self._finisher.pending[work] = item
            if isinstance(item.location, S3Uri):
                work.request = ImageRequest(id=item.id, uri=item.location, metadata=item.metadata)
                self._s3_fetch.submit(work)
            else:
                self._file_fetch.submit(work)

    def _advance(self) -> None:
        for stage in self._stages:
            stage.poll()
        if self._finisher.fatal is not None:
            raise self._finisher.fatal

    def _path_of(self, work: Work) -> Path:
        location = self._finisher.pending[work].location
        assert isinstance(location, Path), "only local inputs are read from files"
        return location
