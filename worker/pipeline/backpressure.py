"""Backpressure: pause every assigned partition when too much is in flight, resume below half.

pause() throws away what librdkafka prefetched, so it must not flap: pause at `max_in_flight`
unfinished records, resume only at half of that. Partitions assigned while paused are paused on
assignment (runtime.py); partitions given up are released from the pause, because librdkafka keeps
the flag of a partition that this consumer paused, lost and got back.
"""

from __future__ import annotations

import contextlib

from confluent_kafka import Consumer, KafkaException, TopicPartition

from worker.metrics import Metrics


class Backpressure:
    def __init__(self, *, consumer: Consumer, max_in_flight: int, metrics: Metrics) -> None:
        self._consumer = consumer
        self._max_in_flight = max_in_flight
        self._metrics = metrics
        self.paused = False

    def update(self, in_flight: int) -> None:
        if not self.paused and in_flight >= self._max_in_flight:
            self.pause()
        elif self.paused and in_flight <= self._max_in_flight // 2:
            self._consumer.resume(self._consumer.assignment())
            self._set(paused=False)

    def pause(self) -> None:
        self._consumer.pause(self._consumer.assignment())
        self._set(paused=True)

    def release(self, partitions: list[TopicPartition]) -> None:
        """Clear the pause flag of partitions being given up (revoked or lost)."""
        with contextlib.suppress(KafkaException):  # lost partitions may be unknown to the client by now
            self._consumer.resume(partitions)

    def _set(self, *, paused: bool) -> None:
        self.paused = paused
        self._metrics.paused.set(int(paused))
