"""One S3 GetObject signed by botocore and sent by libcurl (pycurl): the fetch threads' hot path.

Why not ``client.get_object``: botocore spends pure Python per call, under the GIL, on event hooks,
parameter validation, endpoint rules and response parsing, and the fetch threads pay it for every
record. Why not urllib3: http.client parses every response's headers with the email package and
urllib3 reads the body in Python, all under the GIL; libcurl does both in C with the GIL released
(bench/fetch_bench.py measures the paths; BENCHMARKS.md). Here botocore still does what must be
right, and libcurl only carries the bytes:
- credentials: the client's own, resolved through the standard chain when it was built, refreshed by
  botocore when they expire (``client._get_credentials()``: botocore's accessor, marked private);
- the URL of a bucket: endpoint_url, region and addressing style as the client resolves them, learned
  once per bucket from ``generate_presigned_url`` (its query is dropped: only the base is kept);
- the signature: what botocore's ``S3SigV4Auth`` would sign, computed by worker.s3.sign for a fraction
  of botocore's CPU under the GIL, and checked equal to botocore's by its tests. It covers the path as
  sent (PATH_AS_IS: curl must not squash it); keys with "." or ".." segments never get here (the
  allowlist);
- an error response: botocore's own rest-xml parser, so the ClientError carries the Code and status
  that get_object would have raised.
The connect timeout is the client's, its read timeout a stall of that long (curl's low-speed limit of
a byte a second), and the record's deadline a limit on the whole transfer; TLS is verified against
the CA bundle botocore would use, and HTTP(S)_PROXY / NO_PROXY are honoured as botocore honours them
(curl's own reading of the environment is switched off). Two differences from get_object, on purpose:
redirects are not followed (a bucket in another region than the client's fails with its 301/307
instead of being retried there: set the region), and response checksums are not asked for (TLS and
curl's Content-Length check guard the bytes).

Each thread keeps its own curl handle, and so its own kept-alive connection. This module raises
botocore's exceptions and ``pycurl.error``; worker.s3.reader translates every error, in one place.
"""

from __future__ import annotations

import functools
import io
import math
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import pycurl
from botocore.awsrequest import HeadersDict
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.httpsession import get_cert_path
from botocore.parsers import create_parser
from botocore.session import get_session
from botocore.utils import get_environ_proxies

from worker.s3.sign import GetSigner, host_of

_PROBE_KEY = "k"  # presigned once per bucket; the URL up to it is the bucket's base
ERROR_BODY_BYTES = 64 * 1024  # an S3 error document is a few hundred bytes; a longer body is not one
# Up to 128 KiB per write callback (curl's default is 16 KiB): fewer trips back into Python where the
# socket has more to give. On loopback 16, 128 and 512 KiB measured the same CPU per GET.
_RECEIVE_BUFFER = 128 * 1024


@dataclass(frozen=True, slots=True)
class _Route:
    origin: str  # scheme://host[:port]
    path: str  # "/" or "/bucket/", to which the quoted key is appended
    host: str  # as signed, and as curl sends it for this origin
    signer: GetSigner
    proxy: str  # "" for none


@dataclass(frozen=True, slots=True)
class Reply:
    """S3's answer: its status, the final response's header lines, and the body as far as it was read.
    ``cut``: the body passed its limit (the object's limit for a 2xx, ERROR_BODY_BYTES otherwise), by
    its Content-Length (``declared``) or while read, and the rest was not read."""

    status: int
    lines: tuple[bytes, ...]
    body: bytes
    declared: int | None
    cut: bool


class _Transfer:
    """One thread's curl handle, and where it hands each response, inside perform(): header lines, then
    body chunks. The handle keeps its connection alive from one GET to the next; the body is let go
    as soon as the GET ends (the handle holds on to this object, and an object is up to its limit)."""

    __slots__ = ("body", "curl", "cut", "declared", "limit", "lines", "status")

    def __init__(self, options: tuple[tuple[int, Any], ...]) -> None:
        self.curl = pycurl.Curl()
        for option, value in options:
            self.curl.setopt(option, value)
        self.curl.setopt(pycurl.HEADERFUNCTION, self.header)
        self.curl.setopt(pycurl.WRITEFUNCTION, self.write)
        self.status: int = 0
        self.lines: list[bytes] = []
        self.declared: int | None = None
        self.body, self.limit, self.cut = io.BytesIO(), 0, False

    def run(self, url: str, headers: list[str], *, proxy: str, timeout: float, limit: int) -> Reply:
        self.status, self.lines, self.declared = 0, [], None
        self.body, self.limit, self.cut = io.BytesIO(), limit, False
        curl = self.curl
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.HTTPHEADER, headers)
        curl.setopt(pycurl.PROXY, proxy)
        curl.setopt(pycurl.TIMEOUT_MS, 0 if math.isinf(timeout) else max(1, math.ceil(timeout * 1000)))
        try:
            curl.perform()  # the GIL is released while curl waits and reads
        except pycurl.error as exc:
            if not (self.cut and exc.args[0] == pycurl.E_WRITE_ERROR):  # not our own stop
                raise
        finally:
            body = self.body.getvalue()
            self.body.close()
        return Reply(self.status, tuple(self.lines[1:]), body, self.declared, self.cut)

    def header(self, line: bytes) -> None:
        if line.startswith(b"HTTP/"):  # a response begins (curl passes a 100 Continue's lines too)
            self.lines, self.status, self.declared = [], _number(line.split(None, 2)[1:2]) or 0, None
        elif line[:15].lower() == b"content-length:":
            self.declared = _number(line[15:].split())
        self.lines.append(line)

    def write(self, chunk: bytes) -> int | None:
        limit = self.limit if 200 <= self.status < 300 else ERROR_BODY_BYTES
        if (self.declared or 0) > limit or self.body.tell() + len(chunk) > limit:
            self.cut = True
            return 0  # anything but len(chunk): curl stops the transfer with E_WRITE_ERROR
        self.body.write(chunk)
        return None


def _number(field: list[bytes]) -> int | None:
    return int(field[0]) if len(field) == 1 and field[0].isdigit() else None


class SignedGet:
    """Signed GETs, one curl handle (one connection kept alive) per calling thread; thread-safe.

    Nothing touches ``client`` before the first GET, so a source that never fetches needs none.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._routes: dict[str, _Route] = {}  # by bucket: bounded by the allowlist, checked first
        self._handles = threading.local()
        self._parser: Any = None
        self._shape: Any = None

    def get(self, bucket: str, key: str, *, limit: int, timeout: float) -> Reply:
        """The reply, whatever its status. ``timeout``: seconds for the whole transfer (inf: none).
        Raises NoCredentialsError without a request when the client has no credentials."""
        credentials = self._client._get_credentials()
        if credentials is None:
            raise NoCredentialsError()
        route = self._routes.get(bucket) or self._route(bucket)
        path = route.path + quote(key, safe="/~")  # as botocore quotes {Key+}
        headers = route.signer.headers(credentials.get_frozen_credentials(), route.host, path)
        return self._transfer().run(route.origin + path, headers, proxy=route.proxy, timeout=timeout, limit=limit)

    def error(self, reply: Reply) -> ClientError:
        """The ClientError get_object would raise for this non-2xx reply. Its status alone decides when
        botocore cannot parse the body (or it was cut), whatever the body holds."""
        parsed: Any = None
        if reply.status >= 301 and not reply.cut:  # below that, botocore's parser reads a success
            if self._parser is None:
                self._shape = self._client.meta.service_model.operation_model("GetObject").output_shape
                self._parser = create_parser(self._client.meta.service_model.protocol)
            raw = {"status_code": reply.status, "headers": _headers(reply.lines), "body": reply.body, "context": {}}
            try:
                parsed = self._parser.parse(raw, self._shape)
            except Exception:  # bytes from outside that break the parser: fall back to the status
                parsed = None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("Error"), dict):
            parsed = {"Error": {"Code": str(reply.status), "Message": ""}}
        metadata = parsed.get("ResponseMetadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        parsed["ResponseMetadata"] = {**metadata, "HTTPStatusCode": reply.status}
        return ClientError(parsed, "GetObject")

    def _transfer(self) -> _Transfer:
        transfer: _Transfer | None = getattr(self._handles, "transfer", None)
        if transfer is None:
            config = self._client.meta.config
            transfer = self._handles.transfer = _Transfer((
                (pycurl.NOSIGNAL, 1),  # threads: no SIGALRM for DNS timeouts
                (pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
                (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),  # as S3 speaks it; no HTTP/2 over ALPN
                (pycurl.PATH_AS_IS, 1),  # the path as signed
                (pycurl.CAINFO, _ca_certs()),  # verified (curl's default), against botocore's bundle
                (pycurl.CONNECTTIMEOUT_MS, max(1, math.ceil(config.connect_timeout * 1000))),
                (pycurl.LOW_SPEED_LIMIT, 1),  # under a byte a second for read_timeout seconds: a stall
                (pycurl.LOW_SPEED_TIME, max(1, math.ceil(config.read_timeout))),
                (pycurl.BUFFERSIZE, _RECEIVE_BUFFER),
            ))
        return transfer

    def _route(self, bucket: str) -> _Route:
        presigned = self._client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY})
        scheme, netloc, path, _, _ = urlsplit(presigned)
        if not path.endswith("/" + _PROBE_KEY):
            raise ValueError(f"botocore presigned an unexpected URL for bucket {bucket!r}")
        origin = f"{scheme}://{netloc}"
        proxy = (self._client.meta.config.proxies or get_environ_proxies(origin + path)).get(scheme)
        route = _Route(origin=origin, path=path.removesuffix(_PROBE_KEY), host=host_of(origin),
                       signer=GetSigner(self._client.meta.region_name), proxy=proxy or "")
        self._routes[bucket] = route
        return route


def _headers(lines: tuple[bytes, ...]) -> HeadersDict:
    headers = HeadersDict()
    for line in lines:
        name, colon, value = line.decode("latin-1").partition(":")
        if colon:
            headers[name.strip()] = value.strip()
    return headers


@functools.cache
def _ca_certs() -> str:
    """botocore's choice of CA bundle: AWS_CA_BUNDLE or the profile's ca_bundle, then REQUESTS_CA_BUNDLE, else
    its default (certifi's). Once per process: reading the config takes a botocore session (~10 ms)."""
    bundle = get_session().get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE")
    return str(get_cert_path(bundle or True))
