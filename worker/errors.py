"""Every error the worker raises, translated once at the boundary of the library that caused it.

botocore, PIL, torch and librdkafka each have their own exceptions; the module that talks to each
library turns them into one of these, so that the runtime only ever decides on two questions: can
this record ever succeed (retryable or permanent), and at which stage did it fail.

    WorkerError
    ├── ConfigError                 a setting is invalid; raised at startup, names the setting
    ├── FatalError                  stop without committing more: policy "stop", streak limit, Kafka
    │   ├── ClientFatal             librdkafka says this client is done: fenced, a fatal error
    │   ├── ClientWedged            a librdkafka call did not return by its deadline
    │   ├── KafkaUnreachable        a tool found no broker that answers within its bound
    │   ├── KafkaAuthFailed         the brokers kept refusing authentication or the TLS handshake
    │   ├── DeviceFailed            the device fails a known-good input, or a batch ran past its deadline
    │   └── WeightsUnavailable      the model's weights could not be fetched or failed their checksum
    ├── RetryableError              transient: the same request may succeed later
    │   ├── SourceUnavailable       S3 throttling, 5xx, timeouts, connection resets (retried per record)
    │   ├── KafkaUnavailable        a librdkafka call timed out or the broker is unreachable
    │   ├── TransactionAborted      the open transaction must be aborted and its work redone
    │   └── Outage                  the environment failed, not the record: park it, pause, retry later
    │       ├── SourceOutage        every attempt failed and nothing else could be fetched meanwhile
    │       ├── CredentialsUnavailable  no credentials, or they expired / were refused as a whole
    │       └── RegistryUnavailable the schema registry did not answer
    └── RecordError                 permanent for this record: dead-letter it, keep going
        ├── BadMessage              stage decode-message: malformed JSON/Avro, missing field, bad URI
        ├── SourceError             stage fetch
        │   ├── SourceForbidden     bucket or key prefix not in the allowlist
        │   ├── SourceNotFound      no such bucket or key
        │   ├── SourceAccessDenied  the credentials may not read this object
        │   ├── SourceTooLarge      the object is over the byte limit
        │   └── RetriesExhausted    this object kept failing while other objects were fetched fine
        ├── ImageError              stage decode-image
        │   ├── EmptyImage          zero bytes
        │   ├── NotAnImage          bytes of no image format (PDF, HTML, ...)
        │   ├── TruncatedImage      the image data ends early
        │   ├── CorruptImage        the image data is damaged in some other way
        │   ├── UnsupportedImage    a mode or format the model's transform cannot take
        │   ├── DecompressionBomb   more pixels than the limit, found before the full decode
        │   └── DecoderCrashed      a decoder process died twice while this image was in it
        ├── RecordTimeout           a stage took longer than record_timeout_seconds for this record
        ├── UnexpectedError         a stage raised something no boundary translated (a bug, or MemoryError)
        ├── EmbedError              stage embed: the device failed for this record alone
        ├── EncodeError             stage encode: the output record could not be serialised
        └── OutputRejected          stage produce: the broker refused the output record for good
            └── OutputTooLarge      the output record is over the producer's message.max.bytes

Outage versus RecordError is the question the dead-letter topic depends on: only records that will
never succeed go there; an outage pauses the input and retries the same records until it clears.
"""

from __future__ import annotations

import functools
import traceback
from typing import Any, ClassVar

_STACK_FRAMES = 8  # of an unexpected error's traceback, in its dead letter


class WorkerError(Exception):
    """Base of every error this package raises on purpose."""


class FatalError(WorkerError):
    """The worker must stop without committing further: a policy says so, or Kafka failed for good."""


class ConfigError(WorkerError):
    """A setting is invalid. The message names the setting (its env var where it has one)."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"invalid setting {setting}: {reason}")
        self.setting = setting
        self.reason = reason


class ClientFatal(FatalError):
    """librdkafka reports this client instance as unusable (fenced, a fatal error): restart it."""


class ClientWedged(FatalError):
    """A librdkafka call did not return by its deadline; the client cannot be closed cleanly."""


class KafkaUnreachable(FatalError):
    """No broker answered a one-shot command (replay, enqueue) within its bound: it stops, rather than wait."""


class KafkaAuthFailed(FatalError):
    """The brokers refused the worker's credentials, or its TLS handshake, for kafka.auth_failure_seconds:
    retrying does not change either, so the worker stops (exit 1) with a line naming which."""


class DeviceFailed(FatalError):
    """The device is in a bad state: it fails a known-good input, or a batch outlived its deadline.
    The worker exits without committing the batch; a restart gets a fresh CUDA context."""


class WeightsUnavailable(FatalError):
    """The model's weights could not be had: the hub or S3 did not answer within the retries, the object is
    missing or refused, the hub is offline and the cache lacks them, or the file failed its checksum. The
    setting may be right: this is the environment's failure, not the configuration's (exit 1, not 2)."""


class RetryableError(WorkerError):
    """A transient failure: the same request may succeed if tried again after a backoff."""


class SourceUnavailable(RetryableError):
    """S3 did not answer usefully this time: throttling, a 5xx, a timeout, a reset connection."""


class KafkaUnavailable(RetryableError):
    """A librdkafka call timed out, or the broker could not be reached this time."""


class TransactionAborted(RetryableError):
    """The open transaction cannot commit: abort it and redo its records from the committed offsets."""


class Outage(RetryableError):
    """Something the records depend on is down. Parked records are retried, never dead-lettered."""

    cause: ClassVar[str] = "unknown"


class SourceOutage(Outage):
    cause = "s3"
    attempts: int = 0  # S3 requests made for this record in the try that ran into the outage


class CredentialsUnavailable(Outage):
    cause = "credentials"


class RegistryUnavailable(Outage):
    cause = "schema-registry"


class RecordError(WorkerError):
    """This record can never succeed as it is. `stage` says where in the data path it failed."""

    stage: ClassVar[str] = "unknown"

    @property
    def reason(self) -> str:
        return str(self) or type(self).__name__


class BadMessage(RecordError):
    stage = "decode-message"


class SourceError(RecordError):
    stage = "fetch"
    attempts: int = 0  # S3 requests made for this record before it failed for good


class SourceForbidden(SourceError):
    pass


class SourceNotFound(SourceError):
    pass


class SourceAccessDenied(SourceError):
    pass


class SourceTooLarge(SourceError):
    pass


class RetriesExhausted(SourceError):
    pass


class ImageError(RecordError):
    stage = "decode-image"


class EmptyImage(ImageError):
    pass


class NotAnImage(ImageError):
    pass


class TruncatedImage(ImageError):
    pass


class CorruptImage(ImageError):
    pass


class UnsupportedImage(ImageError):
    pass


class DecompressionBomb(ImageError):
    pass


class DecoderCrashed(ImageError):
    """Decoding this image killed the decoder process (a segfault in a codec, the OOM killer) twice."""


class RecordTimeout(RecordError):
    """A stage held this record past record_timeout_seconds; its late result, if any, is dropped."""

    def __init__(self, message: str, *, stage: str) -> None:
        super().__init__(message)
        self.stage = stage  # type: ignore[misc]  # per instance: the stage that timed out

    def __reduce__(self) -> tuple[Any, ...]:  # from a decoder process: `stage` is keyword-only
        return (functools.partial(RecordTimeout, stage=self.stage), (str(self),), self.__dict__)


class UnexpectedError(RecordError):
    """A stage raised an exception no boundary knows. It fails this record only: no input may stop
    the worker. The original class is named in the message."""

    def __init__(self, error: BaseException, *, stage: str) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.stage = stage  # type: ignore[misc]
        self.__cause__ = error  # with its traceback, for the dead letter's stack trace
        self._trace: str | None = None  # the traceback as text, once it crossed a process boundary

    def trace(self) -> str:
        """The last frames of the original error's traceback, for the one who fixes the bug."""
        if self._trace is not None:
            return self._trace
        if self.__cause__ is None:
            return ""
        try:
            return "".join(traceback.format_exception(self.__cause__, limit=-_STACK_FRAMES, chain=False))
        except Exception as exc:  # formatting reads source files and calls __str__: neither may fail the record
            return f"<traceback unavailable: {type(exc).__name__}>"

    def __reduce__(self) -> tuple[Any, ...]:  # from a decoder process: the cause travels as text
        return (_unexpected_from_text, (str(self), self.stage, self.trace()))


def _unexpected_from_text(message: str, stage: str, trace: str) -> UnexpectedError:
    error = UnexpectedError.__new__(UnexpectedError)
    Exception.__init__(error, message)
    error.stage = stage  # type: ignore[misc]
    error._trace = trace
    return error


class EmbedError(RecordError):
    stage = "embed"


class EncodeError(RecordError):
    stage = "encode"


class OutputRejected(RecordError):
    stage = "produce"


class OutputTooLarge(OutputRejected):
    pass
