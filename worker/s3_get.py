"""One S3 GetObject signed by botocore and sent by urllib3 directly: the fetch threads' hot path.

Why not ``client.get_object``: botocore spends 0.5-1 ms of pure Python per call, under the GIL, on
event hooks, parameter validation, endpoint rules and response parsing, and the fetch threads pay it
for every record (issue 8; bench/fetch_bench.py measures both paths). Here botocore still does what
must be right, and urllib3 only carries the bytes:
- credentials: the client's own, resolved through the standard chain when it was built, refreshed by
  botocore when they expire (``client._get_credentials()``: botocore's accessor, marked private);
- the URL of a bucket: endpoint_url, region and addressing style as the client resolves them, learned
  once per bucket from ``generate_presigned_url`` (its query is dropped: only the base is kept);
- the signature: ``S3SigV4Auth`` on an ``AWSRequest`` (~40 µs; a presigned URL per GET costs twice
  that, and botocore presigns S3 with SigV2 unless told otherwise). It covers the path as sent: keys
  with "." or ".." segments, which urllib3 would normalise away, never get here (the allowlist);
- an error response: botocore's own rest-xml parser, so the ClientError carries the Code and status
  that get_object would have raised.
The connect and read timeouts are the client's; TLS is verified against the CA bundle botocore would
use, and HTTP(S)_PROXY / NO_PROXY are honoured as botocore honours them. Two differences from
get_object, on purpose: redirects are not followed (a bucket in another region than the client's
fails with its 301/307 instead of being retried there: set the region), and response checksums are
not asked for (TLS and the Content-Length check guard the bytes).

This module raises botocore's and urllib3's exceptions; worker.source reads the body against the
record's deadline and translates every error, in one place.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, HeadersDict
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.httpsession import get_cert_path
from botocore.parsers import create_parser
from botocore.session import get_session
from botocore.utils import get_environ_proxies

_PROBE_KEY = "k"  # presigned once per bucket; the URL up to it is the bucket's base


@dataclass(frozen=True, slots=True)
class _Route:
    base: str  # scheme://host[:port]/[bucket/], to which the quoted key is appended
    region: str
    manager: urllib3.PoolManager
    timeout: urllib3.Timeout


class SignedGet:
    """Signed GETs through a connection pool of ``pool_size`` per host; thread-safe.

    Nothing touches ``client`` before the first GET, so a source that never fetches needs none.
    """

    def __init__(self, client: Any, *, pool_size: int) -> None:
        self._client = client
        self._pool_size = pool_size
        self._routes: dict[str, _Route] = {}  # by bucket: bounded by the allowlist, checked first
        self._managers: dict[str | None, urllib3.PoolManager] = {}  # by proxy URL; None: direct
        self._lock = threading.Lock()
        self._parser: Any = None
        self._shape: Any = None

    def open(self, bucket: str, key: str) -> urllib3.BaseHTTPResponse:
        """The response, whatever its status, its body not read yet: read it to the end or close it.
        Raises NoCredentialsError without a request when the client has no credentials."""
        credentials = self._client._get_credentials()
        if credentials is None:
            raise NoCredentialsError()
        route = self._routes.get(bucket) or self._route(bucket)
        request = AWSRequest(method="GET", url=route.base + quote(key, safe="/~"))  # as botocore quotes {Key+}
        S3SigV4Auth(credentials.get_frozen_credentials(), "s3", route.region).add_auth(request)
        return route.manager.urlopen(
            "GET", request.url, headers=dict(request.headers.items()), retries=False, redirect=False,
            preload_content=False, decode_content=False, timeout=route.timeout,
        )  # decode_content=False: an object stored with Content-Encoding: gzip is its bytes, as in get_object

    def error(self, response: urllib3.BaseHTTPResponse, body: bytes) -> ClientError:
        """The ClientError get_object would raise for this non-2xx response and (a bounded part of) its body.
        Its status alone decides when botocore cannot parse the body, whatever the body holds."""
        status = response.status
        parsed: Any = None
        if status >= 301:  # below that, botocore's parser reads the response as a success
            if self._parser is None:
                self._shape = self._client.meta.service_model.operation_model("GetObject").output_shape
                self._parser = create_parser(self._client.meta.service_model.protocol)
            raw = {"status_code": status, "headers": HeadersDict(response.headers), "body": body, "context": {}}
            try:
                parsed = self._parser.parse(raw, self._shape)
            except Exception:  # bytes from outside that break the parser: fall back to the status
                parsed = None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("Error"), dict):
            parsed = {"Error": {"Code": str(status), "Message": ""}}
        metadata = parsed.get("ResponseMetadata")
        parsed["ResponseMetadata"] = {**(metadata if isinstance(metadata, dict) else {}), "HTTPStatusCode": status}
        return ClientError(parsed, "GetObject")

    def _route(self, bucket: str) -> _Route:
        presigned = self._client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY})
        scheme, netloc, path, _, _ = urlsplit(presigned)
        if not path.endswith("/" + _PROBE_KEY):
            raise ValueError(f"botocore presigned an unexpected URL for bucket {bucket!r}")
        base = f"{scheme}://{netloc}{path.removesuffix(_PROBE_KEY)}"
        config = self._client.meta.config
        proxy = (config.proxies or get_environ_proxies(base)).get(scheme)
        route = _Route(
            base=base,
            region=self._client.meta.region_name,
            manager=self._manager(proxy),
            timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
        )
        self._routes[bucket] = route
        return route

    def _manager(self, proxy: str | None) -> urllib3.PoolManager:
        with self._lock:
            if proxy not in self._managers:
                options: dict[str, Any] = {"maxsize": self._pool_size, "ca_certs": _ca_certs()}  # verified, as default
                self._managers[proxy] = (
                    urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                )
            return self._managers[proxy]


@functools.cache
def _ca_certs() -> str:
    """botocore's choice of CA bundle: AWS_CA_BUNDLE or the profile's ca_bundle, then REQUESTS_CA_BUNDLE, else
    its default (certifi's). Once per process: reading the config takes a botocore session (~10 ms)."""
    bundle = get_session().get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE")
    return str(get_cert_path(bundle or True))
