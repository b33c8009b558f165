from hypothesis import given
from hypothesis import strategies as st

from worker.formats.positions import KafkaPosition
from worker.images.batching import Batcher
from worker.images.wake import busy_wait
from worker.images.work import Work


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Device:
    def __init__(self, room: int = 10) -> None:
        self.room = room
        self.batches: list[list[Work]] = []

    def has_room(self) -> bool:
        return len(self.batches) < self.room

    def submit(self, item: list[Work]) -> None:
        self.batches.append(item)


def work(offset: int) -> Work:
    return Work(position=KafkaPosition("t", 0, offset))


def test_a_full_batch_goes_at_once() -> None:
    clock, device = Clock(), Device()
    batcher = Batcher(batch_size=4, max_wait=0.05, next_step=device, clock=clock)
    for offset in range(9):
        batcher.submit(work(offset))
    batcher.poll()
    assert [len(b) for b in device.batches] == [4, 4]
    assert len(batcher) == 1


def test_a_partial_batch_waits_until_its_oldest_image_is_due() -> None:
    clock, device = Clock(), Device()
    batcher = Batcher(batch_size=4, max_wait=0.5, next_step=device, clock=clock)
    batcher.submit(work(0))
    clock.now += 0.25
    batcher.submit(work(1))
    batcher.poll()
    assert device.batches == []
    assert batcher.seconds_to_deadline() == 0.25
    clock.now += 0.25
    batcher.poll()
    assert [[w.position.offset for w in b] for b in device.batches] == [[0, 1]]
    assert batcher.seconds_to_deadline() is None


def test_images_queue_while_the_device_is_full_and_leave_in_full_batches() -> None:
    clock, device = Clock(), Device(room=0)
    batcher = Batcher(batch_size=3, max_wait=0.0, next_step=device, clock=clock)
    for offset in range(7):
        batcher.submit(work(offset))
    batcher.poll()
    assert device.batches == []
    device.room = 10
    batcher.poll()
    assert [len(b) for b in device.batches] == [3, 3, 1]
    assert [w.position.offset for b in device.batches for w in b] == list(range(7))


def test_flush_sends_a_partial_batch_without_waiting() -> None:
    clock, device = Clock(), Device()
    batcher = Batcher(batch_size=8, max_wait=10.0, next_step=device, clock=clock)
    batcher.submit(work(0))
    batcher.flush()
    batcher.poll()
    assert len(device.batches) == 1


def test_a_due_batch_is_held_only_while_the_device_has_no_room() -> None:
    clock, device = Clock(), Device(room=0)
    batcher = Batcher(batch_size=4, max_wait=0.5, next_step=device, clock=clock)
    assert not batcher.held()  # nothing queued
    batcher.submit(work(0))
    assert not batcher.held()  # queued but not due yet
    clock.now += 0.5
    assert batcher.held()
    device.room = 1
    assert not batcher.held()


def test_a_busy_turn_waits_a_busy_poll_at_most_and_never_past_a_batch_that_can_leave() -> None:
    assert busy_wait(None, held=False) == 0.02
    assert busy_wait(1.0, held=False) == 0.02
    assert busy_wait(0.0021, held=False) == 0.0021
    assert busy_wait(0.0, held=False) == 0.0  # due now and the device has room: the turn sends it
    assert busy_wait(0.0, held=True) == 0.02  # due but held: only the device finishing moves it


@given(st.floats(min_value=0.0, max_value=10.0, allow_nan=False), st.booleans())
def test_a_busy_wait_is_bounded_and_zero_only_for_a_batch_that_can_leave_now(deadline: float, held: bool) -> None:
    waited = busy_wait(deadline, held=held)
    assert 0.0 <= waited <= 0.02
    assert held or waited <= deadline  # never past a batch that could leave
    assert waited > 0.0 or (deadline == 0.0 and not held)
