"""Every error the worker raises, translated once at the boundary of the library that caused it.

botocore, PIL, torch and librdkafka each have their own exceptions; the module that talks to each
library turns them into one of these, so that the runtime only ever decides on two questions: can
this record ever succeed (retryable or permanent), and at which stage did it fail.

    WorkerError
    ├── ConfigError                 a setting is invalid; raised at startup, names the setting
    ├── FatalError                  stop without committing more: policy "stop", dead-letter limit, Kafka
    ├── RetryableError              transient: the same request may succeed later
    │   └── SourceUnavailable       S3 throttling, 5xx, timeouts, connection resets
    └── RecordError                 permanent for this record: dead-letter it, keep going
        ├── BadMessage              stage decode-message: malformed JSON/Avro, missing field, bad URI
        ├── SourceError             stage fetch
        │   ├── SourceForbidden     bucket or key prefix not in the allowlist
        │   ├── SourceNotFound      no such bucket or key
        │   ├── SourceAccessDenied  the credentials may not read the object
        │   ├── SourceTooLarge      the object is over the byte limit
        │   └── RetriesExhausted    a RetryableError that did not clear within the attempt budget
        ├── ImageError              stage decode-image
        │   ├── EmptyImage          zero bytes
        │   ├── NotAnImage          bytes of no image format (PDF, HTML, ...)
        │   ├── TruncatedImage      the image data ends early
        │   ├── CorruptImage        the image data is damaged in some other way
        │   ├── UnsupportedImage    a mode or format the model's transform cannot take
        │   └── DecompressionBomb   more pixels than the limit, found before the full decode
        ├── EmbedError              stage embed: the device failed for this record alone
        ├── EncodeError             stage encode: the output record could not be serialised
        └── OutputRejected          stage produce: the broker refused the output record for good
"""

from __future__ import annotations

from typing import ClassVar


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


class RetryableError(WorkerError):
    """A transient failure: the same request may succeed if tried again after a backoff."""


class SourceUnavailable(RetryableError):
    """S3 did not answer usefully this time: throttling, a 5xx, a timeout, a reset connection."""


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


class EmbedError(RecordError):
    stage = "embed"


class EncodeError(RecordError):
    stage = "encode"


class OutputRejected(RecordError):
    stage = "produce"
