"""Kafka records as the worker handles them: the polled input's own parts, and a record to produce."""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True, slots=True)
class PolledRecord:
    """What the stream polled, beside its position: kept for the dead-letter record, the forwarded
    headers and the end-to-end latency. `generation` is its partition's assignment when it was polled
    (stream/offsets.py): a record of an earlier assignment finishes nothing."""

    generation: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to produce: an output, a dead letter, or a replayed input."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None = None

    @property
    def nbytes(self) -> int:
        headers = sum(len(name.encode()) + len(value or b"") for name, value in self.headers)
        return len(self.key or b"") + len(self.value or b"") + headers
