"""The fetch threads' SigV4 (worker/s3/sign.py): botocore's signature for every GET, and a server that
checks signatures takes it.

botocore's S3SigV4Auth is the definition: for any credentials (session tokens included), region,
endpoint and key the header lines must be botocore's, byte for byte. Then s3proxy (a real S3 server
that verifies SigV4, a JVM from Maven Central: harness/s3proxy.py) serves keys that need quoting
through the worker's S3Reader. s3proxy answers a session token with NotImplemented, so tokens are
checked against botocore only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from hypothesis import example, given
from hypothesis import strategies as st

from harness.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, fill_bucket
from harness.s3proxy import S3Proxy
from worker.config import S3Settings
from worker.errors import CredentialsUnavailable
from worker.formats.messages import S3Uri
from worker.s3.reader import S3Reader
from worker.s3.sign import GetSigner, host_of

BUCKET = "signed"
ODD_KEYS = ("plain.jpg", "odd/a b+c%d~e.jpg", "odd/ünï cödé/(1)!*'.jpg", "odd/x=y&z;@$,.jpg", "odd/?#[]{}^`|\\.jpg")


def botocore_headers(credentials: ReadOnlyCredentials, region: str, url: str) -> list[str]:
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return [f"{name}: {value}" for name, value in request.headers.items()]


def ours(credentials: ReadOnlyCredentials, region: str, url: str, stamp: str) -> list[str]:
    return GetSigner(region).headers(credentials, host_of(url), urlsplit(url).path, stamp=stamp)


def stamp_of(headers: list[str]) -> str:
    return next(line.partition(": ")[2] for line in headers if line.startswith("X-Amz-Date: "))


printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
credentials = st.builds(
    ReadOnlyCredentials,
    access_key=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0234567", min_size=1, max_size=20),
    secret_key=printable | st.text(min_size=1, max_size=40),
    token=st.none() | printable | st.builds(lambda a, b: f"{a}  {b}", printable, printable),  # inner runs of spaces
)
regions = (st.sampled_from(["us-east-1", "eu-central-1", "ap-southeast-2", "auto"])
           | st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True))
hosts = (st.sampled_from(["127.0.0.1", "s3.amazonaws.com", "My-Bucket.S3.EU-West-1.AWS.com", "[::1]", "[fe80::2]"])
         | st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9.-]{0,30}", fullmatch=True))
ports = st.sampled_from(["", ":80", ":443", ":9000"]) | st.integers(1, 65535).map(lambda p: f":{p}")
prefixes = st.sampled_from(["/", "/bucket/", "/my.bucket-1/"])


@given(credentials=credentials, region=regions, scheme=st.sampled_from(["http", "https"]), host=hosts, port=ports,
       prefix=prefixes, key=st.text(min_size=1, max_size=60))
@example(credentials=ReadOnlyCredentials("AKID", "secret", "tok en"), region="us-east-1", scheme="https",
         host="s3.amazonaws.com", port=":443", prefix="/b/", key="a b/ü+%~!*'()&=?#x;.jpg")
def test_every_get_is_signed_as_botocore_signs_it(
    credentials: ReadOnlyCredentials, region: str, scheme: str, host: str, port: str, prefix: str, key: str
) -> None:
    url = f"{scheme}://{host}{port}{prefix}{quote(key, safe='/~')}"
    theirs = botocore_headers(credentials, region, url)
    assert ours(credentials, region, url, stamp_of(theirs)) == theirs


def test_one_signer_follows_the_day_and_the_secret_as_they_change() -> None:
    """The signing key is cached per day and secret: past midnight, or with rotated credentials, the
    same signer must sign as botocore does at that moment."""
    signer, url = GetSigner(REGION), "http://127.0.0.1:9000/b/k.jpg"
    moments = [("one", datetime(2026, 11, 30, 23, 59, 59)), ("one", datetime(2026, 12, 1, 0, 0, 0)),
               ("two", datetime(2026, 12, 1, 0, 0, 1)), ("one", datetime(2026, 12, 1, 0, 0, 2))]
    for secret, moment in moments:
        creds = ReadOnlyCredentials("AKID", secret, None)
        with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
            theirs = botocore_headers(creds, REGION, url)
        assert signer.headers(creds, host_of(url), "/b/k.jpg", stamp=moment.strftime("%Y%m%dT%H%M%SZ")) == theirs


@pytest.fixture(scope="module")
def s3proxy() -> Iterator[S3Proxy]:
    with S3Proxy() as server:
        fill_bucket(server, BUCKET, [(key, key.encode()) for key in ODD_KEYS])
        yield server


def client_for(server: S3Proxy, **credentials: Any) -> Any:
    config = Config(retries={"total_max_attempts": 1}, request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", endpoint_url=server.endpoint_url, region_name=REGION,
                                          config=config, **credentials)


def test_a_server_that_checks_signatures_serves_keys_that_need_quoting(s3proxy: S3Proxy) -> None:
    client = client_for(s3proxy, aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY)
    source = S3Reader(client=client, settings=S3Settings(allowed_sources=(BUCKET,), max_attempts=1))
    try:
        for key in ODD_KEYS:
            assert source.fetch(S3Uri(BUCKET, key)) == (key.encode(), 1)
    finally:
        client.close()


def test_a_wrong_secret_is_refused_by_that_server(s3proxy: S3Proxy) -> None:
    """The check above can fail: s3proxy does verify what we sign."""
    client = client_for(s3proxy, aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key="not-the-secret")
    source = S3Reader(client=client, settings=S3Settings(allowed_sources=(BUCKET,), max_attempts=1))
    try:
        with pytest.raises(CredentialsUnavailable, match="SignatureDoesNotMatch"):
            source.fetch(S3Uri(BUCKET, "plain.jpg"))
    finally:
        client.close()
