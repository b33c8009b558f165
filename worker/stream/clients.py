"""The Kafka clients of one generation, and their replacement when one of them fails for good.

A broker failover can leave a librdkafka client in a state it never leaves: a transactional call
that does not return (``send_offsets_to_transaction`` ignores its timeout while the group
coordinator is down, https://github.com/confluentinc/librdkafka/issues/5456, and can hang for good
once the coordinator's broker has left the metadata,
https://github.com/confluentinc/librdkafka/issues/5511), a fatal error, a producer fenced because
its own transaction timed out during the outage. Such a client is replaced, not the process: the
model, the image path's threads and processes and the health server stay.

A replacement, in order:
1. the old consumer's callbacks are switched off and everything in flight is dropped (the tracker
   forgets every partition: records polled before now belong to an old generation and are never
   finished, so they are redone, never doubled);
2. the old clients go to a daemon thread, which closes both (librdkafka may hang in a close; that
   thread is never waited for, and a closed client's destructor has nothing left to do);
3. a new generation is built: a producer with the same ``transactional.id``, whose
   ``init_transactions`` fences the old one and aborts its open transaction, and a consumer that
   rejoins under the same ``group.instance.id`` and starts from the committed offsets.

Only ``kafka.client_replacements_max`` replacements are made within
``kafka.client_replacements_window_seconds``; the next failure stops the process as before.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer

from worker.errors import ClientFatal, ClientWedged, FatalError
from worker.metrics import Metrics
from worker.stream.backpressure import Backpressure
from worker.stream.delivery.acked import Committer
from worker.stream.rebalance import Rebalancer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Generation:
    """One consumer and one producer, and the parts of the loop bound to them."""

    consumer: Consumer
    producer: Producer
    committer: Committer
    backpressure: Backpressure
    rebalancer: Rebalancer

    def start(self, input_topic: str) -> None:
        rebalancer = self.rebalancer
        self.consumer.subscribe(
            [input_topic], on_assign=rebalancer.on_assign, on_revoke=rebalancer.on_revoke, on_lost=rebalancer.on_lost,
        )
        self.committer.start()


class Clients:
    """The current generation; `replace(cause)` builds the next one, within the replacement budget."""

    def __init__(
        self, *, build: Callable[[], Generation], input_topic: str, metrics: Metrics, max_replacements: int,
        window_seconds: float, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._input_topic = input_topic
        self._metrics = metrics
        self._max = max_replacements
        self._window = window_seconds
        self._clock = clock
        self._recent: deque[float] = deque()  # when each replacement within the window began
        self.replacing = False
        self.current = build()

    def start(self) -> None:
        self.current.start(self._input_topic)

    def replace(self, cause: FatalError) -> None:
        """Replace the clients after `cause`, or raise `cause` once the budget is spent. New clients
        that fail as they start (a wedged or fatal init) are replaced in turn, within the budget."""
        began = self._clock()
        self.replacing = True
        try:
            while True:
                self._spend(cause)
                old = self.current
                old.rebalancer.retire()
                _abandon(old)
                self.current = self._build()
                try:
                    self.current.start(self._input_topic)
                    break
                except (ClientFatal, ClientWedged) as again:
                    cause = again
        finally:
            self.replacing = False
        log.warning("Kafka clients replaced in %.1f s; resuming from the committed offsets", self._clock() - began)

    def _spend(self, cause: FatalError) -> None:
        """Count one replacement for `cause`, or raise it when the window holds the most allowed."""
        now = self._clock()
        while self._recent and now - self._recent[0] > self._window:
            self._recent.popleft()
        if len(self._recent) >= self._max:
            log.error("Kafka clients replaced %d times within %.0f s already: stopping", len(self._recent),
                      self._window)
            raise cause
        self._recent.append(now)
        reason = reason_of(cause)
        log.error("replacing the Kafka clients (%s, %d of %d within %.0f s): %s", reason, len(self._recent),
                  self._max, self._window, cause)
        self._metrics.client_replacements.labels(reason=reason).inc()


def reason_of(cause: FatalError) -> str:
    """The metric's label: `wedged` (a call did not return in time) or `fatal` (the client is done)."""
    return "wedged" if isinstance(cause, ClientWedged) else "fatal"


def _abandon(old: Generation) -> None:
    """Close the old clients on a daemon thread that nobody waits for: a wedged client can hang in
    its close, and then only that thread hangs. Both are closed there, the producer too: left to its
    destructor, its librdkafka handle would be destroyed (and might hang) on whichever thread let go
    of it last, perhaps the loop's."""

    def close(consumer: Consumer, producer: Producer) -> None:
        with contextlib.suppress(Exception):
            consumer.close()
        with contextlib.suppress(Exception):
            producer.purge()
        with contextlib.suppress(Exception):
            producer.close()

    threading.Thread(target=close, args=(old.consumer, old.producer), name="kafka-abandoned", daemon=True).start()
