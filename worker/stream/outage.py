"""Outages are not bad records: park the records, pause the input, retry with a capped backoff.

S3 down past every attempt, credentials that expired, a schema registry that does not answer: the
records that ran into these are fine, so they must not go to the dead-letter topic, and their
offsets must not be committed. They are parked here, each with the stage object it goes back to
(the one that failed it, failures.py). While
anything is parked the runtime pauses the input (nothing new piles up behind the outage), and every
`wait` seconds (doubling up to a cap) the parked records are handed back to their stages. The first
record that then succeeds ends the outage. One log line and a metric per change of state, not per
record: an operator sees "outage began (s3)" and "outage over after 63 s".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.errors import Outage
from worker.formats.positions import Partition
from worker.images.stages import Sink
from worker.images.work import Work
from worker.metrics import Metrics
from worker.stream.inputs import kafka_position
from worker.text import safe_text

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Parked:
    work: Work
    resume: Sink[Work]  # where it is submitted again once the outage may be over


class OutageGate:
    def __init__(
        self, *, initial_wait: float, max_wait: float, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._initial = initial_wait
        self._max = max_wait
        self._metrics = metrics
        self._clock = clock
        self._parked: list[Parked] = []
        self._cause: str | None = None
        self._began = 0.0
        self._wait = initial_wait
        self._retry_at = 0.0

    @property
    def active(self) -> bool:
        """True from the first parked record until a record succeeds again."""
        return self._cause is not None

    def park(self, work: Work, error: Outage, *, resume: Sink[Work]) -> None:
        """Hold `work` until the next retry, when it is submitted to `resume` again."""
        self._parked.append(Parked(work, resume))
        if self._cause is None:
            self._cause, self._began, self._wait = error.cause, self._clock(), self._initial
            self._retry_at = self._began + self._wait
            self._metrics.outage.labels(cause=error.cause).set(1)
            log.warning("outage began (%s): %s; input paused, retrying every %.0f-%.0f s",
                        error.cause, safe_text(error), self._initial, self._max)

    def poll(self) -> None:
        if not self._parked or self._clock() < self._retry_at:
            return
        parked, self._parked = self._parked, []
        self._wait = min(self._max, self._wait * 2)
        self._retry_at = self._clock() + self._wait
        self._metrics.outage_retries.inc(len(parked))
        for item in parked:
            item.resume.submit(item.work)

    def record_success(self) -> None:
        """A record made it through: whatever was down is up again."""
        if self._cause is not None:
            self._end(f"outage over ({self._cause}) after {self._clock() - self._began:.0f} s")
        self._retry_at = self._clock()  # what is still parked goes back at once

    def forget(self, tp: Partition | None = None) -> None:
        """Drop parked records of a partition given up (all, when None): the next owner redoes them."""
        self._parked = [] if tp is None else [p for p in self._parked if kafka_position(p.work).tp != tp]
        if not self._parked and self._cause is not None:
            self._end(f"outage ({self._cause}): no parked record left to retry here")

    def _end(self, message: str) -> None:
        assert self._cause is not None
        log.warning("%s", message)
        self._metrics.outage.labels(cause=self._cause).set(0)
        self._cause = None
