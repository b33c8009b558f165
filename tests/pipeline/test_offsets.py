from hypothesis import given
from hypothesis import strategies as st

from worker.stream.offsets import OffsetTracker

TP = ("images", 0)


def take(tracker: OffsetTracker) -> dict[tuple[str, int], int]:
    """What a committer does when its commit succeeds: hand out, then confirm."""
    offsets = tracker.committable()
    tracker.confirm(offsets)
    return offsets


def test_watermark_waits_for_the_lowest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    generation = tracker.assign(TP)
    for offset in range(10, 15):
        tracker.add(TP, offset)
    assert tracker.finish(TP, 12, generation) == []
    assert tracker.finish(TP, 11, generation) == []
    assert take(tracker) == {}
    assert tracker.finish(TP, 10, generation) == [10, 11, 12]
    assert take(tracker) == {TP: 13}
    assert take(tracker) == {}, "an unchanged watermark is not handed out twice"
    assert tracker.in_flight() == 2


def test_offsets_are_handed_out_again_until_a_commit_confirms_them() -> None:
    tracker = OffsetTracker()
    generation = tracker.assign(TP)
    tracker.add(TP, 0)
    tracker.finish(TP, 0, generation)
    assert tracker.committable() == {TP: 1}
    assert tracker.committable() == {TP: 1}, "a failed commit confirmed nothing"
    tracker.confirm({TP: 1})
    assert tracker.committable() == {}


def test_a_floor_caps_the_offset_handed_out_and_lifting_it_releases_the_rest() -> None:
    tracker = OffsetTracker()
    generation = tracker.assign(TP)
    for offset in range(6):
        tracker.add(TP, offset)
        tracker.finish(TP, offset, generation)
    capped = tracker.committable({TP: 2})
    assert capped == {TP: 2}, "offsets from the streak's first failure on are not committed"
    tracker.confirm(capped)
    assert tracker.committable({TP: 2}) == {}
    assert tracker.committable() == {TP: 6}


def test_offsets_need_not_be_contiguous() -> None:
    # Compacted topics and transaction markers leave gaps between polled offsets.
    tracker = OffsetTracker()
    generation = tracker.assign(TP)
    for offset in (3, 7, 20):
        tracker.add(TP, offset)
    assert tracker.finish(TP, 7, generation) == []
    assert tracker.finish(TP, 3, generation) == [3, 7]
    assert take(tracker) == {TP: 8}


def test_work_of_an_earlier_assignment_moves_nothing() -> None:
    tracker = OffsetTracker()
    old = tracker.assign(TP)
    tracker.add(TP, 0)
    tracker.revoke(TP)
    assert not tracker.is_current(TP, old)
    new = tracker.assign(TP)
    tracker.add(TP, 0)
    assert tracker.finish(TP, 0, old) == []
    assert take(tracker) == {}
    assert tracker.finish(TP, 0, new) == [0]
    assert take(tracker) == {TP: 1}


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    other = ("images", 1)
    g0, g1 = tracker.assign(TP), tracker.assign(other)
    tracker.add(TP, 5)
    tracker.add(other, 9)
    tracker.finish(other, 9, g1)
    assert take(tracker) == {other: 10}
    assert tracker.in_flight() == 1
    tracker.finish(TP, 5, g0)
    assert take(tracker) == {TP: 6}


@given(st.permutations(list(range(12))), st.integers(0, 12))
def test_the_watermark_is_always_one_past_the_longest_finished_prefix(order: list[int], floor: int) -> None:
    tracker = OffsetTracker()
    generation = tracker.assign(TP)
    for offset in range(12):
        tracker.add(TP, offset)
    finished: set[int] = set()
    for offset in order:
        tracker.finish(TP, offset, generation)
        finished.add(offset)
        prefix = next(i for i in range(13) if i not in finished)
        assert tracker.committable({TP: floor}).get(TP, 0) == min(prefix, floor)


@given(st.lists(st.tuples(st.sampled_from(["assign", "add", "finish", "revoke"]), st.integers(0, 2),
                          st.integers(0, 30)), max_size=80))
def test_the_in_flight_count_is_the_records_polled_and_not_yet_below_a_watermark(
    steps: list[tuple[str, int, int]],
) -> None:
    """in_flight() is kept as records come and go (the loop asks several times a turn); it must equal
    counting the pending records of every held partition, whatever the order of events."""
    tracker = OffsetTracker()
    generations: dict[tuple[str, int], int] = {}
    next_offset: dict[tuple[str, int], int] = {}
    for action, partition, number in steps:
        tp = ("images", partition)
        if action == "assign":
            generations[tp] = tracker.assign(tp)
            next_offset.setdefault(tp, 0)
        elif action == "revoke":
            tracker.revoke(tp)
            generations.pop(tp, None)
        elif tp in generations and action == "add":
            tracker.add(tp, next_offset[tp])
            next_offset[tp] += 1
        elif tp in generations:
            tracker.finish(tp, number, generations[tp])
        assert tracker.in_flight() == sum(len(state.pending) for state in tracker._partitions.values())
