"""Time-or-size batching, with the semantics of Triton's dynamic batcher.

A batch goes to the device as soon as it holds `batch_size` images; a partial batch goes once its
oldest image has waited `max_wait` seconds. So a trickle of messages waits at most `max_wait`, and
under load every batch is full. While the device stage has no room, images keep queueing here
(bounded by the runtime's in-flight limit), and the next batches leave full.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from worker.images.work import Work


class BatchReceiver(Protocol):
    def has_room(self) -> bool: ...

    def submit(self, item: list[Work]) -> None: ...


class Batcher:
    def __init__(
        self,
        *,
        batch_size: int,
        max_wait: float,
        next_step: BatchReceiver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._batch_size = batch_size
        self._max_wait = max_wait
        self._next = next_step
        self._clock = clock
        self._queued: deque[Work] = deque()

    def submit(self, item: Work) -> None:
        item.ready_at = self._clock()
        self._queued.append(item)

    def poll(self) -> None:
        while self._queued and self._next.has_room() and self._batch_due():
            count = min(self._batch_size, len(self._queued))
            self._next.submit([self._queued.popleft() for _ in range(count)])

    def flush(self) -> None:
        """Send what is queued without waiting for the deadline (shutdown drains this way)."""
        self._max_wait = 0.0

    def close(self, deadline: float) -> None:
        self._queued.clear()

    def seconds_to_deadline(self) -> float | None:
        """How long until the oldest queued image is due; None when nothing is queued."""
        if not self._queued:
            return None
        return max(0.0, self._queued[0].ready_at + self._max_wait - self._clock())

    def held(self) -> bool:
        """A batch is due but the device has no room for it: only the device finishing can move it."""
        return bool(self._queued) and self._batch_due() and not self._next.has_room()

    def __len__(self) -> int:
        return len(self._queued)

    def _batch_due(self) -> bool:
        return len(self._queued) >= self._batch_size or self._clock() - self._queued[0].ready_at >= self._max_wait
