"""The loop's wake-up (wake.py): signals kept until taken, watched pipes, and who signals it when."""

import os
import threading
import time

from tests.pipeline.conftest import Sink, bare_work
from worker.pipeline.memory import InFlightBytes
from worker.pipeline.stages import ThreadStage
from worker.pipeline.wake import Wake
from worker.pipeline.work import Work


def test_a_wait_ends_on_a_signal_sent_before_or_during_it_and_otherwise_on_its_timeout() -> None:
    wake = Wake()
    wake.signal()
    began = time.monotonic()
    wake.wait(5)
    assert time.monotonic() - began < 0.5, "a signal sent before the wait is not lost"
    began = time.monotonic()
    wake.wait(0.1)
    assert 0.08 < time.monotonic() - began < 2, "the signal was taken by the first wait"
    threading.Timer(0.1, wake.signal).start()
    began = time.monotonic()
    wake.wait(5)
    assert 0.05 < time.monotonic() - began < 2
    wake.close()
    wake.signal()  # a pool thread finishing after close: nothing happens


def test_a_wait_ends_while_a_watched_pipe_has_bytes_to_read() -> None:
    wake = Wake()
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as readable, os.fdopen(write_end, "wb", buffering=0) as writer:
        wake.watch(readable)
        threading.Timer(0.1, writer.write, args=(b"x",)).start()
        began = time.monotonic()
        wake.wait(5)
        assert 0.05 < time.monotonic() - began < 2
        wake.wait(5)  # unread: still readable, the wait ends at once
        assert time.monotonic() - began < 2
        readable.read(1)
        began = time.monotonic()
        wake.wait(0.1)
        assert time.monotonic() - began > 0.08
    wake.close()


def took(wake: Wake, timeout: float) -> float:
    began = time.monotonic()
    wake.wait(timeout)
    return time.monotonic() - began


def test_free_fetch_threads_wake_the_loop_only_while_records_wait_for_them() -> None:
    wake, sink, gate = Wake(), Sink(), threading.Event()

    def fetched(work: Work) -> None:
        gate.wait(10)

    fetch = ThreadStage(name="fetch", workers=1, step=fetched, next_step=sink, failures=sink, timeout=60,
                        budget=InFlightBytes(limit=1 << 30), reserve_bytes=1, wake=wake)
    for n in range(2):
        fetch.submit(bare_work(n))
    fetch.poll()  # the one thread takes the first record; the second waits for it
    threading.Timer(0.1, gate.set).start()
    assert took(wake, 5) < 2, "a free thread with a record waiting wakes the loop"
    fetch.poll()  # hands on the first, gives the thread the second
    assert took(wake, 0.3) > 0.25, "the second finishes with nothing waiting: no wake, the busy poll will do"
    fetch.poll()
    fetch.close(time.monotonic() + 5)
    wake.close()
    assert (len(sink.done), sink.failed) == (2, [])
