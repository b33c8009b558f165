"""The device stage: one thread runs the embedder on whole batches, so the GPU never waits on the
main thread and the main thread never waits on the GPU.

At most `max_batches` batches are outstanding (one on the device, one ready behind it), so that
preprocessing of the next batch overlaps inference of this one without queueing unbounded work.

With model.decode on the device, records whose JPEG the fetch found baseline arrive here as bytes:
this thread decodes them as one batch first (Embedder.prepare_batch), so the decode's kernels queue
on the device ahead of the forward pass, and an image the device cannot decode is prepared on the CPU.
Their positions are in the device journal from just before the decode until the batch's embeddings are
back on the host: if the decoder takes the worker down, the next one decodes them on the CPU.

Per-record failures (EmbedError: a zero or non-finite embedding, an image that breaks the kernel
alone; the ImageError of an image no decoder could read) are the record's. A device in a bad state
is not: the embedder raises DeviceFailed when even a known-good input fails, and a batch still
running past `timeout` means the device is stuck. Either stops the worker without committing the
batch, for a restart with a fresh device context; no record of it reaches the dead-letter topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from worker.engine import PreparedBatch, PreparedImage
from worker.engine.gpu_decode import JpegHeader
from worker.errors import DeviceFailed, EmbedError, ImageError
from worker.images.device.journal import DeviceJournal
from worker.images.pool import WorkPool
from worker.images.stages import FailureSink
from worker.images.wake import Wake
from worker.images.work import Work
from worker.metrics import Metrics
from worker.stream.sink import Sink  # until Sink moves to images/stages.py

EmbedFn = Callable[[Sequence[PreparedImage]], list[np.ndarray | EmbedError]]
PrepareBatchFn = Callable[[Sequence[bytes], Sequence[JpegHeader | None]], PreparedBatch]
Outcome = np.ndarray | EmbedError | ImageError


class InferenceStage:
    name = "embed"

    def __init__(
        self, *, embed: EmbedFn, next_step: Sink[Work], failures: FailureSink, metrics: Metrics, timeout: float,
        encode: Callable[[Work], None] | None = None, max_batches: int = 2, wake: Wake | None = None,
        prepare_batch: PrepareBatchFn | None = None, journal: DeviceJournal | None = None,
    ) -> None:
        """`encode(work)`, when given, runs on this thread for each embedded record (outputs.py), so
        the main thread receives records ready to produce: one hand-off, no Avro on the main thread.
        `wake` is signalled as each batch finishes: the loop hands the device its next batch at once.
        `prepare_batch` decodes the records that arrive as bytes (Work.jpeg, the header the fetch read),
        each held in `journal` meanwhile; the stage closes the journal."""
        self._embed = embed
        self._prepare_batch = prepare_batch
        self._journal = journal
        self._encode = encode
        self._metrics = metrics
        self._pool: WorkPool[list[Work], list[Outcome]] = WorkPool(
            name="device", workers=1, fn=self._run, signal=wake.signal if wake else None
        )
        self._next = next_step
        self._failures = failures
        self._timeout = timeout
        self._max_batches = max_batches

    def _run(self, batch: list[Work]) -> list[Outcome]:
        for work in batch:
            self._metrics.batch_wait_seconds.observe(work.batch_wait)
        started = time.perf_counter()
        refused = self._decode(batch)
        images = []
        for work in batch:
            if work.prepared is not None:
                images.append(work.prepared)
        embedded = iter(self._embed(images))  # back on the host: the device is done with the batch
        if self._journal is not None:
            self._journal.release()
        results: list[Outcome] = [refused[i] if i in refused else next(embedded) for i in range(len(batch))]
        self._metrics.inference_seconds.observe(time.perf_counter() - started)
        images.clear()
        for work in batch:  # freed here, not on the main thread (a tensor's or a slot's release)
            work.prepared = None
        self._metrics.batch_size.observe(len(batch))
        if self._encode is not None:
            for work, result in zip(batch, results, strict=True):
                if isinstance(result, np.ndarray):
                    work.embedding = result
                    self._encode(work)
        return results

    def _decode(self, batch: list[Work]) -> dict[int, ImageError]:
        """Decode the records that came as bytes; the ImageError of each that no decoder could read, by position."""
        pending = [i for i, work in enumerate(batch) if work.prepared is None]
        if not pending:
            return {}
        assert self._prepare_batch is not None and self._journal is not None, (
            "only preprocessed work reaches a device that does not decode")
        blobs = []
        for i in pending:
            data = batch[i].data
            assert data is not None, "a record that comes as bytes has its bytes"
            blobs.append(data)
        self._journal.hold([batch[i].position for i in pending])
        decoded = self._prepare_batch(blobs, [batch[i].jpeg for i in pending])
        self._metrics.device_decoded.inc(len(pending) - decoded.on_cpu)
        self._metrics.device_decode_refused.inc(decoded.on_cpu)
        refused: dict[int, ImageError] = {}
        for i, prepared in zip(pending, decoded.images, strict=True):
            work = batch[i]
            work.data = None
            if isinstance(prepared, ImageError):
                refused[i] = prepared
            else:
                work.prepared = prepared
                work.width, work.height = prepared.width, prepared.height
        return refused

    def has_room(self) -> bool:
        return self._pool.outstanding < self._max_batches

    def submit(self, item: list[Work]) -> None:
        """Take a batch from the batcher (main thread); how long each image waited for its batch is
        observed on the device thread, off the main thread."""
        left = time.monotonic()
        for work in item:
            work.batch_wait = left - work.ready_at
        self._pool.submit(item)

    def poll(self) -> None:
        for batch, outcome in self._pool.finished():
            if isinstance(outcome, BaseException):  # DeviceFailed, or the embedder broke its contract
                error = outcome if isinstance(outcome, DeviceFailed) else DeviceFailed(f"batch failed: {outcome!r}")
                self._failures.fail(batch[0], error, stage=self.name)
                continue
            for work, result in zip(batch, outcome, strict=True):
                if isinstance(result, ImageError):  # a device-path image no decoder could read
                    self._failures.fail(work, result, stage="preprocess")
                elif isinstance(result, EmbedError):
                    self._failures.fail(work, result, stage=self.name)
                else:
                    work.embedding = result
                    self._next.submit(work)
        for batch in self._pool.expired(self._timeout):
            self._failures.fail(
                batch[0], DeviceFailed(f"a batch of {len(batch)} ran past {self._timeout:.0f} s"), stage=self.name
            )

    def close(self, deadline: float) -> None:
        self._pool.close(deadline)
        if self._journal is not None:
            self._journal.close()
