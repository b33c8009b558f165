from worker.pipeline.offsets import OffsetTracker

TP = ("images", 0)


def test_watermark_waits_for_the_lowest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    generation = tracker.assign(TP)
    for offset in range(10, 15):
        tracker.add(TP, offset)
    assert tracker.finish(TP, 12, generation) == []
    assert tracker.finish(TP, 11, generation) == []
    assert tracker.take_committable() == {}
    assert tracker.finish(TP, 10, generation) == [10, 11, 12]
    assert tracker.take_committable() == {TP: 13}
    assert tracker.take_committable() == {}, "an unchanged watermark is not handed out twice"
    assert tracker.in_flight() == 2


def test_offsets_need_not_be_contiguous() -> None:
    # Compacted topics and transaction markers leave gaps between polled offsets.
    tracker = OffsetTracker()
    generation = tracker.assign(TP)
    for offset in (3, 7, 20):
        tracker.add(TP, offset)
    assert tracker.finish(TP, 7, generation) == []
    assert tracker.finish(TP, 3, generation) == [3, 7]
    assert tracker.take_committable() == {TP: 8}


def test_work_of_an_earlier_assignment_moves_nothing() -> None:
    tracker = OffsetTracker()
    old = tracker.assign(TP)
    tracker.add(TP, 0)
    tracker.revoke(TP)
    assert not tracker.is_current(TP, old)
    new = tracker.assign(TP)
    tracker.add(TP, 0)
    assert tracker.finish(TP, 0, old) == []
    assert tracker.take_committable() == {}
    assert tracker.finish(TP, 0, new) == [0]
    assert tracker.take_committable() == {TP: 1}


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    other = ("images", 1)
    g0, g1 = tracker.assign(TP), tracker.assign(other)
    tracker.add(TP, 5)
    tracker.add(other, 9)
    tracker.finish(other, 9, g1)
    assert tracker.take_committable() == {other: 10}
    assert tracker.in_flight() == 1
    tracker.finish(TP, 5, g0)
    assert tracker.take_committable() == {TP: 6}
