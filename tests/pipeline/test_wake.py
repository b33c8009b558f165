"""The loop's wake-up (wake.py): signals kept until taken, watched pipes, and who signals it when."""

import os
import threading
import time

from tests.pipeline.conftest import Sink, bare_work
from worker.images.budget import InFlightBytes
from worker.images.stages import ThreadStage
from worker.images.wake import Wake
from worker.images.work import Work


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


def test_a_fetch_thread_gets_a_record_queued_behind_its_running_one_and_wakes_the_loop_for_more() -> None:
    wake, sink, gates = Wake(), Sink(), [threading.Event() for _ in range(3)]
    budget = InFlightBytes(limit=1 << 30)

    def fetched(work: Work) -> None:
        gates[work.position.offset].wait(10)

    fetch = ThreadStage(name="fetch", workers=1, step=fetched, next_step=sink, failures=sink, timeout=60,
                        budget=budget, reserve_bytes=1, wake=wake)
    for n in range(3):
        fetch.submit(bare_work(n))
    fetch.poll()  # the one thread runs the first record and has the second queued; the third waits here
    assert budget.admits((1 << 30) - 2) and not budget.admits((1 << 30) - 1), "two records reserved, not three"
    assert took(wake, 0.3) > 0.25, "no wake while the thread is busy"
    gates[0].set()
    assert took(wake, 5) < 2, "a record done while another waits here: the loop is woken to queue it"
    fetch.poll()  # hands on the first, queues the third behind the second
    assert [work.position.offset for work in sink.done] == [0]
    gates[1].set()
    gates[2].set()
    assert took(wake, 0.3) > 0.25, "they finish with nothing waiting here: no wake, the busy poll will do"
    fetch.poll()
    fetch.close(time.monotonic() + 5)
    wake.close()
    assert ([work.position.offset for work in sink.done], sink.failed) == ([0, 1, 2], [])
