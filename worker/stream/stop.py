"""The one channel a stop travels by: a fatal condition is recorded here, and only the loop acts on it.

A fatal condition - the stop policy, the dead-letter streak, a refused dead letter, a broken device,
a fenced client - can arise deep inside a stage: on a pool's result, in a delivery callback that
producer.poll() runs, in the decoder of one message. Raised there, it would leave through whatever
poll() or submit() happened to call it, cutting that stage's turn short and skipping the rest of the
loop's. So every component reports it here instead (the first report wins: it is the cause, what
follows is its consequence), and the loop checks after each step of a turn and raises it itself.

Once stopped, the failure path does nothing more with a record (deadletter.py): no dead letter, no
count, no offset finished. The restarted worker redoes it from the committed offsets.
"""

from __future__ import annotations

import logging

from worker.errors import FatalError

log = logging.getLogger(__name__)


class Stop:
    """The first fatal condition reported, for the loop to raise (loop.py, Runtime.step)."""

    def __init__(self) -> None:
        self._reason: FatalError | None = None

    def report(self, error: FatalError) -> None:
        """Record that the worker must stop; a later report is only logged, the first is the cause."""
        if self._reason is None:
            self._reason = error
        elif error is not self._reason:
            log.debug("stopping already (%s); also: %s", self._reason, error)

    @property
    def reason(self) -> FatalError | None:
        """Why the worker must stop, or None while it may go on."""
        return self._reason

    def clear(self, reason: FatalError) -> None:
        """Forget `reason` once it has been dealt with without stopping (a Kafka client replaced, clients.py)."""
        if self._reason is reason:
            self._reason = None
