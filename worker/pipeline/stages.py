"""The per-record stages: fetch from S3, then decode and preprocess, each on its own threads.

Like every stage, each has submit() (hand it work), poll() (move what finished on, never blocks)
and close(). Failures go to the failure sink with the stage they happened in; successes to `next`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from worker.engine import PreparedImage
from worker.errors import RecordError, SourceError
from worker.metrics import Metrics
from worker.pipeline.pool import WorkPool
from worker.pipeline.work import Work
from worker.source import S3Source


class Receiver(Protocol):
    def submit(self, work: Work) -> None: ...


class FailureSink(Protocol):
    def fail(self, work: Work, error: Exception, *, stage: str) -> None: ...


class ThreadStage:
    """Runs `step(work)` on a pool of threads; step fills in a field of the work or raises."""

    def __init__(
        self,
        *,
        name: str,
        workers: int,
        step: Callable[[Work], None],
        next: Receiver,
        failures: FailureSink,
    ) -> None:
        self.name = name
        self._pool: WorkPool[Work, None] = WorkPool(name=name, workers=workers, fn=step)
        self._next = next
        self._failures = failures

    def submit(self, work: Work) -> None:
        self._pool.submit(work)

    def poll(self) -> None:
        for work, outcome in self._pool.finished():
            if isinstance(outcome, BaseException):
                stage = outcome.stage if isinstance(outcome, RecordError) else self.name
                self._failures.fail(work, _as_exception(outcome), stage=stage)
            else:
                self._next.submit(work)


    def close(self) -> None:
        self._pool.shutdown()


def fetch_step(source: S3Source, metrics: Metrics) -> Callable[[Work], None]:
    """Read the image bytes of a decoded request; counts attempts for the dead-letter headers."""

    def step(work: Work) -> None:
        assert work.request is not None, "the fetch stage only takes decoded requests"
        try:
            work.data, work.fetch_attempts = source.fetch(work.request.uri)
        except SourceError as exc:
            work.fetch_attempts = exc.attempts
            metrics.fetch_retries.inc(max(0, exc.attempts - 1))
            raise
        metrics.fetched_bytes.inc(len(work.data))
        metrics.fetch_retries.inc(work.fetch_attempts - 1)

    return step


def preprocess_step(prepare: Callable[[bytes], PreparedImage]) -> Callable[[Work], None]:
    """Decode and preprocess the fetched bytes; the bytes are dropped once the image is prepared."""

    def step(work: Work) -> None:
        assert work.data is not None, "the preprocess stage only takes fetched work"
        work.prepared = prepare(work.data)
        work.data = None

    return step


def _as_exception(error: BaseException) -> Exception:
    return error if isinstance(error, Exception) else RuntimeError(repr(error))
