"""A thread pool whose finished tasks are collected without blocking, for the stages' poll().

Four things a plain ThreadPoolExecutor does not give the data path:
- a deadline per task, counted from when a thread starts it (time spent queued is not the record's
  fault): ``expired()`` hands back tasks running past it, and their late outcome is then dropped;
- a shutdown bounded in time: a thread stuck in a C call cannot be interrupted, so ``close()`` waits
  for running tasks only until its deadline, and the threads are daemons left to die with the process
  (an executor's threads are joined at exit, so one stuck thread would hold the exit forever);
- a hand-off that costs the main thread one queue put: ``submit`` creates no Future, no closure and no
  done-callback (measured in BENCHMARKS.md);
- a signal to the loop (wake.py) once `signal_after` outcomes wait for it, or as soon as a thread
  finds nothing queued for it, so that a stage whose threads are free gets its next records without
  waiting out the loop's busy poll.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")  # what travels with the task (a Work, or a batch of them)
R = TypeVar("R")  # what the task returns


class WorkPool(Generic[T, R]):
    """Runs `fn(item)` on `workers` threads; `finished()` yields (item, result or exception)."""

    def __init__(
        self, *, name: str, workers: int, fn: Callable[[T], R], clock: Callable[[], float] = time.monotonic,
        signal: Callable[[], None] | None = None, signal_after: int = 1,
    ) -> None:
        self._fn = fn
        self._clock = clock
        self._signal = signal
        self._signal_after = signal_after
        self._todo: queue.SimpleQueue[tuple[int, T] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[int, T, R | BaseException]] = queue.SimpleQueue()
        self._started: dict[int, tuple[T, float]] = {}  # task id -> (item, start time), in start order
        self._abandoned: set[int] = set()
        self._next_id = 0
        self.outstanding = 0  # submitted and neither finished nor abandoned
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> None:
        self.outstanding += 1
        self._todo.put((self._next_id, item))
        self._next_id += 1

    def finished(self) -> Iterator[tuple[T, R | BaseException]]:
        """What finished since the last call; never blocks. Abandoned tasks are left out."""
        done = self._done
        while not done.empty():  # this thread is the only reader: not empty means get_nowait() has one
            task, item, outcome = done.get_nowait()
            self._started.pop(task, None)
            if task in self._abandoned:
                self._abandoned.discard(task)
                continue
            self.outstanding -= 1
            yield item, outcome

    def expired(self, timeout: float) -> list[T]:
        """Items whose task has run for longer than `timeout` seconds; each is given up for good."""
        late: list[T] = []
        if not self._started:
            return late
        cutoff = self._clock() - timeout
        while self._started:
            task, (item, started) = next(iter(self._started.items()))  # the oldest: started in order
            if started > cutoff:
                break  # the rest are younger
            del self._started[task]
            self._abandoned.add(task)
            self.outstanding -= 1
            late.append(item)
        return late

    def close(self, deadline: float) -> None:
        """Drop what has not started; wait for running tasks until `deadline` (monotonic), no longer."""
        while True:
            try:
                self._todo.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._todo.put(None)
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - self._clock()))

    def _serve(self) -> None:
        name_os_thread()
        fn, clock, todo, done, started, signal, signal_after = (
            self._fn, self._clock, self._todo, self._done, self._started, self._signal, self._signal_after)
        while (job := todo.get()) is not None:
            task, item = job
            started[task] = (item, clock())  # dict writes are atomic under the GIL
            outcome: R | BaseException
            try:
                outcome = fn(item)
            except BaseException as exc:  # the stage decides what it means; the thread lives on
                outcome = exc
            done.put((task, item, outcome))
            if signal is not None and (done.qsize() >= signal_after or todo.empty()):
                signal()
            del job, item, outcome  # hold nothing of a finished task while waiting for the next


_PR_SET_NAME = 15
_LIBC_PATH = ctypes.util.find_library("c")  # may run ldconfig: once, at import
_LIBC = ctypes.CDLL(_LIBC_PATH, use_errno=True) if _LIBC_PATH else None


def name_os_thread() -> None:
    """Give the calling thread its Python name in the kernel too (15 bytes), so that `top -H`, /proc
    and profilers show which stage a thread belongs to; where prctl is missing, nothing happens."""
    if _LIBC is not None and hasattr(_LIBC, "prctl"):
        _LIBC.prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
