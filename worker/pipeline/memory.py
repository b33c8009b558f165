"""The in-flight byte budget: how much memory the records between poll and delivery hold.

A record count alone does not bound memory: 1,024 records of 30 MB objects are 30 GB. So the bytes
every live record holds (its fetch reservation, fetched bytes and prepared tensor: Work.nbytes) are
counted too, and both the input (backpressure.py) and the start of new fetches (stages.py) wait while
the budget is spent. Records are tracked by weak reference: a record is counted for exactly as long as
something still holds it - a pool thread, the batcher, the emitter - stale work of a revoked
partition included, and no stage has to remember to hand its bytes back.
"""

from __future__ import annotations

import weakref

from worker.pipeline.work import Work


class InFlightBytes:
    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self._live: weakref.WeakSet[Work] = weakref.WeakSet()

    def track(self, work: Work) -> None:
        self._live.add(work)

    def total(self) -> int:
        return sum(work.nbytes for work in list(self._live))

    def room(self) -> int:
        """Bytes that may still be taken on (negative when over the limit)."""
        return self.limit - self.total()
