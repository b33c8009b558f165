"""The in-flight byte budget: how much memory the records between poll and delivery hold.

A record count alone does not bound memory: 1,024 records of 30 MB objects are 30 GB. So the bytes
every live record holds (its fetch reservation, fetched bytes and prepared tensor: Work.nbytes) are
counted too: the start of new fetches (stages.py) waits while the budget, reservations included, is
spent, and the input (backpressure.py) pauses while the bytes actually held reach it. Records are
tracked by weak reference from the moment a stage admits it to a fetch (records queued before that
hold only their message, and leaving them out keeps the walk short: most of max_in_flight waits
there), and counted for exactly as long as something still holds it - a pool thread, the batcher,
the emitter - stale work of a revoked partition included, and no stage has to remember to hand its
bytes back. Only a fetch's reservation is handed back, by the stage that made it, as it takes the
fetch's outcome (`settle`).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from worker.images.work import Work


class InFlightBytes:
    """Counts live records' bytes in a walk, and fetch reservations exactly, as they are made and
    settled (on the main thread).

    The walk visits every live record (hundreds when fetches run ahead of preprocessing), which costs
    the main thread much of its time if it runs every turn (measured in BENCHMARKS.md). Between
    walks, a count errs on the safe side: bytes only shrink (an object becomes a smaller tensor), and
    a settled fetch's bytes are added until the walk counts them. So a walk runs only when that upper
    bound would give a different answer - a fetch it would not admit, held bytes at half the limit,
    where backpressure decides - at most every `every` seconds, and else once every `refresh`
    seconds, for the gauge. Reservations must not wait for the walk: freed only there, they would cap
    the fetches admitted to one budget's worth per walk, whatever the cores."""

    def __init__(
        self, *, limit: int, every: float = 0.1, refresh: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self._live: weakref.WeakSet[Work] = weakref.WeakSet()
        self._every = every
        self._refresh = refresh
        self._clock = clock
        self._held = 0  # bytes the live records held at the last walk, reservations left out
        self._settled = 0  # bytes of fetches settled since the last walk, which will count them
        self._reserved = 0  # reservations outstanding now
        self._counted_at = float("-inf")

    def held(self) -> int:
        """Bytes actually held, reservations left out (pausing the input cannot shrink a reservation,
        and counting them there made the input flap on small objects); an upper bound below half the
        limit, where backpressure neither pauses nor resumes on it."""
        self._recount(unsure=2 * (self._held + self._settled) >= self.limit)
        return self._held + self._settled

    def admits(self, nbytes: int) -> bool:
        """Whether a fetch of up to `nbytes` may start now: the budget has room for its reservation,
        or nothing at all is held (a limit below the reservation still lets one in at a time)."""
        self._recount(unsure=self._room() < nbytes)
        room = self._room()
        return room >= nbytes or room >= self.limit

    def reserve(self, work: Work, nbytes: int) -> None:
        """`work` starts a fetch of up to `nbytes`: held for it until `settle`."""
        work.reserved = nbytes
        self._reserved += nbytes
        self._live.add(work)

    def settle(self, work: Work, reserved: int) -> None:
        """The fetch that reserved `reserved` bytes for `work` has ended (fetched, failed or given up):
        from now on it holds what it holds."""
        work.reserved = 0
        self._reserved -= reserved
        self._settled += work.nbytes

    def _room(self) -> int:
        return self.limit - (self._held + self._settled + self._reserved)

    def _recount(self, *, unsure: bool) -> None:
        now = self._clock()
        since = now - self._counted_at
        if since < (self._every if unsure else self._refresh):
            return
        held = 0
        for work in list(self._live):
            held += work.nbytes - work.reserved
        self._held, self._settled, self._counted_at = held, 0, now
