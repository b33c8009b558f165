"""The in-flight byte budget: how much memory the records between poll and delivery hold.

A record count alone does not bound memory: 1,024 records of 30 MB objects are 30 GB. So the bytes
every live record holds (its fetch reservation, fetched bytes and prepared tensor: Work.nbytes) are
counted too: the start of new fetches (stages.py) waits while the budget, reservations included, is
spent, and the input (backpressure.py) pauses while the bytes actually held reach it. Records are
tracked by weak reference from the moment a stage admits it to a fetch (records queued before that
hold only their message, and leaving them out keeps the walk short: most of max_in_flight waits
there), and counted for exactly as long as something still holds it - a pool thread, the batcher,
the emitter - stale work of a revoked partition included, and no stage has to remember to hand its
bytes back.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from worker.pipeline.work import Work


class InFlightBytes:
    """Counts live records' bytes in one walk, at most every `every` seconds, and keeps both sums: with
    reservations (`room`) and without (`held`). The walk visits every live record (hundreds when fetches
    run ahead of preprocessing): every 20 ms it was half of the main thread's time (py-spy --gil). A
    stale count errs on the safe side: between walks bytes only shrink (a reservation becomes an object
    no larger, an object a smaller tensor) and new reservations are added as they are made."""

    def __init__(self, *, limit: int, every: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._live: weakref.WeakSet[Work] = weakref.WeakSet()
        self._every = every
        self._clock = clock
        self._total = 0  # held and reserved: what new fetches must fit beside
        self._held = 0  # held only: what pausing the input responds to
        self._counted_at = float("-inf")

    def track(self, work: Work) -> None:
        self._live.add(work)

    def held(self) -> int:
        """Bytes actually held, reservations left out. Pausing the input cannot shrink a reservation,
        and counting them there made the input flap on small objects."""
        self._recount()
        return self._held

    def room(self) -> int:
        """Bytes that may still be taken on (negative when over the limit), lowered by each
        reservation made since the last count (`reserve`)."""
        self._recount()
        return self.limit - self._total

    def reserve(self, nbytes: int) -> None:
        self._total += nbytes

    def _recount(self) -> None:
        now = self._clock()
        if now - self._counted_at < self._every:
            return
        total = reserved = 0
        for work in list(self._live):
            total += work.nbytes
            reserved += work.reserved
        self._total, self._held, self._counted_at = total, total - reserved, now
