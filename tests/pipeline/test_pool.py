import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from worker.images.pool import WorkPool

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


def test_a_pool_signals_the_loop_once_as_many_outcomes_as_asked_wait_or_a_thread_has_nothing_queued() -> None:
    release, signals = threading.Semaphore(0), []
    pool: WorkPool[int, int] = WorkPool(name="t", workers=1, fn=lambda n: release.acquire() and n,
                                        signal=lambda: signals.append(time.monotonic()), signal_after=2)
    for n in range(3):
        pool.submit(n)
    release.release()
    time.sleep(0.1)
    assert signals == [], "one outcome of the two asked for, and two tasks still queued: the loop's wait goes on"
    release.release()
    time.sleep(0.1)
    assert len(signals) == 1
    assert len(list(pool.finished())) == 2
    release.release()
    time.sleep(0.1)
    assert len(signals) == 2, "one outcome, but the thread found nothing queued: it would idle until a turn"
    pool.close(time.monotonic() + 5)


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
