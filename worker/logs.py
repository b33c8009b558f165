"""The worker's log: one line per event on stderr, as text for people or JSON for collectors.

``configure_logging(settings.log)`` sets up the root logger once, at startup (``clip-worker`` calls
it); every module then logs through ``logging.getLogger(__name__)`` as usual. Settings:
``CLIP_WORKER_LOG__LEVEL`` (default INFO) and ``CLIP_WORKER_LOG__FORMAT`` (text or json).

A line about one input record says which record, so that it can be found again: pass
``record_context`` as ``extra``::

    log.warning("record failed: %s", error, extra=record_context(work.position, request.id))

The position is anything with ``coordinates()`` (worker/formats/positions.py); the id is optional.
JSON lines then carry ``topic``, ``partition``, ``offset`` and ``id`` fields;
text lines end with ``[topic=... partition=... offset=... id=...]``.

Every line can be written whatever the input held: the message, the id and any traceback go
through ``safe_text`` (lone surrogates escaped, length capped), and JSON is written ASCII-only.

librdkafka logs through here too: ``kafka_config`` hands every client the ``LIBRDKAFKA_LOGGER``
logger (librdkafka's ``logger`` property). confluent-kafka maps librdkafka's syslog levels itself
(0-2 CRITICAL, 3 ERROR, 4 WARNING, 5-6 INFO, 7 DEBUG) and delivers a client's lines only while
that client is polled (or closed), so a client that was closed, or is no longer polled, prints
nothing: no "Connection refused" on stderr after the broker has gone.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Protocol

from worker.config import LogSettings
from worker.text import safe_text

LIBRDKAFKA_LOGGER = "worker.librdkafka"
_CONTEXT_KEY = "record_context"  # the LogRecord attribute that record_context() sets
_HANDLER_NAME = "clip-worker"
_MESSAGE_LIMIT = 10_000
_TRACEBACK_LIMIT = 50_000


class RecordPosition(Protocol):
    """Where an input came from (worker.formats.positions: a Kafka position or a batch one)."""

    def coordinates(self) -> tuple[str, int, int]: ...


@dataclass(frozen=True, slots=True)
class RecordContext:
    """The coordinates and id of the record a log line is about."""

    topic: str
    partition: int
    offset: int
    id: str | None

    def fields(self) -> dict[str, str | int]:
        fields: dict[str, str | int] = {"topic": self.topic, "partition": self.partition, "offset": self.offset}
        if self.id is not None:
            fields["id"] = self.id
        return fields


def record_context(position: RecordPosition, record_id: object = None) -> dict[str, RecordContext]:
    """``extra=`` for a log call about one record; the id (input text) is made safe here."""
    safe_id = None if record_id is None else safe_text(record_id, limit=200)
    topic, partition, offset = position.coordinates()
    return {_CONTEXT_KEY: RecordContext(safe_text(topic), partition, offset, safe_id)}


def configure_logging(settings: LogSettings, *, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record at ``settings.level`` or above to ``stream`` (stderr) in
    ``settings.format``. Calling it again replaces the handler it added before; handlers that
    others added (pytest's, say) are left alone. Returns the handler."""
    root = logging.getLogger()
    for old in [handler for handler in root.handlers if handler.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.level)
    return handler


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _context(record: logging.LogRecord) -> RecordContext | None:
    context = getattr(record, _CONTEXT_KEY, None)
    return context if isinstance(context, RecordContext) else None


class TextFormatter(logging.Formatter):
    """``2026-05-01T12:00:00.123Z WARNING worker.x: message [topic=images partition=0 offset=7 id=a]``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: "
        line += safe_text(record.getMessage(), limit=_MESSAGE_LIMIT)
        context = _context(record)
        if context is not None:
            line += " [" + " ".join(f"{key}={value}" for key, value in context.fields().items()) + "]"
        if record.exc_info:
            line += "\n" + safe_text(self.formatException(record.exc_info), limit=_TRACEBACK_LIMIT)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, the record's context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, str | int] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": safe_text(record.getMessage(), limit=_MESSAGE_LIMIT),
        }
        context = _context(record)
        if context is not None:
            fields |= context.fields()
        if record.exc_info:
            fields["exception"] = safe_text(self.formatException(record.exc_info), limit=_TRACEBACK_LIMIT)
        return json.dumps(fields)
