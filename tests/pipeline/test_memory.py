"""The in-flight byte budget: reservations are settled at once, held bytes counted by the walk."""

import time

from tests.pipeline.conftest import Sink, bare_work
from worker.images.budget import InFlightBytes
from worker.images.stages import ThreadStage
from worker.images.work import Work


class Frozen:
    """A clock that moves only when told: no walk happens unless a test advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_settled_fetch_frees_its_reservation_at_once_and_counts_what_it_holds() -> None:
    clock = Frozen()
    budget = InFlightBytes(limit=100, clock=clock)
    first, second = bare_work(1), bare_work(2)
    budget.reserve(first, 40)
    budget.reserve(second, 40)
    assert (budget.admits(20), budget.admits(21), budget.held()) == (True, False, 0)
    first.data = b"x" * 10
    budget.settle(first, 40)
    assert (budget.admits(50), budget.admits(51), budget.held()) == (True, False, 10), (
        "no walk yet: the reservation goes, the bytes count")
    clock.now += 1.0
    assert (budget.admits(50), budget.admits(51), budget.held()) == (True, False, 10), (
        "the walk counts them once, not twice")
    first.data = None
    clock.now += 1.0
    assert (budget.admits(60), budget.admits(61)) == (True, False)


def test_a_fetch_larger_than_the_whole_budget_starts_when_nothing_else_is_held() -> None:
    budget = InFlightBytes(limit=100, clock=Frozen())
    assert budget.admits(500)
    budget.reserve(bare_work(1), 500)
    assert not budget.admits(500)


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
        fetch.submit(bare_work(n))
    deadline = time.monotonic() + 10
    while sink.finished < 10 and time.monotonic() < deadline:
        fetch.poll()
        time.sleep(0.002)
    fetch.close(time.monotonic() + 5)
    assert (len(sink.done), sink.failed) == (10, [])


def test_the_budget_walks_its_records_only_when_its_upper_bound_would_answer_differently() -> None:
    clock = Frozen()
    budget = InFlightBytes(limit=1000, every=0.1, refresh=1.0, clock=clock)
    held = bare_work(1)
    budget.reserve(held, 100)
    held.data = b"x" * 100
    budget.settle(held, 100)
    assert budget.held() == 100  # the first walk
    held.data = None  # dropped after the walk's count: only a walk sees it go
    clock.now += 0.05
    assert (budget.held(), budget.admits(900), budget.admits(901)) == (100, True, False), (
        "within `every` of the last walk, no walk")
    clock.now += 0.45
    assert (budget.held(), budget.admits(900)) == (100, True), "the upper bound answers: no walk until the refresh"
    assert budget.admits(901), "a fetch the bound would refuse: a walk, which sees the bytes go"
    big = bare_work(2)
    budget.reserve(big, 600)
    big.data = b"y" * 600
    budget.settle(big, 600)
    assert budget.held() == 600
    big.data = None
    clock.now += 0.2
    assert budget.held() == 0, "at half the limit, where backpressure resumes, held bytes are walked every `every`"
