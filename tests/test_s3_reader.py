"""The S3 source against a real HTTP S3 endpoint (moto server), with faults injected on the wire."""

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.faulty_proxy import FaultyS3Proxy
from tests.conftest import Credentials
from worker.config import S3Settings
from worker.errors import (
    ConfigError,
    CredentialsUnavailable,
    Outage,
    RetriesExhausted,
    SourceForbidden,
    SourceNotFound,
    SourceOutage,
    SourceTooLarge,
    SourceUnavailable,
)
from worker.formats.messages import S3Uri
from worker.s3.allowlist import Allowlist
from worker.s3.reader import S3Reader, make_s3_client


def source_for(client: Any, **settings: Any) -> S3Reader:
    defaults: dict[str, Any] = {"backoff_initial_seconds": 0.001, "backoff_max_seconds": 0.01}
    return S3Reader(client=client, settings=S3Settings(**(defaults | settings)))


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


def test_a_prefix_matches_whole_path_segments_only() -> None:
    for entry in ("raw/2026", "raw/2026/"):
        allow = Allowlist.parse((entry,))
        allow.check(S3Uri("raw", "2026/x.jpg"))
        allow.check(S3Uri("raw", "2026/11/x.jpg"))
        for key in ("2026-private/x.jpg", "2026", "20", "2026.jpg"):
            with pytest.raises(SourceForbidden, match="outside the allowed sources"):
                allow.check(S3Uri("raw", key))


@pytest.mark.parametrize(
    "key", ["public/../private/x.jpg", "public/./x.jpg", "public//x.jpg", "/public/x.jpg", "public/x/"]
)
def test_keys_with_empty_or_dot_segments_are_refused_even_where_the_bucket_is_allowed(key: str) -> None:
    with pytest.raises(SourceForbidden, match="path segments"):
        Allowlist.parse(("photos", "photos/public")).check(S3Uri("photos", key))


def test_dots_inside_a_segment_are_ordinary_characters() -> None:
    Allowlist.parse(("photos/public",)).check(S3Uri("photos", "public/..x/.hidden/a..b.jpg"))


@pytest.mark.parametrize("entry", ["/public", "photos/a//b", "photos/../private", "photos/./x", "photos//"])
def test_allowlist_entries_that_no_key_could_match_are_config_errors(entry: str) -> None:
    with pytest.raises(ConfigError, match="bucket/prefix without empty") as caught:
        Allowlist.parse(("photos", entry))
    assert caught.value.setting == "CLIP_WORKER_S3__ALLOWED_SOURCES"


ENTRIES = ("photos", "raw/2026", "raw/a/b/")
SEGMENTS = ["", ".", "..", "2026", "2026-private", "a", "b", "x.jpg", "..x", "2026/"]
keys = st.lists(st.sampled_from(SEGMENTS) | st.text(max_size=5), min_size=1, max_size=5).map("/".join) | st.text()


def under_an_entry(bucket: str, parts: list[str]) -> bool:
    """The rule restated on lists of segments: the key's first segments are an entry's prefix, and more follow."""
    for entry in ENTRIES:
        entry_bucket, _, prefix = entry.partition("/")
        prefix_parts = [part for part in prefix.split("/") if part]
        if bucket == entry_bucket and len(parts) > len(prefix_parts) and parts[: len(prefix_parts)] == prefix_parts:
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["photos", "raw", "other"]), keys)
def test_a_key_passes_exactly_when_it_is_plain_segments_under_an_allowed_prefix(bucket: str, key: str) -> None:
    parts = key.split("/")
    expected = all(part not in ("", ".", "..") for part in parts) and under_an_entry(bucket, parts)
    try:
        Allowlist.parse(ENTRIES).check(S3Uri(bucket, key))
    except SourceForbidden:
        assert not expected
    else:
        assert expected


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


def test_an_object_that_keeps_failing_while_others_are_served_is_the_records_fault(
    proxy: FaultyS3Proxy, proxied_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="down.jpg", Body=b"never")
    s3_client.put_object(Bucket=s3_bucket, Key="fine.jpg", Body=b"fine")
    proxy.fail("down.jpg", kind="slowdown", times=100)
    source = source_for(proxied_client, allowed_sources=(s3_bucket,), max_attempts=3)

    def fetch_others_meanwhile(seconds: float) -> None:  # the backoff of down.jpg: S3 serves fine.jpg
        source.fetch(S3Uri(s3_bucket, "fine.jpg"))

    source._sleep = fetch_others_meanwhile
    with pytest.raises(RetriesExhausted) as caught:
        source.fetch(S3Uri(s3_bucket, "down.jpg"))
    assert caught.value.attempts == 3
    assert isinstance(caught.value.__cause__, SourceUnavailable)
    assert proxy.faults_served == 3


def test_faults_that_outlast_the_attempts_with_nothing_served_meanwhile_are_an_outage(
    proxy: FaultyS3Proxy, proxied_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="down.jpg", Body=b"never")
    proxy.fail("down.jpg", kind="slowdown", times=100)
    source = source_for(proxied_client, allowed_sources=(s3_bucket,), max_attempts=3)
    with pytest.raises(SourceOutage) as caught:
        source.fetch(S3Uri(s3_bucket, "down.jpg"))
    assert caught.value.attempts == 3 and isinstance(caught.value, Outage)
    assert proxy.faults_served == 3


def test_an_object_failing_alone_while_s3_serves_the_last_good_object_is_the_records_fault(
    proxy: FaultyS3Proxy, proxied_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    """Nothing else fetched meanwhile (a quiet stream, or the input paused for an outage): one GET of
    the object that last succeeded, then one more attempt of this one, decide. Without them this
    record was parked as an outage and retried alone forever."""
    s3_client.put_object(Bucket=s3_bucket, Key="down.jpg", Body=b"never")
    s3_client.put_object(Bucket=s3_bucket, Key="fine.jpg", Body=b"fine")
    proxy.fail("down.jpg", kind="slowdown", times=100)
    source = source_for(proxied_client, allowed_sources=(s3_bucket,), max_attempts=3)
    assert source.fetch(S3Uri(s3_bucket, "fine.jpg")) == (b"fine", 1)
    with pytest.raises(RetriesExhausted, match="after 4 attempts, the last once S3 served another object") as caught:
        source.fetch(S3Uri(s3_bucket, "down.jpg"))
    assert caught.value.attempts == 4 and proxy.faults_served == 4


def test_an_outage_that_ends_just_after_a_records_last_attempt_is_not_the_records_fault(
    proxy: FaultyS3Proxy, proxied_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    """S3 comes back between this record's last failed attempt and its judgment: another fetch
    succeeds then, and the last good object is served again. Neither says the object is bad (both
    came after its last attempt began); it gets the bytes with one more attempt. This race
    dead-lettered three good records in CI at the end of test_outages' outage."""
    s3_client.put_object(Bucket=s3_bucket, Key="caught.jpg", Body=b"good")
    s3_client.put_object(Bucket=s3_bucket, Key="fine.jpg", Body=b"fine")
    source = source_for(proxied_client, allowed_sources=(s3_bucket,), max_attempts=3)
    assert source.fetch(S3Uri(s3_bucket, "fine.jpg")) == (b"fine", 1)
    proxy.fail("caught.jpg", kind="slowdown", times=3)  # the outage, as this object met it
    attempts = 0
    get = source._get

    def outage_ends_during_the_last_attempt(uri: S3Uri, deadline: float) -> bytes:
        nonlocal attempts
        attempts += 1
        try:
            return get(uri, deadline)
        finally:
            if attempts == 3:  # another fetch succeeds as the outage ends, after this attempt began
                source._served.value = source._clock()

    source._get = outage_ends_during_the_last_attempt  # type: ignore[method-assign]
    assert source.fetch(S3Uri(s3_bucket, "caught.jpg")) == (b"good", 4)
    assert proxy.faults_served == 3


def test_when_the_last_good_object_fails_too_it_is_an_outage(
    proxy: FaultyS3Proxy, proxied_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="down.jpg", Body=b"never")
    s3_client.put_object(Bucket=s3_bucket, Key="fine.jpg", Body=b"fine")
    source = source_for(proxied_client, allowed_sources=(s3_bucket,), max_attempts=3)
    source.fetch(S3Uri(s3_bucket, "fine.jpg"))
    proxy.fail("down.jpg", kind="slowdown", times=100)
    proxy.fail("fine.jpg", kind="internal-error", times=1)  # the probe: S3 fails it as well
    with pytest.raises(SourceOutage):
        source.fetch(S3Uri(s3_bucket, "down.jpg"))
    assert proxy.faults_served == 4


def test_missing_credentials_are_an_outage_not_retried_per_record(
    proxy: FaultyS3Proxy, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = make_s3_client(S3Settings(endpoint_url=proxy.endpoint_url, region="us-east-1"))
    source = source_for(client, allowed_sources=(s3_bucket,), max_attempts=3)
    with pytest.raises(CredentialsUnavailable, match="no AWS credentials"):
        source.fetch(S3Uri(s3_bucket, "x.jpg"))
    assert proxy.requests == 0
    client.close()


def test_expired_credentials_are_an_outage_not_the_objects_fault(
    proxy: FaultyS3Proxy, proxied_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="a.jpg", Body=b"a")
    proxy.fail("a.jpg", kind="expired-token", times=1)
    source = source_for(proxied_client, allowed_sources=(s3_bucket,))
    with pytest.raises(CredentialsUnavailable, match="ExpiredToken"):
        source.fetch(S3Uri(s3_bucket, "a.jpg"))
    assert source.fetch(S3Uri(s3_bucket, "a.jpg")) == (b"a", 1), "fine again once the token is refreshed"
