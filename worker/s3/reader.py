"""Reading image bytes from S3: the allowlist, the byte limit, retries, and botocore's errors; and
listing a prefix, for the batch commands.

boto3's client holds the configuration and credentials, so the same code runs against AWS S3, MinIO,
Ceph RGW, R2 or moto; a GET is signed as botocore signs it (worker.s3.sign) and sent by libcurl
(worker.s3.get: botocore's get_object costs the GIL more than the transfer itself), listing stays
on boto3. botocore's and libcurl's errors are translated here, once, into worker.errors: a transient
failure (throttling, 5xx, timeout, reset) is retried with exponential backoff and full jitter; after
the last attempt it becomes RetriesExhausted. Credentials come from the standard AWS chain and are never logged.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import boto3
import pycurl
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from worker.config import S3Settings
from worker.errors import (
    CredentialsUnavailable,
    RecordTimeout,
    RetriesExhausted,
    SourceAccessDenied,
    SourceError,
    SourceNotFound,
    SourceOutage,
    SourceTooLarge,
    SourceUnavailable,
    WorkerError,
)
from worker.formats.messages import S3Uri
from worker.s3.allowlist import Allowlist
from worker.s3.get import SignedGet
from worker.text import safe_text

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
# The credentials as a whole, not this object: every other request fails the same way (an outage).
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "503"}


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


class Served(Protocol):
    """Where the monotonic time of the last successful fetch is kept: ``multiprocessing.Value("d")``
    shares it between processes (time.monotonic is one clock for the whole machine on Linux)."""

    value: float


@dataclass(slots=True)
class LastSuccess:
    """The default ``Served``: this process's fetches only."""

    value: float = float("-inf")


class S3Reader:
    """Fetches objects for the fetch stage's threads; thread-safe (boto3 clients are; SignedGet: a handle per thread).

    An outage is not the record's fault. When a record runs out of attempts, or past its deadline,
    the question is whether S3 served anyone else meanwhile: if another fetch succeeded since the
    backoff before this record's last attempt, the failure is this object's (RetriesExhausted, RecordTimeout: dead
    letters); if nothing succeeded, S3 itself is down (SourceOutage: the runtime parks the record and
    retries it later). A slow object is read in small pieces against the deadline, so one that
    trickles a byte a second fails in time instead of holding a fetch thread for days. ``served``
    holds the time of the last success; processes that share one judge outages together (a value
    before any fetch began, such as a fresh Value's 0.0, means none yet). When nothing else was
    fetched meanwhile (a quiet stream, or the input paused for the outage), one GET of the object
    that last succeeded here decides: without it, one object throttled for good looked like an
    outage, and its record was parked and retried alone, forever, with the input paused.

    Out of attempts, only a success that came before the last attempt began blames the object: one
    after it may be S3 coming back from an outage that this attempt still met. That race dead-lettered
    three good records in CI as an outage ended (test_outages.py). For the same reason, when the last
    good object is served again, this object gets one more attempt, and that attempt decides.
    """

    def __init__(
        self,
        *,
        client: Any,
        settings: S3Settings,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        served: Served | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._allowlist = Allowlist.parse(settings.allowed_sources)
        self._sleep = sleep
        self._clock = clock
        self._served = served if served is not None else LastSuccess()  # from any thread (or process)
        self._last_good: S3Uri | None = None  # the object this process last fetched, to probe S3 with
        self._get_signed = SignedGet(client)

    def fetch(self, uri: S3Uri, *, deadline: float = float("inf")) -> tuple[bytes, int]:
        """The object's bytes and the number of attempts it took. Raises a SourceError that says how
        many requests were made (0 when the allowlist refused it), RecordTimeout past ``deadline``
        (monotonic), or SourceOutage / CredentialsUnavailable when S3 as a whole is failing."""
        self._allowlist.check(uri)
        settings = self._settings
        window = self._clock()  # S3 serving anyone since then means the failure is this object's
        attempts, attempt = settings.max_attempts, 0
        while True:
            attempt += 1
            served_before = self._served.value  # successes after this attempt began prove nothing against it
            try:
                data = self._get(uri, deadline)
            except SourceError as exc:
                exc.attempts = attempt
                raise
            except _TooSlow as exc:
                raise self._judged(RecordTimeout(f"{exc}", stage="fetch"), uri, window, attempt) from None
            except SourceUnavailable as exc:
                ceiling = min(settings.backoff_max_seconds, settings.backoff_initial_seconds * 2 ** (attempt - 1))
                if attempt == attempts or self._clock() + ceiling > deadline:
                    extra = ", the last once S3 served another object" if attempt > settings.max_attempts else ""
                    exhausted = RetriesExhausted(f"{exc} (after {attempt} attempts{extra})")
                    exhausted.attempts = attempt
                    if extra or served_before >= window:  # S3 served another fetch while this one failed
                        raise exhausted from exc
                    window = self._clock()
                    if not self._serves(self._last_good, instead_of=uri):
                        raise self._outage(exhausted, attempt) from exc
                    attempts = attempt + 1  # S3 serves the last good object again: one more attempt decides
                    continue
                window = self._clock()
                self._sleep(random.uniform(0, ceiling))
                continue
            self._served.value, self._last_good = self._clock(), uri
            return data, attempt

    def _judged(self, error: WorkerError, uri: S3Uri, began: float, attempt: int) -> WorkerError:
        """``error`` if S3 served another fetch since ``began``, or serves the last good object now;
        else an outage (never dead-lettered)."""
        if self._served.value >= began or self._serves(self._last_good, instead_of=uri):
            return error
        return self._outage(error, attempt)

    @staticmethod
    def _outage(error: WorkerError, attempt: int) -> SourceOutage:
        outage = SourceOutage(f"S3 is not serving: {error} (no fetch succeeded meanwhile)")
        outage.attempts = attempt
        return outage

    def _serves(self, probe: S3Uri | None, *, instead_of: S3Uri) -> bool:
        if probe is None or probe == instead_of:
            return False
        try:
            self._get(probe, self._clock() + self._settings.timeout_seconds)
        except (WorkerError, _TooSlow):
            return False
        self._served.value = self._clock()
        return True

    def list_objects(self, prefix: S3Uri) -> Iterator[S3Uri]:
        """The objects under ``prefix`` in key order. Its key is taken as whole "/" segments, as the
        allowlist takes a prefix ("raw" lists "raw/...", not "raw-2/..."; "" the whole bucket), and
        "folder" keys ending in "/" are left out. One attempt per page: a SourceError or an Outage
        ends the listing (the batch commands stop, and a rerun resumes)."""
        key = prefix.key if not prefix.key or prefix.key.endswith("/") else prefix.key + "/"
        with _translated(prefix):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=key):
                for listed in page.get("Contents", []):
                    if not listed["Key"].endswith("/"):
                        yield S3Uri(bucket=prefix.bucket, key=listed["Key"])

    def _get(self, uri: S3Uri, deadline: float) -> bytes:
        limit, now = self._settings.max_object_bytes, self._clock()
        if now >= deadline:
            raise _TooSlow(f"{uri}: the record's deadline passed before the GET")
        with _translated(uri, past_deadline=lambda: self._clock() >= deadline):
            reply = self._get_signed.get(uri.bucket, uri.key, limit=limit, timeout=deadline - now)
            if not 200 <= reply.status < 300:
                raise self._get_signed.error(reply)
        if reply.cut:
            size = f"{reply.declared} bytes, " if reply.declared is not None and reply.declared > limit else ""
            raise SourceTooLarge(f"{uri} is {size}over the limit of {limit} bytes")
        return reply.body


class _TooSlow(Exception):
    """The record's deadline passed during a fetch (internal: fetch() judges record or outage)."""


@contextmanager
def _translated(uri: S3Uri, *, past_deadline: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """botocore's and libcurl's errors, raised in the block, as worker.errors (or _TooSlow, for a
    transfer curl stopped at the record's deadline)."""
    try:
        yield
    except ClientError as exc:
        raise _translate_client_error(uri, exc) from None
    except NoCredentialsError:
        raise CredentialsUnavailable("no AWS credentials found in the standard chain") from None
    except pycurl.error as exc:  # refused, reset, timed out, cut short, not HTTP, TLS
        code = exc.args[0] if exc.args else None
        if code == pycurl.E_OPERATION_TIMEDOUT and past_deadline():
            raise _TooSlow(f"{uri}: still reading at the record's deadline") from None
        raise SourceUnavailable(f"{uri}: curl error {safe_text(': '.join(map(str, exc.args)), limit=200)}") from None
    except BotoCoreError as exc:
        raise SourceUnavailable(f"{uri}: {type(exc).__name__}: {safe_text(exc)}") from None


def _translate_client_error(uri: S3Uri, exc: ClientError) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    message = f"{uri}: {code or status} {safe_text(error.get('Message', ''), limit=300)}".strip()
    if code in _CREDENTIALS:
        return CredentialsUnavailable(f"S3 refused the credentials: {code}")
    if code in _NOT_FOUND or status == 404:
        return SourceNotFound(message)
    if code in _DENIED or status == 403:
        return SourceAccessDenied(message)
    if code in _THROTTLED or status >= 500 or status == 429:
        return SourceUnavailable(message)
    # Any other 4xx is the request's own fault and will not change on a retry.
    return SourceError(message) if 400 <= status < 500 else SourceUnavailable(message)
