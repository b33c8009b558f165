"""What went wrong with one input, as the failure taxonomy (worker/errors.py) names it, decided once
for both drivers:

    Outage        the environment failed (S3, credentials, the registry): not the input's fault
    FatalError    the worker cannot go on (a broken device, a fenced client, the stop policy)
    RecordError   this input can never succeed: a dead letter in the stream, an error row in batch mode
    anything else a bug or an error no boundary translated: UnexpectedError, this input's failure
"""

from __future__ import annotations

from worker.errors import FatalError, Outage, RecordError, UnexpectedError


def classify(error: Exception, *, stage: str) -> Outage | FatalError | RecordError:
    """The error as one of the three kinds a driver acts on; never raises."""
    if isinstance(error, Outage | FatalError | RecordError):
        return error
    return UnexpectedError(error, stage=stage)
