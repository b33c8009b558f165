"""The in-flight byte budget: reservations are settled at once, held bytes counted by the walk."""

import time

from tests.pipeline.conftest import Sink
from worker.encoding import Source
from worker.pipeline.memory import InFlightBytes
from worker.pipeline.stages import ThreadStage
from worker.pipeline.work import Work


def work(n: int) -> Work:
    return Work(source=Source("t", 0, n), generation=0, key=None, value=None, headers=[], timestamp_ms=None)


class Frozen:
    """A clock that moves only when told: no walk happens unless a test advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_settled_fetch_frees_its_reservation_at_once_and_counts_what_it_holds() -> None:
    clock = Frozen()
    budget = InFlightBytes(limit=100, clock=clock)
    first, second = work(1), work(2)
    budget.reserve(first, 40)
    budget.reserve(second, 40)
    assert (budget.room(), budget.held()) == (20, 0)
    first.data = b"x" * 10
    budget.settle(first, 40)
    assert (budget.room(), budget.held()) == (50, 10), "no walk yet: the reservation goes, the bytes count"
    clock.now += 1.0
    assert (budget.room(), budget.held()) == (50, 10), "the walk counts them once, not twice"
    first.data = None
    clock.now += 1.0
    assert (budget.room(), budget.held()) == (60, 0)


def test_fetches_keep_starting_as_others_finish_however_rarely_the_budget_is_walked() -> None:
    """Reservations freed only by the walk paced admissions: with a 100-byte budget, 40-byte
    reservations and no walk, two fetches started and no third ever did."""
    budget = InFlightBytes(limit=100, clock=Frozen())
    sink = Sink()

    def fetched(w: Work) -> None:
        w.data = b"y"

    fetch = ThreadStage(name="fetch", workers=4, step=fetched, next_step=sink, failures=sink, timeout=60,
                        budget=budget, reserve_bytes=40)
    for n in range(10):
        fetch.submit(work(n))
    deadline = time.monotonic() + 10
    while sink.finished < 10 and time.monotonic() < deadline:
        fetch.poll()
        time.sleep(0.002)
    fetch.close(time.monotonic() + 5)
    assert (len(sink.done), sink.failed) == (10, [])
