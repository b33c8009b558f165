"""Reading image bytes from S3: the allowlist, the byte limit, retries, and botocore's errors.

Plain boto3, so the same code runs against AWS S3, MinIO, Ceph RGW, R2 or moto. botocore's
exceptions are translated here, once, into worker.errors: a transient failure (throttling, 5xx,
timeout, reset) is retried with exponential backoff and full jitter; after the last attempt it
becomes RetriesExhausted. Credentials come from the standard AWS chain and are never logged.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, NoCredentialsError

from worker.config import S3Settings
from worker.errors import (
    RetriesExhausted,
    SourceAccessDenied,
    SourceError,
    SourceForbidden,
    SourceNotFound,
    SourceTooLarge,
    SourceUnavailable,
)
from worker.messages import S3Uri

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "503"}


@dataclass(frozen=True, slots=True)
class Allowlist:
    """Buckets, or bucket/prefix pairs, that may be read. Empty allows nothing."""

    entries: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, sources: tuple[str, ...]) -> Allowlist:
        return cls(tuple((bucket, prefix) for bucket, _, prefix in (s.partition("/") for s in sources)))

    def check(self, uri: S3Uri) -> None:
        if not any(uri.bucket == bucket and uri.key.startswith(prefix) for bucket, prefix in self.entries):
            raise SourceForbidden(f"{uri} is outside the allowed sources")


def make_s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client; botocore's own retries are off because fetch() retries with jitter itself."""
    config = Config(
        connect_timeout=settings.timeout_seconds,
        read_timeout=settings.timeout_seconds,
        retries={"total_max_attempts": 1},
        max_pool_connections=settings.fetch_workers,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config
    )


class S3Source:
    """Fetches objects for the fetch stage's threads; thread-safe (boto3 clients are)."""

    def __init__(
        self, *, client: Any, settings: S3Settings, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._client = client
        self._settings = settings
        self._allowlist = Allowlist.parse(settings.allowed_sources)
        self._sleep = sleep

    def fetch(self, uri: S3Uri) -> tuple[bytes, int]:
        """The object's bytes and the number of attempts it took; raises a SourceError that says
        how many requests were made (0 when the allowlist refused it)."""
        self._allowlist.check(uri)
        settings = self._settings
        for attempt in range(1, settings.max_attempts + 1):
            try:
                return self._get(uri), attempt
            except SourceError as exc:
                exc.attempts = attempt
                raise
            except SourceUnavailable as exc:
                if attempt == settings.max_attempts:
                    exhausted = RetriesExhausted(f"{exc} (after {attempt} attempts)")
                    exhausted.attempts = attempt
                    raise exhausted from exc
                ceiling = min(settings.backoff_max_seconds, settings.backoff_initial_seconds * 2 ** (attempt - 1))
                self._sleep(random.uniform(0, ceiling))
        raise AssertionError("unreachable: the loop returns or raises")

    def _get(self, uri: S3Uri) -> bytes:
        limit = self._settings.max_object_bytes
        try:
            response = self._client.get_object(Bucket=uri.bucket, Key=uri.key)
            body = response["Body"]
            try:
                if response.get("ContentLength", 0) > limit:
                    raise SourceTooLarge(f"{uri} is {response['ContentLength']} bytes, over the limit of {limit}")
                data: bytes = body.read(limit + 1)
            finally:
                body.close()
        except ClientError as exc:
            raise _translate_client_error(uri, exc) from None
        except NoCredentialsError:
            raise SourceAccessDenied(f"{uri}: no AWS credentials found in the standard chain") from None
        except (ConnectionError, HTTPClientError) as exc:
            raise SourceUnavailable(f"{uri}: {type(exc).__name__}") from None
        except BotoCoreError as exc:
            raise SourceUnavailable(f"{uri}: {type(exc).__name__}: {exc}") from None
        if len(data) > limit:
            raise SourceTooLarge(f"{uri} is over the limit of {limit} bytes")
        return data


def _translate_client_error(uri: S3Uri, exc: ClientError) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    message = f"{uri}: {code or status} {error.get('Message', '')}".strip()
    if code in _NOT_FOUND or status == 404:
        return SourceNotFound(message)
    if code in _DENIED or status == 403:
        return SourceAccessDenied(message)
    if code in _THROTTLED or status >= 500 or status == 429:
        return SourceUnavailable(message)
    # Any other 4xx is the request's own fault and will not change on a retry.
    return SourceError(message) if 400 <= status < 500 else SourceUnavailable(message)
