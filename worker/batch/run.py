"""The batch driver: the image path (images/path.py) fed from files, manifests and listings instead of
Kafka, each input ending as one row. The data-path diagram is in docs/architecture.md.

Like the stream's loop, this thread only hands inputs on and collects what finished: it waits on no
fetch, file or device, only on reading the next manifest line or listing page. At most
pipeline.max_in_flight inputs are unfinished at a time; ids already in the output are skipped.
Failures are classified as in the stream (images/failures.py): a record's own failure is its error
row; an outage (S3 or the credentials failing for everyone) or a broken device stops the run with a
FatalError, after what finished is written, and a rerun over the same output goes on from there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from worker.batch.inputs import BatchInput, InputError
from worker.batch.progress import Progress
from worker.batch.records import RowMaker
from worker.batch.sinks import RowSink
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import FatalError, Outage
from worker.formats.encoding import EmbeddingEncoder
from worker.formats.messages import ImageRequest, S3Uri
from worker.images.budget import InFlightBytes
from worker.images.failures import classify
from worker.images.path import build_image_path
from worker.images.wake import Wake, busy_wait
from worker.images.work import Work
from worker.metrics import Metrics
from worker.s3.reader import S3Reader

_MAX_TAKE = 500  # inputs taken per turn, so that finished work is collected often


class Finisher:
    """The end of the image path: each unfinished input becomes its row, a vector or an error.

    The path's next step (a Sink) and the failure sink of all its stages (stages.FailureSink)."""

    def __init__(self, *, rows: RowMaker, sink: RowSink, progress: Progress) -> None:
        self.pending: dict[Work, BatchInput] = {}
        self.fatal: FatalError | None = None  # the run raises it on its next turn
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


class BatchRun:
    def __init__(
        self, *, settings: Settings, embedder: Embedder, sink: RowSink, written: set[str], progress: Progress,
        s3: S3Reader,
    ) -> None:
        model, pipeline = settings.model, settings.pipeline
        encoder = EmbeddingEncoder(field_name=embedder.field_name, model_name=model.model_name,
                                   pretrained=model.pretrained, normalized=model.normalize)
        self._finisher = finisher = Finisher(rows=RowMaker(encoder), sink=sink, progress=progress)
        self._written = written
        self._progress = progress
        self._max_in_flight = pipeline.max_in_flight
        self._grace = pipeline.shutdown_grace_seconds
        self._wake = Wake()  # as the stream's loop: a busy turn waits on the stages' signals
        self._images = build_image_path(
            settings, embedder, s3=s3, next_step=finisher, failures=finisher,
            metrics=Metrics(),  # the stages count into it; batch mode serves no /metrics
            wake=self._wake, budget=InFlightBytes(limit=pipeline.max_in_flight_bytes), local_file=self._path_of,
        )

    def run(self, inputs: Iterable[BatchInput | InputError]) -> None:
        """Every input to a row (or skipped); raises FatalError when the run must stop."""
        remaining = iter(inputs)
        exhausted = False
        images = self._images
        try:
            while not exhausted or self._finisher.pending:
                room = min(_MAX_TAKE, self._max_in_flight - len(self._finisher.pending))
                while not exhausted and room > 0:
                    item = next(remaining, None)
                    if item is None:
                        exhausted = True
                        images.flush()  # no more inputs: the last partial batch goes now
                    else:
                        self._take(item)
                        room -= 1
                images.poll()
                if self._finisher.fatal is not None:
                    raise self._finisher.fatal
                if self._finisher.pending:
                    self._wake.wait(busy_wait(images.seconds_to_deadline(), held=False))  # the stream's bound
        finally:
            images.close(time.monotonic() + self._grace)
            self._wake.close()

    def _take(self, item: BatchInput | InputError) -> None:
        if item.id in self._written:
            self._progress.skipped()
        elif isinstance(item, InputError):
            self._finisher.fail_input(item)
        else:
            work = Work(position=item.position)
            self._finisher.pending[work] = item
            if isinstance(item.location, S3Uri):  # read from S3; one without a request, from its file
                work.request = ImageRequest(id=item.id, uri=item.location, metadata=item.metadata)
            self._images.submit(work)

    def _path_of(self, work: Work) -> Path:
        location = self._finisher.pending[work].location
        assert isinstance(location, Path), "only local inputs are read from files"
        return location
