"""The device stage: one thread runs the embedder on whole batches, so the GPU never waits on the
main thread and the main thread never waits on the GPU.

At most `max_batches` batches are outstanding (one on the device, one ready behind it), so that
preprocessing of the next batch overlaps inference of this one without queueing unbounded work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from worker.engine import PreparedImage
from worker.errors import EmbedError
from worker.metrics import Metrics
from worker.pipeline.pool import WorkPool
from worker.pipeline.stages import FailureSink, Receiver
from worker.pipeline.work import Work

EmbedFn = Callable[[Sequence[PreparedImage]], list[np.ndarray | EmbedError]]


class InferenceStage:
    def __init__(
        self, *, embed: EmbedFn, next: Receiver, failures: FailureSink, metrics: Metrics, max_batches: int = 2
    ) -> None:
        self._embed = embed
        self._metrics = metrics
        self._pool: WorkPool[list[Work], list[np.ndarray | EmbedError]] = WorkPool(
            name="device", workers=1, fn=self._run
        )
        self._next = next
        self._failures = failures
        self._max_batches = max_batches

    def _run(self, batch: list[Work]) -> list[np.ndarray | EmbedError]:
        started = time.perf_counter()
        images = []
        for work in batch:
            assert work.prepared is not None, "only preprocessed work reaches the device"
            images.append(work.prepared)
        results = self._embed(images)
        self._metrics.inference_seconds.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(len(batch))
        return results

    def has_room(self) -> bool:
        return self._pool.outstanding < self._max_batches

    def submit_batch(self, batch: list[Work]) -> None:
        self._pool.submit(batch)

    def poll(self) -> None:
        for batch, outcome in self._pool.finished():
            if isinstance(outcome, BaseException):  # the embedder broke its contract: every record fails
                for work in batch:
                    self._failures.fail(work, EmbedError(f"batch failed: {outcome!r}"), stage="embed")
                continue
            for work, result in zip(batch, outcome, strict=True):
                work.prepared = None
                if isinstance(result, EmbedError):
                    self._failures.fail(work, result, stage="embed")
                else:
                    work.embedding = result
                    self._next.submit(work)


    def close(self) -> None:
        self._pool.shutdown()
