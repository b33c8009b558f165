"""The one place librdkafka's errors become the worker's (worker/errors.py), like httpx's
``map_httpcore_exceptions``: nothing else in the worker catches ``KafkaException`` or reads a code.

Three ways librdkafka reports a failure, all translated by ``translate``:
- a ``KafkaException`` raised by a call (``kafka_call`` wraps the call);
- a ``KafkaError`` handed to a delivery callback or carried by a consumed message;
- a call that never returns: librdkafka's ``send_offsets_to_transaction`` can block past its own
  timeout, forever, after the group coordinator went away and came back (librdkafka #5456, #5511).
  With ``deadline=`` the call runs on a daemon thread and ``ClientWedged`` is raised when it does
  not return in time; the client is then abandoned (its destructor can hang too) and replaced by
  new clients that fence what it left open (worker/stream/clients.py).

A client's constructor raises ``KafkaException`` too, for a property librdkafka refuses: ``create``
turns that into a ``ConfigError`` naming the property and the setting it came from (exit code 2).

And a record's headers, which confluent-kafka decodes (and may fail to) only when asked, are read
here too (``read_headers``), for the worker and for replay alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message

from worker.errors import (
    ClientFatal,
    ClientWedged,
    ConfigError,
    FatalError,
    KafkaUnavailable,
    OutputRejected,
    OutputTooLarge,
    TransactionAborted,
    WorkerError,
)
from worker.kafka.signals import redact, refused_property

T = TypeVar("T")

# The client instance is finished: another instance took over (fenced) or librdkafka gave up on it.
_FATAL_CODES = frozenset({
    KafkaError._FATAL, KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.FENCED_INSTANCE_ID,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})
# Waits that ran out, and brokers that could not be reached: the same call may work later.
_UNAVAILABLE_CODES = frozenset({
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.CONCURRENT_TRANSACTIONS,
})
# librdkafka names some properties by their older names in its errors
_ALIASES = {
    "request.required.acks": "acks", "queue.buffering.max.ms": "linger.ms", "message.send.max.retries": "retries",
}
_TOO_LARGE_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


def translate(error: KafkaError, *, what: str) -> WorkerError:
    """The worker's error for one librdkafka error; ``what`` names the call or the record."""
    message = f"{what}: {error.str()}"
    code = error.code()
    if error.fatal():
        return ClientFatal(message)
    if error.txn_requires_abort():
        return TransactionAborted(message)
    if code in _FATAL_CODES:
        return ClientFatal(message)
    if code in _TOO_LARGE_CODES:
        return OutputTooLarge(message)
    if error.retriable() or code in _UNAVAILABLE_CODES:
        return KafkaUnavailable(message)
    if code in (KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG):
        return OutputRejected(message)
    return FatalError(message)


def is_code(error: KafkaError | None, *names: str) -> bool:
    """Whether ``error`` carries one of the named codes (e.g. ``"_PARTITION_EOF"``)."""
    return error is not None and any(error.code() == getattr(KafkaError, name, object()) for name in names)


def kafka_call(
    fn: Callable[[], T], *, what: str, deadline: float | None = None, ignore: tuple[str, ...] = ()
) -> T | None:
    """Run one librdkafka call; its ``KafkaException`` comes out translated, except for the codes
    named in ``ignore`` (e.g. ``"_NO_OFFSET"``: nothing to commit), which return None. With
    ``deadline`` (seconds) the call runs on a daemon thread, and ``ClientWedged`` is raised if it
    has not returned by then."""
    if deadline is None:
        return _translated(fn, what, ignore)
    outcome: list[T | BaseException | None] = []
    thread = threading.Thread(
        target=lambda: outcome.append(_captured(fn, what, ignore)), name=f"kafka-{what}", daemon=True
    )
    thread.start()
    thread.join(deadline)
    if not outcome:
        raise ClientWedged(f"librdkafka {what} did not return within {deadline:.0f} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def create(factory: Callable[[dict[str, Any]], T], conf: dict[str, Any], *, what: str,
           settings: dict[str, dict[str, str]] | None = None) -> T:
    """``factory(conf)`` (a Consumer, Producer or AdminClient): a property librdkafka refuses becomes a
    ConfigError naming it, and the setting (a key of ``settings``: an env var -> the properties it sets)
    that holds it; any other error is translated as a call's."""
    try:
        return factory(conf)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() not in (KafkaError._INVALID_ARG, KafkaError._INVALID_TYPE, KafkaError._UNKNOWN_PROTOCOL):
            raise translate(error, what=what) from None
        prop = refused_property(error.str())
        names = {prop, _ALIASES.get(prop or "")}
        setting = next((env for env, props in (settings or {}).items() if names & props.keys()), None)
        raise ConfigError(setting or f"kafka client property {prop or '?'}",
                          f"librdkafka refuses it for the {what}: {redact(error.str())}") from None
    except (TypeError, ValueError) as exc:  # a property of the wrong Python type
        raise ConfigError(f"kafka client configuration ({what})", redact(str(exc))) from None


def read_headers(message: Message) -> list[tuple[str, str | bytes | None]] | None:
    """A consumed record's headers as a list; None when the client cannot decode them (confluent-kafka
    decodes header names as UTF-8: hostile bytes raise there)."""
    try:
        headers = message.headers() or []
    except Exception:  # whatever decoding a name raises
        return None
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _translated(fn: Callable[[], T], what: str, ignore: tuple[str, ...]) -> T | None:
    try:
        return fn()
    except KafkaException as exc:
        if is_code(exc.args[0], *ignore):
            return None
        raise translate(exc.args[0], what=what) from exc


def _captured(fn: Callable[[], T], what: str, ignore: tuple[str, ...]) -> T | BaseException | None:
    try:
        return _translated(fn, what, ignore)
    except BaseException as exc:  # handed back to the calling thread
        return exc
