"""Where every stage's failures go, decided once by the failure's class (worker/errors.py).

    Outage        (S3, credentials, registry)   -> parked, retried after the outage (outage.py)
    FatalError    (the device is broken, ...)   -> the worker stops, committing nothing more
    RecordError   (this record can never work)  -> dead letter / skip / stop (deadletter.py)
    anything else (a bug, an unknown error)     -> UnexpectedError: this record's failure, never a crash
"""

from __future__ import annotations

from worker.errors import FatalError, Outage, RecordError, UnexpectedError
from worker.images.work import Work
from worker.stream.deadletter import DeadLetterStage
from worker.stream.outage import OutageGate


class FailureRouter:
    def __init__(self, *, dead_letters: DeadLetterStage, outages: OutageGate) -> None:
        self._dead_letters = dead_letters
        self._outages = outages
        self.fatal: FatalError | None = None  # the runtime raises it on its next turn

    def fail(self, work: Work, error: Exception, *, stage: str) -> None:
        if isinstance(error, Outage):
            self._outages.park(work, error, stage=stage)
        elif isinstance(error, FatalError):
            self.fatal = self.fatal or error
        elif isinstance(error, RecordError):
            self._dead_letters.fail(work, error, stage=error.stage)
        else:
            self._dead_letters.fail(work, UnexpectedError(error, stage=stage), stage=stage)
