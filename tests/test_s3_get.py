"""The signed GET through libcurl (worker/s3/get.py) through S3Reader, against a scripted S3 on a real socket.

The server below writes whatever bytes a test gives it: statuses, headers and bodies no well-behaved
S3 would send, bodies cut short, a body a byte at a time. Whatever comes back, a fetch ends as bytes
or as a worker.errors SourceError, Outage or CredentialsUnavailable: never anything else.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from botocore.config import Config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from worker.config import S3Settings
from worker.errors import (
    CredentialsUnavailable,
    Outage,
    RetriesExhausted,
    SourceAccessDenied,
    SourceError,
    SourceNotFound,
    SourceOutage,
    SourceTooLarge,
)
from worker.formats.messages import S3Uri
from worker.s3.reader import S3Reader, make_s3_client

BUCKET = "scripted"


@dataclass(frozen=True)
class Reply:
    head: bytes  # the status line and headers, written as given
    body: bytes = b""
    close: bool = False  # close the connection after this reply
    trickle: float = 0.0  # seconds between the body's bytes


def reply(status: int, body: bytes = b"", *, length: int | None = None, close: bool = False,
          trickle: float = 0.0, headers: tuple[str, ...] = ()) -> Reply:
    lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body) if length is None else length}", *headers]
    return Reply(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body, close, trickle)


def s3_error(status: int, code: str, message: str = "m") -> Reply:
    return reply(status, f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode())


class ScriptedS3:
    """Answers GET /<bucket>/<key> with the next reply scripted for that key, else a 404 NoSuchKey."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def script(self, key: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[key] = list(replies)

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):  # the client may drop a connection at any point
            self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                data = connection.recv(65536)
                if not data:
                    return
                pending += data
            head, _, pending = pending.partition(b"\r\n\r\n")
            path = urlsplit(head.split(b" ")[1].decode()).path
            with self._lock:
                self.requests.append(head)
                script = self._scripts.get(unquote(path.split("/", 2)[2]), [])
                answer = script.pop(0) if script else s3_error(404, "NoSuchKey")
            connection.sendall(answer.head)
            if not answer.trickle:
                connection.sendall(answer.body)
            for i in range(len(answer.body) if answer.trickle else 0):
                connection.sendall(answer.body[i : i + 1])
                time.sleep(answer.trickle)
            if answer.close:
                return


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedS3]:
    scripted = ScriptedS3()
    yield scripted
    scripted.close()


@pytest.fixture(scope="module")
def client(server: ScriptedS3) -> Iterator[Any]:
    """A client with its own keys (module scope: no environment to patch), timeouts short enough for a test."""
    config = Config(connect_timeout=2, read_timeout=2, retries={"total_max_attempts": 1})
    made = boto3.session.Session(aws_access_key_id="AKIDTEST", aws_secret_access_key="secret").client(
        "s3", endpoint_url=server.endpoint_url, region_name="us-east-1", config=config)
    yield made
    made.close()


def source_for(client: Any, **overrides: Any) -> S3Reader:
    served = overrides.pop("served", None)
    options: dict[str, Any] = {"allowed_sources": (BUCKET,), "backoff_initial_seconds": 0.001,
                               "backoff_max_seconds": 0.002, "max_attempts": 1}
    return S3Reader(client=client, settings=S3Settings(**(options | overrides)), served=served)


def test_a_200_is_its_body_and_the_request_is_signed(server: ScriptedS3, client: Any) -> None:
    server.script("ok.jpg", reply(200, b"jpeg bytes"))
    assert source_for(client).fetch(S3Uri(BUCKET, "ok.jpg")) == (b"jpeg bytes", 1)
    head = server.requests[-1].decode("latin-1").lower()
    assert head.startswith(f"get /{BUCKET}/ok.jpg http/1.1")
    assert "authorization: aws4-hmac-sha256 credential=akidtest/" in head


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (s3_error(404, "NoSuchKey"), SourceNotFound),
        (reply(404), SourceNotFound),  # no body: the status alone
        (s3_error(403, "AccessDenied"), SourceAccessDenied),
        (s3_error(400, "InvalidArgument"), SourceError),  # any other 4xx: the request's fault, not retried
        (s3_error(403, "InvalidAccessKeyId"), CredentialsUnavailable),
        (s3_error(403, "SignatureDoesNotMatch"), CredentialsUnavailable),
        (s3_error(400, "ExpiredToken"), CredentialsUnavailable),
        (reply(404, b"<Error><Code>" + b"x" * 70_000), SourceNotFound),  # over 64 KB: not read, the status decides
        (reply(403, b"<html>no</html>", headers=("Content-Type: text/html",)), SourceAccessDenied),
    ],
)
def test_error_statuses_are_translated_as_get_object_errors_were(
    server: ScriptedS3, client: Any, answer: Reply, error: type[Exception]
) -> None:
    server.script("e.jpg", answer)
    with pytest.raises(error) as caught:
        source_for(client, max_attempts=3).fetch(S3Uri(BUCKET, "e.jpg"))
    assert type(caught.value) is error
    assert getattr(caught.value, "attempts", 1) == 1, "a permanent error is not retried"


@pytest.mark.parametrize(
    "transient",
    [
        s3_error(503, "SlowDown"),
        s3_error(500, "InternalError"),
        reply(429),
        reply(502, b"<html>bad gateway</html>"),
        reply(503, b"<Error>" + b"x" * 70_000),  # over 64 KB: cut, and the status decides
        s3_error(301, "PermanentRedirect"),  # not followed: a wrong region is not this object's fault
        reply(200, b"half", length=8, close=True),  # the connection closes before Content-Length bytes
        reply(200, b"ab", length=2, headers=("Content-Length: 3",)),  # two lengths that disagree
        Reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nabc", close=True),  # a chunk cut short
        Reply(b"garbage\r\n\r\n", close=True),
        Reply(b"", close=True),  # closed without an answer
    ],
)
def test_transient_answers_are_retried_until_they_clear(server: ScriptedS3, client: Any, transient: Reply) -> None:
    server.script("t.jpg", transient, transient, reply(200, b"finally"))
    assert source_for(client, max_attempts=3).fetch(S3Uri(BUCKET, "t.jpg")) == (b"finally", 3)


def test_objects_over_the_limit_are_refused_by_their_length_or_while_read(server: ScriptedS3, client: Any) -> None:
    source = source_for(client, max_object_bytes=100)
    server.script("big.jpg", reply(200, b"x" * 101))
    with pytest.raises(SourceTooLarge, match="101 bytes"):
        source.fetch(S3Uri(BUCKET, "big.jpg"))
    chunked = b"".join(b"32\r\n" + b"y" * 50 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    server.script("chunked.jpg", Reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunked))
    with pytest.raises(SourceTooLarge, match="over the limit of 100"):
        source.fetch(S3Uri(BUCKET, "chunked.jpg"))
    server.script("ok.jpg", reply(200, b"z" * 100))
    assert source.fetch(S3Uri(BUCKET, "ok.jpg")) == (b"z" * 100, 1), "and the pool still serves"


def test_a_body_trickling_past_the_deadline_fails_in_time(server: ScriptedS3, client: Any) -> None:
    server.script("slow.jpg", reply(200, b"s" * 100, trickle=0.05, close=True))
    began = time.monotonic()
    with pytest.raises(SourceOutage, match="deadline"):  # nothing else was served meanwhile: S3's fault
        source_for(client).fetch(S3Uri(BUCKET, "slow.jpg"), deadline=began + 0.3)
    assert time.monotonic() - began < 1.0


def test_missing_credentials_make_no_request(server: ScriptedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = S3Settings(endpoint_url=server.endpoint_url, region="us-east-1", allowed_sources=(BUCKET,))
    bare = make_s3_client(settings)
    before = len(server.requests)
    with pytest.raises(CredentialsUnavailable, match="no AWS credentials"):
        S3Reader(client=bare, settings=settings).fetch(S3Uri(BUCKET, "x.jpg"))
    assert len(server.requests) == before
    bare.close()


@pytest.mark.parametrize("shared", [True, False])
def test_a_shared_served_value_decides_record_failure_or_outage(
    server: ScriptedS3, client: Any, shared: bool
) -> None:
    """`down.jpg` fails on every attempt while another source serves `fine.jpg` during its backoff: with
    the last-success time shared (as between processes) it is the object's fault, else an outage."""
    served = multiprocessing.Value("d") if shared else None  # 0.0: before any fetch began
    other = source_for(client, served=served)
    server.script("down.jpg", *[s3_error(503, "SlowDown")] * 2)
    server.script("fine.jpg", reply(200, b"fine"))
    failing = S3Reader(
        client=client,
        settings=S3Settings(allowed_sources=(BUCKET,), max_attempts=2, backoff_initial_seconds=0.001),
        sleep=lambda _: other.fetch(S3Uri(BUCKET, "fine.jpg")),
        served=served,
    )
    expected = RetriesExhausted if shared else SourceOutage
    with pytest.raises(expected) as caught:
        failing.fetch(S3Uri(BUCKET, "down.jpg"))
    assert caught.value.attempts == 2


def test_keys_are_sent_as_get_object_sends_them(server: ScriptedS3, client: Any) -> None:
    """Same request target and Host as botocore's own get_object, so the signature covers what S3 sees."""
    key = "a b/ü+%~!*'()&=?#x;.jpg"
    with pytest.raises(Exception):  # noqa: B017  # the 404 that follows does not matter here
        client.get_object(Bucket=BUCKET, Key=key)
    theirs = server.requests[-1].split(b"\r\n")
    with pytest.raises(SourceNotFound):
        source_for(client).fetch(S3Uri(BUCKET, key))
    ours = server.requests[-1].split(b"\r\n")
    assert ours[0] == theirs[0].replace(b"?x-id=GetObject", b"")
    assert [h for h in ours if h.lower().startswith(b"host:")] == [h for h in theirs if h.lower().startswith(b"host:")]


# --- the boundary that takes bytes from outside -------------------------------------------------------------

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=12)
LATIN1 = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=24)
CODES = st.sampled_from(["NoSuchKey", "AccessDenied", "ExpiredToken", "SlowDown", "InvalidArgument", ""]) | LATIN1
header_names = st.sampled_from(
    ["Content-Length", "Transfer-Encoding", "Content-Encoding", "Content-Type", "x-amz-request-id", "Connection"]
) | TOKEN
header_values = LATIN1 | st.integers(-3, 5000).map(str) | st.sampled_from(["chunked", "gzip", "close", "1, 2"])
bodies = (
    st.binary(max_size=600)
    | st.builds(lambda code, message: f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode(),
                CODES, LATIN1)
    | st.builds(lambda text: text.encode("utf-8", "surrogatepass"), st.text(max_size=200))
)


@st.composite
def raw_replies(draw: st.DrawFn) -> Reply:
    if draw(st.integers(0, 9)) == 0:
        return Reply(draw(st.binary(max_size=80)), close=True)  # not HTTP at all
    status = draw(st.sampled_from([200, 204, 206, 301, 304, 400, 403, 404, 429, 500, 503]) | st.integers(0, 1000))
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    body = draw(bodies)
    if draw(st.booleans()):
        headers.append(("Content-Length", str(len(body))))
    lines = [f"HTTP/1.1 {status} {draw(LATIN1)}", *(f"{name}: {value}" for name, value in headers)]
    return Reply(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body, close=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=raw_replies())
def test_any_answer_ends_as_bytes_or_a_worker_error(server: ScriptedS3, client: Any, answer: Reply) -> None:
    server.script("fuzz.jpg", answer)
    source = source_for(client, max_object_bytes=1000)  # a fresh pool each time: no connection left half-read
    try:
        data, attempts = source.fetch(S3Uri(BUCKET, "fuzz.jpg"), deadline=time.monotonic() + 5)
    except (SourceError, Outage) as exc:  # CredentialsUnavailable and SourceOutage are Outages
        event(type(exc).__name__)
        return
    event("bytes")
    assert isinstance(data, bytes) and attempts == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=3000), status=st.integers(200, 299).filter(lambda s: s != 204))
def test_a_2xx_with_its_length_is_exactly_its_body(server: ScriptedS3, client: Any, body: bytes, status: int) -> None:
    server.script("body.jpg", reply(status, body))
    assert source_for(client).fetch(S3Uri(BUCKET, "body.jpg")) == (body, 1)
