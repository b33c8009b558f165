"""Backpressure: pause every assigned partition when too much is in flight, resume below half.

"Too much" is any of: `max_in_flight` unfinished records, `max_in_flight_bytes` held by them
(images/budget.py), or an outage with records parked (outage.py: nothing new should pile up behind it).
pause() throws away what librdkafka prefetched, so it must not flap: resume only once records and
bytes are both at half their limit and no outage holds the input. Partitions assigned while paused
are paused on assignment (rebalance.py); partitions given up are released from the pause, because
librdkafka keeps the flag of a partition that this consumer paused, lost and got back.
Time paused is added to clip_worker_paused_seconds_total on every turn, not only at the resume, so
that a long pause shows while it lasts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from worker.errors import WorkerError
from worker.kafka.boundary import kafka_call
from worker.metrics import Metrics


class Backpressure:
    def __init__(
        self, *, consumer: Consumer, max_in_flight: int, max_bytes: int, metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._max_in_flight = max_in_flight
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._clock = clock
        self._counted_to = 0.0  # while paused: up to when the pause has been counted
        self.paused = False

    def update(self, in_flight: int, in_flight_bytes: int, *, hold: bool) -> None:
        if self.paused:
            self._count_pause()
        if not self.paused and (hold or in_flight >= self._max_in_flight or in_flight_bytes >= self._max_bytes):
            self.pause()
        elif self.paused and not hold and in_flight <= self._max_in_flight // 2 \
                and in_flight_bytes <= self._max_bytes // 2:
            kafka_call(lambda: self._consumer.resume(self._consumer.assignment()), what="resume")
            self._set(paused=False)

    def pause(self) -> None:
        kafka_call(lambda: self._consumer.pause(self._consumer.assignment()), what="pause")
        self._set(paused=True)

    def release(self, partitions: list[TopicPartition]) -> None:
        """Clear the pause flag of partitions being given up (revoked or lost)."""
        with contextlib.suppress(WorkerError):  # lost partitions may be unknown to the client by now
            kafka_call(lambda: self._consumer.resume(partitions), what="resume")

    def _count_pause(self) -> None:
        now = self._clock()
        self._metrics.paused_seconds.inc(now - self._counted_to)
        self._counted_to = now

    def _set(self, *, paused: bool) -> None:
        if paused and not self.paused:
            self._counted_to = self._clock()
        self.paused = paused
        self._metrics.paused.set(int(paused))
