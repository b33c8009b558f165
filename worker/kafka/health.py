"""The worker's connection to Kafka, as one state read from librdkafka's signals, for the stream and the tools.

librdkafka retries a broker it cannot reach by itself, and says so in a line per attempt: hundreds a
minute while Kafka is down, and as many for one broker of three restarting, when nothing is wrong.
``KafkaHealth`` is handed every client's ``error_cb``, ``stats_cb`` and log lines (``attach``) and
turns them into what an operator needs:

- Kafka unreachable (librdkafka's ``_ALL_BROKERS_DOWN``) is an outage like S3's: one line when no
  broker answers, one when one does again (a broker in state UP in the statistics) with how long it
  took and how many of librdkafka's lines were held back meanwhile; ``clip_worker_outage{cause="kafka"}``
  is 1 in between and ``ready`` is False. Records wait in the clients: none is lost or dead-lettered.
- One broker failing while another answers: its lines at WARNING at most, once per broker per
  ``line_interval`` with a count of those held back.
- Authentication or TLS refused (worker/kafka/signals.py): retrying does not help, so once it has
  lasted ``auth_failure_seconds`` with no broker answering, one ``KafkaAuthFailed`` naming it is
  reported (``stop_with``: the stream's Stop), and the worker stops with exit code 1.

The tools (``announce=False``) print none of these lines: what they could not reach is the one line
of the error they stop with (``probe``, ``explain``). Every text is redacted (``signals.redact``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from worker.errors import ClientWedged, FatalError, KafkaAuthFailed, KafkaUnavailable, KafkaUnreachable, WorkerError
from worker.kafka.boundary import kafka_call
from worker.kafka.signals import Kind, broker_of, classify_error, classify_text, redact
from worker.logs import LIBRDKAFKA_LOGGER
from worker.metrics import Metrics
from worker.text import safe_text

log = logging.getLogger(__name__)
_librdkafka = logging.getLogger(LIBRDKAFKA_LOGGER)
STATS_INTERVAL_MS = 3000  # how soon a broker that answers again is seen
_TEXT_LIMIT = 400
_THREAD = re.compile(r"^\[thrd:[^\]]*\]:\s*")  # librdkafka's thread name, before a line's text
_WHAT_TO_CHECK = {
    "auth": "authentication failed", "tls": "TLS handshake failed",
}
_ADVICE = {
    "auth": "check kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password",
    "tls": "check the broker's certificate and the CA the worker trusts (ssl.ca.location in kafka.client_config)",
}


class KafkaHealth:
    def __init__(
        self, *, bootstrap: str, auth_failure_seconds: float, metrics: Metrics | None = None, announce: bool = True,
        line_interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bootstrap = bootstrap
        self._auth_seconds = auth_failure_seconds
        self._metrics = metrics
        self._announce = announce
        self._interval = line_interval
        self._clock = clock
        self._down_since: float | None = None
        self._held_back = 0  # librdkafka lines not printed since the outage began
        self._last_failure = ""  # the last connection failure's text, for the lines and errors
        self._refused: tuple[Kind, float, str] | None = None  # auth or TLS: kind, since, text
        self._refusals = 0
        self._fired = False
        self._report: Callable[[FatalError], None] | None = None
        self._brokers: dict[str, tuple[float, int]] = {}  # broker -> (its line printed at, lines held back since)
        if metrics is not None:
            metrics.outage.labels(cause="kafka").set(0)

    @classmethod
    def for_tool(cls, bootstrap: str, auth_failure_seconds: float) -> KafkaHealth:
        return cls(bootstrap=bootstrap, auth_failure_seconds=auth_failure_seconds, announce=False)

    @property
    def down(self) -> bool:
        """True from librdkafka's "all brokers are down" until a broker answers again."""
        return self._down_since is not None

    @property
    def ready(self) -> bool:
        return self._down_since is None

    def attach(self, conf: dict[str, Any]) -> dict[str, Any]:
        """``conf`` with this health's callbacks and logger (an existing ``stats_cb`` is still called)."""
        stats = conf.get("stats_cb")
        interval = int(conf.get("statistics.interval.ms") or STATS_INTERVAL_MS)

        def on_stats(stats_json: str) -> None:
            if stats is not None:
                stats(stats_json)
            self.on_stats(stats_json)

        return conf | {
            "logger": _Lines(self), "error_cb": self.on_error, "stats_cb": on_stats,
            "statistics.interval.ms": min(interval, STATS_INTERVAL_MS),
        }

    def stop_with(self, report: Callable[[FatalError], None]) -> None:
        """Where a persisting authentication or TLS failure is reported (the stream's Stop)."""
        self._report = report

    # -- librdkafka's signals --------------------------------------------------------------------

    def on_error(self, error: KafkaError) -> None:
        text = redact(error.str())
        kind = classify_error(error)
        if kind == "unreachable":
            self._went_down()
        elif kind in ("auth", "tls"):
            self._refusal(kind, text)
        elif kind == "broker":
            self._last_failure = text
        elif self._announce:
            log.error("Kafka client error: %s", safe_text(text, limit=_TEXT_LIMIT))
        self.check()

    def on_stats(self, stats_json: str) -> None:
        brokers = json.loads(stats_json).get("brokers", {})
        if any(b.get("state") == "UP" and b.get("source") != "logical" for b in brokers.values()):
            self.answered()
        self.check()

    def on_line(self, level: int, facility: str, text: str) -> None:
        """One of librdkafka's log lines (``_Lines``)."""
        text = redact(text)
        kind = classify_text(text)
        if kind == "other":
            _librdkafka.log(level, "%s %s", facility, safe_text(text, limit=_TEXT_LIMIT))
            return
        if kind in ("auth", "tls"):
            self._refusal(kind, text)
        if kind != "broker" or self.down or not self._announce:
            self._held_back += 1  # said once by this health's own lines, or by the tool's error
            return
        broker = broker_of(text) or "?"
        printed_at, held = self._brokers.get(broker, (float("-inf"), 0))
        now = self._clock()
        if now - printed_at < self._interval:
            self._brokers[broker] = (printed_at, held + 1)
            return
        self._brokers[broker] = (now, 0)
        more = f" ({held} more such line(s) in the last {self._interval:.0f} s)" if held else ""
        _librdkafka.log(min(level, logging.WARNING), "%s %s%s", facility, safe_text(text, limit=_TEXT_LIMIT), more)

    def answered(self) -> None:
        """A broker answers: an outage, or an authentication or TLS failure, is over."""
        self._refused, self._refusals = None, 0
        if self._down_since is None:
            return
        seconds, held = self._clock() - self._down_since, self._held_back
        self._down_since, self._held_back = None, 0
        if self._metrics is not None:
            self._metrics.outage.labels(cause="kafka").set(0)
        if self._announce:
            log.warning("Kafka back after %.0f s: a broker of %s answers again (%d repeated librdkafka line(s) "
                        "held back)", seconds, self._bootstrap, held)

    def check(self) -> None:
        """Report ``KafkaAuthFailed`` once an authentication or TLS failure has lasted its bound."""
        if self._fired or self._report is None:
            return
        refusal = self.due_refusal()
        if refusal is not None:
            self._fired = True
            self._report(refusal)

    def due_refusal(self) -> KafkaAuthFailed | None:
        """The authentication or TLS failure to stop with, once it has lasted its bound; else None."""
        if self._refused is None or self._clock() - self._refused[1] < self._auth_seconds:
            return None
        return self.refusal_error()

    # -- the errors a client stops with ----------------------------------------------------------

    def refusal_error(self) -> KafkaAuthFailed:
        assert self._refused is not None
        kind, since, text = self._refused
        return KafkaAuthFailed(
            f"Kafka {_WHAT_TO_CHECK[kind]} for {self._clock() - since:.0f} s ({self._refusals} time(s)) at "
            f"{self._bootstrap}: {safe_text(text, limit=_TEXT_LIMIT)}; {_ADVICE[kind]}"
        )

    def explain(self, error: WorkerError, *, what: str = "", timeout: float | None = None) -> WorkerError:
        """The error to stop with for ``error``: a refused authentication or handshake, when there was
        one; "no broker answered" for a call that could not reach Kafka; else ``error`` itself."""
        if isinstance(error, ClientWedged):
            return error
        if self._refused is not None:
            return self.refusal_error()
        if isinstance(error, KafkaUnavailable) and (self.down or self._last_failure or self._held_back):
            request = f" the {what} request" if what else ""
            within = f" within {timeout:.0f} s" if timeout is not None else ""
            last = f" (last: {safe_text(self._last_failure, limit=_TEXT_LIMIT)})" if self._last_failure else ""
            return KafkaUnreachable(
                f"Kafka unreachable: no broker of {self._bootstrap} answered{request}{within}{last}"
            )
        return error

    def probe(self, client: Any, *, what: str, timeout: float) -> Any:
        """The cluster's metadata, asked of ``client`` within ``timeout``; a tool's first call, so that a
        missing broker is one error within that bound rather than a wait on each later call."""
        try:
            return kafka_call(lambda: client.list_topics(timeout=timeout), what=what)
        except KafkaUnavailable as exc:
            with contextlib.suppress(Exception):  # whatever the client is in, the error below is what matters
                client.poll(0)  # hands over the errors and lines that say why
            raise self.explain(exc, what=what, timeout=timeout) from None

    def _went_down(self) -> None:
        if self._down_since is not None:
            return
        self._down_since = self._clock()
        if self._metrics is not None:
            self._metrics.outage.labels(cause="kafka").set(1)
        if self._announce:
            last = f" (last: {safe_text(self._last_failure, limit=_TEXT_LIMIT)})" if self._last_failure else ""
            log.warning("Kafka unreachable: no broker of %s answers%s; records wait, none is dead-lettered, "
                        "readiness is off until a broker answers", self._bootstrap, last)

    def _refusal(self, kind: Kind, text: str) -> None:
        self._refusals += 1
        since = self._refused[1] if self._refused is not None else self._clock()
        self._refused = (kind, since, text)
        self._last_failure = ""  # not a connection failure: the auth or TLS error says it


class _Lines:
    """librdkafka's ``logger``: confluent-kafka calls ``log(level, "%s [%s] %s", facility, name, text)``."""

    def __init__(self, health: KafkaHealth) -> None:
        self._health = health

    def log(self, level: int, msg: str, *args: Any) -> None:
        facility = str(args[0]) if args else ""
        text = str(args[-1]) if len(args) >= 3 else (msg % args if args else msg)
        self._health.on_line(level, facility, _THREAD.sub("", text, count=1))
