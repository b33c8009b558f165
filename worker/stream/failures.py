"""Where the stream sends every stage's failures, by their kind (images/failures.py):

    Outage        -> parked, and retried into the stage the failing sink resumes at (outage.py)
    FatalError    -> reported to the loop's Stop (stop.py): the loop stops, committing nothing more
    RecordError   -> dead letter / skip / stop (deadletter.py)

Each stage (or the image path as a whole) fails records into its own StageFailures, which knows the
stage object a parked record goes back to: a retry needs no lookup by the stage's name, and a stage
that can park records but was given nowhere to resume them is a wiring bug, found on its first outage.
"""

from __future__ import annotations

from worker.errors import FatalError, Outage
from worker.images.failures import classify
from worker.images.stages import Sink
from worker.images.work import Work
from worker.stream.deadletter import DeadLetters
from worker.stream.outage import OutageGate
from worker.stream.stop import Stop


class FailureRouter:
    def __init__(self, *, dead_letters: DeadLetters, outages: OutageGate, stop: Stop) -> None:
        self._dead_letters = dead_letters
        self._outages = outages
        self._stop = stop

    def sink(self, resume: Sink[Work] | None = None) -> StageFailures:
        """The failure sink of one stage: a record it parks resumes at `resume` (or, for a stage that takes
        its sink when it is built, at the stage given to StageFailures.resume_at once it exists)."""
        return StageFailures(self, resume)

    def route(self, work: Work, error: Exception, *, stage: str, resume: Sink[Work] | None) -> None:
        """`stage` names where it failed, for the metrics and the dead letter; `resume` is where it retries."""
        failure = classify(error, stage=stage)
        if isinstance(failure, Outage):
            assert resume is not None, f"{stage} parked a record with nowhere to resume it"
            self._outages.park(work, failure, resume=resume)
        elif isinstance(failure, FatalError):
            self._stop.report(failure)
        else:
            self._dead_letters.fail(work, failure, stage=failure.stage)


class StageFailures:
    """A FailureSink (images/stages.py) bound to the stage its parked records resume at."""

    def __init__(self, router: FailureRouter, resume: Sink[Work] | None) -> None:
        self._router = router
        self._resume = resume

    def resume_at(self, stage: Sink[Work]) -> None:
        """Bind the stage that was built with this sink; once, before the first record."""
        assert self._resume is None, "a failure sink resumes at one stage"
        self._resume = stage

    def fail(self, work: Work, error: Exception, *, stage: str) -> None:
        self._router.route(work, error, stage=stage, resume=self._resume)
