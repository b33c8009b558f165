"""The S3 source against a real HTTP S3 endpoint (moto server), with faults injected on the wire."""

from collections.abc import Iterator
from typing import Any

import pytest

from harness.faulty_proxy import FaultyS3Proxy
from tests.conftest import Credentials
from worker.config import S3Settings
from worker.errors import (
    RetriesExhausted,
    SourceAccessDenied,
    SourceForbidden,
    SourceNotFound,
    SourceTooLarge,
    SourceUnavailable,
)
from worker.messages import S3Uri
from worker.source import Allowlist, S3Source, make_s3_client


def source_for(client: Any, **settings: Any) -> S3Source:
    defaults: dict[str, Any] = {"backoff_initial_seconds": 0.001, "backoff_max_seconds": 0.01}
    return S3Source(client=client, settings=S3Settings(**(defaults | settings)))


@pytest.fixture
def proxied_client(proxy: FaultyS3Proxy, aws_credentials: Credentials) -> Iterator[Any]:
    """The worker's own client (its timeouts, no botocore retries) through the fault-injecting proxy
    (tests/conftest.py), credentials from the standard chain (aws_credentials sets the environment)."""
    client = make_s3_client(S3Settings(endpoint_url=proxy.endpoint_url, region="us-east-1", timeout_seconds=5))
    yield client
    client.close()


def test_fetches_bytes_from_an_allowed_bucket(s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="a/b.jpg", Body=b"jpeg bytes")
    source = source_for(s3_client, allowed_sources=(s3_bucket,))
    assert source.fetch(S3Uri(s3_bucket, "a/b.jpg")) == (b"jpeg bytes", 1)


def test_the_allowlist_is_checked_before_any_request(s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="private/x.jpg", Body=b"x")
    source = source_for(s3_client, allowed_sources=(f"{s3_bucket}/public/",))
    with pytest.raises(SourceForbidden):
        source.fetch(S3Uri(s3_bucket, "private/x.jpg"))
    with pytest.raises(SourceForbidden):
        source.fetch(S3Uri("other-bucket", "public/x.jpg"))


def test_allowlist_entries_are_bucket_or_bucket_and_prefix() -> None:
    allow = Allowlist.parse(("photos", "raw/2026/"))
    allow.check(S3Uri("photos", "anything"))
    allow.check(S3Uri("raw", "2026/x.jpg"))
    with pytest.raises(SourceForbidden):
        allow.check(S3Uri("raw", "2025/x.jpg"))
    with pytest.raises(SourceForbidden):
        Allowlist.parse(()).check(S3Uri("photos", "x"))


def test_missing_key_and_missing_bucket_are_not_found(s3_client: Any, s3_bucket: str) -> None:
    source = source_for(s3_client, allowed_sources=(s3_bucket, "no-such-bucket-here"))
    with pytest.raises(SourceNotFound):
        source.fetch(S3Uri(s3_bucket, "missing.jpg"))
    with pytest.raises(SourceNotFound):
        source.fetch(S3Uri("no-such-bucket-here", "x.jpg"))


def test_objects_over_the_byte_limit_are_refused(s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="big.jpg", Body=b"x" * 1001)
    s3_client.put_object(Bucket=s3_bucket, Key="ok.jpg", Body=b"x" * 1000)
    source = source_for(s3_client, allowed_sources=(s3_bucket,), max_object_bytes=1000)
    with pytest.raises(SourceTooLarge, match="1001"):
        source.fetch(S3Uri(s3_bucket, "big.jpg"))
    assert len(source.fetch(S3Uri(s3_bucket, "ok.jpg"))[0]) == 1000


@pytest.mark.parametrize("kind", ["slowdown", "internal-error", "reset"])
def test_transient_faults_are_retried_until_they_clear(
    kind: Any, proxy: FaultyS3Proxy, proxied_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="flaky.jpg", Body=b"eventually")
    proxy.fail("flaky.jpg", kind=kind, times=2)
    source = source_for(proxied_client, allowed_sources=(s3_bucket,), max_attempts=4)
    assert source.fetch(S3Uri(s3_bucket, "flaky.jpg")) == (b"eventually", 3)
    assert proxy.faults_served == 2


def test_faults_that_outlast_the_attempts_become_permanent(
    proxy: FaultyS3Proxy, proxied_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="down.jpg", Body=b"never")
    proxy.fail("down.jpg", kind="slowdown", times=100)
    source = source_for(proxied_client, allowed_sources=(s3_bucket,), max_attempts=3)
    with pytest.raises(RetriesExhausted) as caught:
        source.fetch(S3Uri(s3_bucket, "down.jpg"))
    assert caught.value.attempts == 3
    assert isinstance(caught.value.__cause__, SourceUnavailable)
    assert proxy.faults_served == 3


def test_missing_credentials_are_permanent_not_retried(
    proxy: FaultyS3Proxy, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = make_s3_client(S3Settings(endpoint_url=proxy.endpoint_url, region="us-east-1"))
    source = source_for(client, allowed_sources=(s3_bucket,), max_attempts=3)
    with pytest.raises(SourceAccessDenied, match="no AWS credentials"):
        source.fetch(S3Uri(s3_bucket, "x.jpg"))
    assert proxy.requests == 0
    client.close()
