"""Which offsets may be committed: per partition, the lowest contiguous finished offset + 1.

Records finish out of order (thread pools, batches, delivery callbacks), so an offset is only
committable once it and every offset before it on its partition are finished: their output or
dead-letter record was acknowledged by the broker. Faust got this wrong for years and its offsets
stopped advancing (robinhood/faust#625); this is the watermark of Confluent's Parallel Consumer.

Each assignment of a partition gets a new generation, so work polled under an earlier assignment
(revoked, or lost, and assigned again) can never move the watermark of the current one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from worker.formats.positions import Partition


@dataclass(slots=True)
class _Watermark:
    generation: int
    pending: deque[int] = field(default_factory=deque)  # polled, in poll order (ascending)
    finished: set[int] = field(default_factory=set)  # finished but not yet below the watermark
    committable: int | None = None  # next offset to commit, once it moves
    confirmed: int | None = None  # the last value a commit (or store_offsets) accepted


class OffsetTracker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._partitions: dict[Partition, _Watermark] = {}
        self._in_flight = 0  # the sum of len(pending) over the partitions, kept as they change
        self._generation = 0
        self._clock = clock
        self.progressed_at = clock()  # when a watermark last moved (for /livez)

    def assign(self, tp: Partition) -> int:
        """Start tracking a newly assigned partition; returns its generation."""
        self._generation += 1
        self.revoke(tp)  # assigned again without a revoke (a lost partition): its old records no longer count
        self._partitions[tp] = _Watermark(generation=self._generation)
        return self._generation

    def revoke(self, tp: Partition) -> None:
        """Forget a partition: its in-flight work belongs to another consumer now."""
        state = self._partitions.pop(tp, None)
        if state is not None:
            self._in_flight -= len(state.pending)

    def is_current(self, tp: Partition, generation: int) -> bool:
        state = self._partitions.get(tp)
        return state is not None and state.generation == generation

    def add(self, tp: Partition, offset: int) -> int:
        """A record of an assigned partition was polled (the runtime drops records of any other);
        returns the generation its completion must quote."""
        state = self._partitions[tp]
        state.pending.append(offset)
        self._in_flight += 1
        return state.generation

    def finish(self, tp: Partition, offset: int, generation: int) -> list[int]:
        """A record is done. Returns the offsets that this moved below the watermark, in order
        (none if it belongs to an earlier assignment: then nothing moves)."""
        state = self._partitions.get(tp)
        if state is None or state.generation != generation:
            return []
        state.finished.add(offset)
        released: list[int] = []
        while state.pending and state.pending[0] in state.finished:
            released.append(state.pending.popleft())
            state.finished.discard(released[-1])
        if released:
            self._in_flight -= len(released)
            state.committable = released[-1] + 1
            self.progressed_at = self._clock()
        return released

    def in_flight(self) -> int:
        return self._in_flight

    def committable(self, floors: Mapping[Partition, int] | None = None) -> dict[Partition, int]:
        """Offsets that moved since the last confirm(), capped at `floors` (the dead-letter streak's
        first failure per partition). Nothing counts as committed until confirm() says so: a commit
        that fails hands the same offsets out again next time."""
        moved: dict[Partition, int] = {}
        for tp, state in self._partitions.items():
            if state.committable is None:
                continue
            offset = state.committable
            if floors and tp in floors:
                offset = min(offset, floors[tp])
            if offset != state.confirmed and (state.confirmed is None or offset > state.confirmed):
                moved[tp] = offset
        return moved

    def confirm(self, offsets: Mapping[Partition, int]) -> None:
        """The broker (or store_offsets) accepted these offsets."""
        for tp, offset in offsets.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.confirmed = offset
