"""Where the stream sends every stage's failures, by their kind (images/failures.py):

    Outage        -> parked, retried after the outage (outage.py)
    FatalError    -> reported to the loop's Stop (stop.py): the loop stops, committing nothing more
    RecordError   -> dead letter / skip / stop (deadletter.py)
"""

from __future__ import annotations

from worker.errors import FatalError, Outage
from worker.images.failures import classify
from worker.images.work import Work
from worker.stream.deadletter import DeadLetterStage
from worker.stream.outage import OutageGate
from worker.stream.stop import Stop


class FailureRouter:
    def __init__(self, *, dead_letters: DeadLetterStage, outages: OutageGate, stop: Stop) -> None:
        self._dead_letters = dead_letters
        self._outages = outages
        self._stop = stop

    def fail(self, work: Work, error: Exception, *, stage: str) -> None:
        failure = classify(error, stage=stage)
        if isinstance(failure, Outage):
            self._outages.park(work, failure, stage=stage)
        elif isinstance(failure, FatalError):
            self._stop.report(failure)
        else:
            self._dead_letters.fail(work, failure, stage=failure.stage)
