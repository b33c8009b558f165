"""The librdkafka boundary and the calls around it that used to crash or mislead: translated errors,
a rewind that cannot read the committed offsets, a slow init_transactions, an abort after fencing,
and a commit that times out (resumed as the same call, offsets confirmed only after it succeeded).

The clients here are stand-ins that raise what librdkafka raises: what is tested is the worker's
handling of each answer, which a real broker gives only by chance. The same paths run on the wire in
test_commit_stalls.py and test_broker_outage.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.errors import ClientFatal, ClientWedged, FatalError, KafkaUnavailable, OutputTooLarge, TransactionAborted
from worker.kafka.boundary import kafka_call, translate
from worker.metrics import Metrics
from worker.stream.delivery.transactional import TransactionalCommitter
from worker.stream.offsets import OffsetTracker
from worker.stream.outage import OutageGate
from worker.stream.produce import AckedEmitter, Outbox
from worker.stream.rebalance import Rebalancer

TP = ("in", 0)


def error(code: int, **flags: bool) -> KafkaError:
    return KafkaError(code, "simulated", **flags)


@pytest.mark.parametrize(
    ("kafka_error", "expected"),
    [
        (error(KafkaError._FENCED, fatal=True), ClientFatal),
        (error(KafkaError.PRODUCER_FENCED), ClientFatal),
        (error(KafkaError._TIMED_OUT, retriable=True), KafkaUnavailable),
        (error(KafkaError._TRANSPORT), KafkaUnavailable),
        (error(KafkaError.MSG_SIZE_TOO_LARGE), OutputTooLarge),
        (error(KafkaError._STATE, txn_requires_abort=True), TransactionAborted),
        (error(KafkaError._INVALID_ARG), FatalError),
    ],
)
def test_each_librdkafka_error_becomes_one_worker_error(kafka_error: KafkaError, expected: type) -> None:
    translated = translate(kafka_error, what="call")
    assert type(translated) is expected and "call: " in str(translated)


def test_kafka_call_translates_ignores_named_codes_and_calls_a_hung_call_wedged() -> None:
    def raises(code: int) -> Any:
        raise KafkaException(error(code))

    with pytest.raises(KafkaUnavailable):
        kafka_call(lambda: raises(KafkaError._TIMED_OUT), what="commit")
    assert kafka_call(lambda: raises(KafkaError._NO_OFFSET), what="commit", ignore=("_NO_OFFSET",)) is None
    with pytest.raises(ClientWedged):
        kafka_call(lambda: time.sleep(5), what="send_offsets_to_transaction", deadline=0.2)


class StubProducer:
    """Answers the transactional calls as scripted: each entry is an exception to raise, or None."""

    def __init__(self, script: dict[str, list[BaseException | None]], *, init_sleep: float = 0.0) -> None:
        self.script = script
        self.calls: list[str] = []
        self._init_sleep = init_sleep

    def _answer(self, name: str) -> None:
        self.calls.append(name)
        answers = self.script.get(name) or [None]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer is not None:
            raise answer

    def init_transactions(self, timeout: float) -> None:
        time.sleep(self._init_sleep)
        self._answer("init_transactions")

    def begin_transaction(self) -> None:
        self._answer("begin_transaction")

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: object, timeout: float) -> None:
        self._answer("send_offsets_to_transaction")

    def commit_transaction(self, timeout: float) -> None:
        self._answer("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self._answer("abort_transaction")


class StubConsumer:
    def consumer_group_metadata(self) -> object:
        return object()


def committer(producer: StubProducer, tracker: OffsetTracker, **timing: float) -> TransactionalCommitter:
    return TransactionalCommitter(
        producer=producer, consumer=StubConsumer(), outbox=Outbox(producer, max_message_bytes=1_000_000),  # type: ignore[arg-type]
        tracker=tracker, floors={}, metrics=Metrics(), call_seconds=timing.pop("call_seconds", 10.0), **timing,
    )


def finished_tracker() -> OffsetTracker:
    tracker = OffsetTracker()
    generation = tracker.assign(TP)
    tracker.add(TP, 0)
    tracker.finish(TP, 0, generation)
    return tracker


def test_a_commit_that_timed_out_is_resumed_as_the_same_call_and_confirmed_only_then() -> None:
    timed_out = KafkaException(error(KafkaError._TIMED_OUT, retriable=True))
    producer = StubProducer({"commit_transaction": [timed_out, timed_out, None]})
    tracker = finished_tracker()
    assert committer(producer, tracker).commit()
    assert producer.calls == ["send_offsets_to_transaction", *["commit_transaction"] * 3, "begin_transaction"]
    assert tracker.committable() == {}, "confirmed after the commit succeeded"


def test_offsets_of_an_aborted_transaction_are_not_confirmed() -> None:
    abortable = KafkaException(error(KafkaError._STATE, txn_requires_abort=True))
    producer = StubProducer({"commit_transaction": [abortable, None]})
    tracker = finished_tracker()
    assert not committer(producer, tracker).commit(), "the caller must rewind"
    assert "abort_transaction" in producer.calls
    assert tracker.committable() == {TP: 1}, "still to be committed: nothing counts as committed after an abort"


def test_an_abort_that_times_out_is_resumed_before_anything_else_is_sent() -> None:
    """After a failover the coordinator may still be loading: the abort is asked again, as the same
    call, until it is done; sending offsets meanwhile would only conflict with it."""
    abortable = KafkaException(error(KafkaError._STATE, txn_requires_abort=True))
    loading = KafkaException(error(KafkaError._TIMED_OUT, retriable=True))
    producer = StubProducer({"send_offsets_to_transaction": [abortable, None],
                             "abort_transaction": [loading, loading, None]})
    tracker = finished_tracker()
    assert not committer(producer, tracker).commit(), "the caller must rewind"
    assert producer.calls == ["send_offsets_to_transaction", *["abort_transaction"] * 3, "begin_transaction"]


def test_a_transaction_that_never_commits_gets_the_producer_replaced_not_the_process_stopped() -> None:
    timed_out = KafkaException(error(KafkaError._TIMED_OUT, retriable=True))
    producer = StubProducer({"commit_transaction": [timed_out]})
    with pytest.raises(ClientFatal, match="did not commit"):
        committer(producer, finished_tracker()).commit()


def test_init_transactions_may_take_its_whole_timeout_without_counting_as_wedged() -> None:
    producer = StubProducer({}, init_sleep=0.6)
    committer(producer, OffsetTracker(), init_seconds=0.6, deadline_margin=0.5).start()
    assert producer.calls == ["init_transactions", "begin_transaction"]


def test_closing_after_being_fenced_logs_instead_of_replacing_the_real_error(caplog: pytest.LogCaptureFixture) -> None:
    fenced = KafkaException(error(KafkaError.PRODUCER_FENCED, fatal=True))
    with caplog.at_level(logging.WARNING, logger="worker.stream.delivery.transactional"):
        committer(StubProducer({"abort_transaction": [fenced]}), OffsetTracker()).close()  # must not raise
    [line] = [r for r in caplog.records if r.name == "worker.stream.delivery.transactional"]
    assert line.levelname == "WARNING" and "could not abort the open transaction" in line.getMessage()
    assert "abort_transaction: simulated" in line.getMessage(), "the fenced client's own error, as a log line"


class UnreachableCoordinator:
    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        raise KafkaException(error(KafkaError._TIMED_OUT, retriable=True))


def test_a_rewind_that_cannot_read_the_committed_offsets_stops_the_worker_cleanly() -> None:
    metrics = Metrics()
    tracker = OffsetTracker()
    rebalancer = Rebalancer(
        consumer=UnreachableCoordinator(), outbox=None, tracker=tracker,  # type: ignore[arg-type]
        emitter=AckedEmitter(outbox=None, tracker=tracker), committer=None,  # type: ignore[arg-type]
        backpressure=None, outages=OutageGate(initial_wait=1, max_wait=1, metrics=metrics),  # type: ignore[arg-type]
        metrics=metrics, cooperative=True, flush_seconds=1,
    )
    rebalancer.assigned.add(TP)
    with pytest.raises(FatalError, match="cannot rewind"):
        rebalancer.rewind()
