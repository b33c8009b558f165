"""A thread pool whose finished tasks are collected without blocking, for the stages' poll()."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")  # what travels with the task (a Work, or a batch of them)
R = TypeVar("R")  # what the task returns


class WorkPool(Generic[T, R]):
    """Runs `fn(item)` on `workers` threads; `finished()` yields (item, result or exception)."""

    def __init__(self, *, name: str, workers: int, fn: Callable[[T], R]) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._fn = fn
        self._done: queue.SimpleQueue[tuple[T, R | BaseException]] = queue.SimpleQueue()
        self.outstanding = 0

    def submit(self, item: T) -> None:
        def done(future: Future[R]) -> None:
            outcome: R | BaseException
            if future.cancelled():  # only at shutdown, where nothing reads the outcome any more
                outcome = CancelledError()
            else:
                error = future.exception()
                outcome = error if error is not None else future.result()
            self._done.put((item, outcome))

        future = self._executor.submit(self._fn, item)
        self.outstanding += 1
        future.add_done_callback(done)

    def finished(self) -> Iterator[tuple[T, R | BaseException]]:
        """What finished since the last call; never blocks."""
        while True:
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return
            self.outstanding -= 1
            yield item

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

