"""What a busy turn of the loop waits on: a signal from the stages' threads, or a decoder's pipe.

Fetches (and decoder tasks) start only on a turn of the loop, so each fetch thread does at most one
record per turn. A loop that woke only for the device, or on a timer, would cap every fetch thread
at one record per turn, far under what it can fetch (measured in BENCHMARKS.md).

So the pools signal here as their outcomes arrive: the device pool on each batch, the fetch pool once
a round of its threads has finished or a thread finds nothing queued. The loop also watches the
decoder processes' epoll, which holds every decoder's pipe and process sentinel. A busy turn ends its
wait as soon as any of them has something, and never spins. The signal is a Linux eventfd, so a
signal sent before the wait began is not lost.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from typing import Protocol

# The longest a busy turn waits. The stages signal what moves the pipeline (wake.py): the device's
# batches, fetch threads falling idle, decoders' results; and a due batch bounds the wait. What cannot
# signal waits for this timeout at most: new input and the producer's acks, and the preprocess
# threads' results while no fetch signals come (input slower than the worker: latency, not
# throughput). Most busy turns end on this timeout, so a longer one costs the main thread less per
# record without costing throughput (measured in BENCHMARKS.md).
_BUSY_POLL_SECONDS = 0.020


def busy_wait(seconds_to_deadline: float | None, *, held: bool) -> float:
    """How long a busy turn may wait: a busy poll at most, and no later than the next batch is due,
    unless that batch is held for device room (only the device can move it then). Waiting on the
    stages' signals (wake.py), not in consume(), a turn neither spins before a batch is due (a
    consume timeout under a millisecond is truncated to zero: a spin of empty turns per partial batch)
    nor sleeps past a batch the device has finished or threads that have run out of records."""
    if held or seconds_to_deadline is None:
        return _BUSY_POLL_SECONDS
    return min(_BUSY_POLL_SECONDS, seconds_to_deadline)


class Readable(Protocol):
    def fileno(self) -> int: ...


class Wake:
    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        # A pool thread stuck past close() may signal late: the lock keeps it off a closed (and
        # perhaps reused) descriptor number.
        self._lock = threading.Lock()
        self._closed = False

    def signal(self) -> None:
        """Any thread: the current wait, or else the next one, returns at once."""
        with self._lock:
            if not self._closed:
                os.eventfd_write(self._fd, 1)

    def watch(self, readable: Readable) -> None:
        """Also end a wait while `readable` has something to read (main thread, before the loop)."""
        self._selector.register(readable, selectors.EVENT_READ)

    def wait(self, timeout: float) -> None:
        """Until a signal, a watched file is readable, or `timeout` seconds pass; takes the signals."""
        if self._selector.select(timeout):
            with contextlib.suppress(BlockingIOError):  # woken by a watched file alone
                os.eventfd_read(self._fd)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._selector.close()
                os.close(self._fd)
