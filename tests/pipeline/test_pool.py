import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from worker.pipeline.pool import WorkPool
from worker.pipeline.wake import Wake

R = TypeVar("R")


def outcomes(pool: WorkPool[int, R], count: int, timeout: float = 10.0) -> dict[int, R | BaseException]:
    got: dict[int, R | BaseException] = {}
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        time.sleep(0.01)
        got.update(pool.finished())
    return got


def test_every_item_comes_back_with_its_result_or_its_exception() -> None:
    def fn(n: int) -> int:
        if n == 3:
            raise ValueError("three")
        return n * n

    pool: WorkPool[int, int] = WorkPool(name="t", workers=3, fn=fn)
    for n in range(8):
        pool.submit(n)
    got = outcomes(pool, 8)
    assert {n: r for n, r in got.items() if n != 3} == {n: n * n for n in range(8) if n != 3}
    assert isinstance(got[3], ValueError)
    assert pool.outstanding == 0
    pool.close(time.monotonic() + 5)


def held_until(release: threading.Event) -> Callable[[int], int]:
    def fn(n: int) -> int:
        release.wait(30)
        return n

    return fn


def test_a_task_past_its_deadline_is_given_up_and_its_late_outcome_dropped() -> None:
    release = threading.Event()
    pool: WorkPool[int, int] = WorkPool(name="t", workers=1, fn=held_until(release))
    pool.submit(7)
    deadline = time.monotonic() + 5
    while not (late := pool.expired(0.05)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert late == [7] and pool.outstanding == 0
    release.set()
    time.sleep(0.1)
    assert list(pool.finished()) == []  # the late outcome is not handed back
    pool.close(time.monotonic() + 5)


def test_a_pool_signals_the_loop_once_as_many_outcomes_as_asked_wait_for_it() -> None:
    release, signals = threading.Semaphore(0), []
    pool: WorkPool[int, int] = WorkPool(name="t", workers=4, fn=lambda n: release.acquire() and n,
                                        signal=lambda: signals.append(time.monotonic()), signal_after=2)
    for n in range(3):
        pool.submit(n)
    release.release()
    time.sleep(0.1)
    assert signals == [], "one outcome of the two asked for: the loop's wait goes on"
    release.release()
    time.sleep(0.1)
    assert len(signals) == 1
    assert len(list(pool.finished())) == 2
    release.release()
    time.sleep(0.1)
    assert len(signals) == 1, "the third finds one outcome waiting, not two"
    pool.close(time.monotonic() + 5)


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
    import os

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


def test_close_drops_queued_tasks_and_returns_by_its_deadline_despite_a_stuck_one() -> None:
    stuck, ran = threading.Event(), []
    hold = held_until(stuck)
    pool: WorkPool[int, int] = WorkPool(name="t", workers=1, fn=lambda n: ran.append(n) or hold(n))
    for n in range(5):
        pool.submit(n)
    time.sleep(0.1)
    began = time.monotonic()
    pool.close(began + 0.3)
    assert time.monotonic() - began < 2
    stuck.set()
    time.sleep(0.1)
    assert ran == [0]  # the queued four never started


def test_pool_threads_carry_their_name_in_the_kernel() -> None:
    pool: WorkPool[int, str] = WorkPool(
        name="fetch", workers=1,
        fn=lambda _: Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())
    pool.submit(0)
    assert outcomes(pool, 1) == {0: "fetch_0"}
    pool.close(time.monotonic() + 5)
