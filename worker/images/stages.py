"""The Stage contract, the thread-pool stage, and the steps it runs: fetch the bytes, preprocess them.

Every stage honours one contract (after arroyo's ProcessingStrategy):
- ``submit(item)`` hands it work and never blocks;
- ``poll()`` moves what finished to ``next_step`` (a Sink: successes) or to the failure sink, never blocks;
- ``close(deadline)`` stops it, waiting for running work no later than ``deadline`` (monotonic).
Positions travel with the data (Work.position), so any stage may finish a record in any order.

A stage never lets an exception escape for one record: whatever its step raises becomes that
record's failure (failures.py decides between dead letter, outage and stop).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar

from prometheus_client import Histogram

from worker.engine import PreparedImage
from worker.engine.gpu_decode import ReadHeader
from worker.errors import RecordTimeout, SourceError, SourceOutage, UnexpectedError
from worker.images.budget import InFlightBytes
from worker.images.pool import WorkPool
from worker.images.wake import Wake
from worker.images.work import Work
from worker.metrics import Metrics
from worker.s3.reader import S3Reader

T_contra = TypeVar("T_contra", contravariant=True)
# The fetch stage's watchdog waits this much past record_timeout_seconds: the fetch judges its own
# deadline first, and only it can tell an outage (nothing served) from the record's own slowness.
FETCH_DEADLINE_GRACE_SECONDS = 5.0
# A stage with a byte budget hands each thread one record to run and one queued, so that a turn of
# the loop refills a whole round. With one each, the loop woke every time a quarter of the threads
# fell free, and each turn costs the main thread time of its own (measured in BENCHMARKS.md).
_ROUNDS_QUEUED = 2


class Sink(Protocol[T_contra]):
    """Where a stage hands what it finished: the next stage, a router, or a driver's end of the path."""

    def submit(self, item: T_contra) -> None: ...


class Stage(Sink[T_contra], Protocol[T_contra]):
    """A step of the data path that works on its own threads or processes (the contract above)."""

    def poll(self) -> None: ...

    def close(self, deadline: float) -> None: ...


class FailureSink(Protocol):
    """Where a stage hands a record that failed; the driver decides what the failure means (failures.py)."""

    def fail(self, work: Work, error: Exception, *, stage: str) -> None: ...


class ThreadStage:
    """Runs `step(work)` on a pool of threads; step fills in a field of the work or raises.
    How long each step took is observed in `seconds` (when given) on the step's own thread, off the
    main thread.

    With `reserve_bytes`, a record starts only while the in-flight byte budget has that much room
    (or nothing at all is held): it holds the reservation until its step replaces it with
    what it really holds. Records queue here meanwhile, costing nothing but their message.
    Records start only on the loop's turns, so each thread gets one running and one queued: with
    `wake`, the loop is woken (wake.py) once as many records finished as there are threads, or a
    thread finds its queue empty, while records wait here. A turn then hands out a whole round, and
    threads do not wait out the loop's busy poll.
    """

    def __init__(
        self,
        *,
        name: str,
        workers: int,
        step: Callable[[Work], None],
        next_step: Sink[Work],
        failures: FailureSink,
        timeout: float,
        seconds: Histogram | None = None,
        budget: InFlightBytes | None = None,
        reserve_bytes: int = 0,
        wake: Wake | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._step = step
        self._wake = wake
        self._pool: WorkPool[Work, None] = WorkPool(
            name=name, workers=workers, fn=self._timed, clock=clock,
            signal=self._signal if wake else None, signal_after=workers)
        self._next = next_step
        self._failures = failures
        self._timeout = timeout
        self._seconds = seconds
        self._budget = budget
        self._reserve = reserve_bytes
        self._admitted = _ROUNDS_QUEUED * workers  # running and queued: reservations are taken for both
        self._waiting: deque[Work] = deque()

    def submit(self, item: Work) -> None:
        if self._reserve:
            self._waiting.append(item)  # admitted in poll(): one count of the budget per turn, not per record
            return
        self._pool.submit(item)

    def poll(self) -> None:
        for work, outcome in self._pool.finished():
            if self._reserve:
                self._settle(work)
            if isinstance(outcome, BaseException):
                self._failures.fail(work, _record_failure(outcome, self.name), stage=self.name)
            else:
                self._next.submit(work)
        for work in self._pool.expired(self._timeout):
            work.data = None  # the thread may still hold it; the budget no longer does
            if self._reserve:
                self._settle(work)
            self._failures.fail(
                work, RecordTimeout(f"{self.name} took longer than {self._timeout:.0f} s", stage=self.name),
                stage=self.name,
            )
        if self._waiting:
            self._admit()

    def close(self, deadline: float) -> None:
        self._waiting.clear()
        self._pool.close(deadline)

    def _signal(self) -> None:
        """On a pool thread, once a round of records is done or a thread finds nothing queued: the loop
        turns to give the threads the records waiting here. With none waiting it need not: a finished
        record moves on at the next turn, and waking for it cost the main thread more than it gave
        (measured in BENCHMARKS.md)."""
        if self._waiting and self._wake is not None:
            self._wake.signal()

    def _timed(self, work: Work) -> None:
        if self._seconds is None:
            self._step(work)
            return
        started = time.perf_counter()
        try:
            self._step(work)
        finally:
            self._seconds.observe(time.perf_counter() - started)

    def _admit(self) -> None:
        assert self._budget is not None, "reserve_bytes needs a budget"
        budget = self._budget
        while self._waiting and self._pool.outstanding < self._admitted and budget.admits(self._reserve):
            work = self._waiting.popleft()
            budget.reserve(work, self._reserve)  # from here on it holds bytes; waiting, only its message
            self._pool.submit(work)

    def _settle(self, work: Work) -> None:
        assert self._budget is not None, "reserve_bytes needs a budget"
        self._budget.settle(work, self._reserve)


def _record_failure(error: BaseException, stage: str) -> Exception:
    """What a step raised, as an Exception the sink takes (a BaseException from a thread is wrapped)."""
    return error if isinstance(error, Exception) else UnexpectedError(error, stage=stage)


def keep_fetched(work: Work, data: bytes, read_header: ReadHeader | None) -> None:
    """What every fetch step (this module's for S3, batch/local.py's for files) keeps of the bytes it read:
    the bytes, their SHA-256 for the output record, taken off the main thread, and with `read_header`
    (Embedder.device_header) the header that says where the image will be decoded."""
    work.data = data
    work.sha256 = hashlib.sha256(data).hexdigest()
    if read_header is not None:
        work.jpeg = read_header(data)


def fetch_step(
    source: S3Reader, metrics: Metrics, *, timeout: float, read_header: ReadHeader | None = None
) -> Callable[[Work], None]:
    """Read the image bytes of a decoded request (keep_fetched); counts attempts for the dead-letter headers."""

    def step(work: Work) -> None:
        assert work.request is not None, "the fetch stage only takes decoded requests"
        try:
            data, work.fetch_attempts = source.fetch(work.request.uri, deadline=time.monotonic() + timeout)
        except (SourceError, SourceOutage) as exc:
            work.fetch_attempts = exc.attempts
            metrics.fetch_retries.inc(max(0, exc.attempts - 1))
            raise
        keep_fetched(work, data, read_header)
        metrics.fetched_bytes.inc(len(data))
        metrics.fetch_retries.inc(work.fetch_attempts - 1)

    return step


def preprocess_step(prepare: Callable[[bytes], PreparedImage]) -> Callable[[Work], None]:
    """Decode and preprocess the fetched bytes; the bytes are dropped once the image is prepared, and
    the image's own size is kept for the output record after the tensor is dropped too."""

    def step(work: Work) -> None:
        assert work.data is not None, "the preprocess stage only takes fetched work"
        prepared = work.prepared = prepare(work.data)
        work.width, work.height = prepared.width, prepared.height
        work.data = None

    return step

