"""SigV4 for the fetch threads' GETs: what botocore's S3SigV4Auth signs, for a fraction of its CPU.

Why not botocore's signer: an ``AWSRequest`` and ``S3SigV4Auth.add_auth`` cost pure Python under the
GIL comparable to curl's whole transfer of a photo. It parses the URL three times, keeps headers in an
``email.message``, and derives the signing key (four HMACs) for every request; at ten thousand images
a second that is a large share of the one GIL. Here the key is derived once a day (it depends on the
secret, the day and the region only), and the canonical request is one format string (the figures:
BENCHMARKS.md).

What it signs is what ``S3SigV4Auth`` signs for a GET with no body and no query, nothing more:
- the headers host, x-amz-content-sha256, x-amz-date and, with temporary credentials,
  x-amz-security-token. The payload hash is the empty body's: botocore signs the payload of every S3
  request without a Content-MD5, over HTTP and HTTPS alike;
- the path as sent, not normalised (S3's rule: botocore's S3SigV4Auth leaves it alone too);
- the Host as botocore derives it from the URL: lower case, IPv6 in brackets, the port unless it is
  the scheme's default. curl sends the same Host for the same URL (tests/test_s3_get.py).
botocore stays the definition: tests/test_s3_sign.py checks the headers equal to botocore's for any
credentials, region, endpoint and key (Hypothesis), and a server that checks signatures (s3proxy)
accepts them. Credentials still come from botocore, refreshed by it (worker/s3/get.py).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from hashlib import sha256
from urllib.parse import urlsplit

from botocore.credentials import ReadOnlyCredentials

EMPTY_BODY_SHA256 = sha256(b"").hexdigest()
_STAMP = "%Y%m%dT%H%M%SZ"  # botocore's SIGV4_TIMESTAMP
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class _SigningKey:
    secret: str
    day: str  # YYYYMMDD
    key: bytes


class GetSigner:
    """Signs GETs for one region. Thread-safe: the cached key is replaced whole, and two threads that
    derive it at once derive the same bytes."""

    def __init__(self, region: str) -> None:
        self._region = region
        self._cached = _SigningKey("", "", b"")

    def headers(self, credentials: ReadOnlyCredentials, host: str, path: str, *, stamp: str | None = None) -> list[str]:
        """The header lines that sign a GET of ``path`` (quoted, as sent) on ``host`` (host_of() of the
        URL), in curl's "Name: value" form. ``stamp``: the request's time as YYYYMMDDTHHMMSSZ; now if None."""
        stamp = stamp or time.strftime(_STAMP, time.gmtime())
        day, token = stamp[:8], credentials.token
        canonical_headers = f"host:{host}\nx-amz-content-sha256:{EMPTY_BODY_SHA256}\nx-amz-date:{stamp}\n"
        signed = "host;x-amz-content-sha256;x-amz-date"
        if token:
            canonical_headers += f"x-amz-security-token:{' '.join(token.split())}\n"
            signed += ";x-amz-security-token"
        canonical = f"GET\n{path}\n\n{canonical_headers}\n{signed}\n{EMPTY_BODY_SHA256}"
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(credentials.secret_key, day), to_sign.encode(), sha256).hexdigest()
        lines = [f"X-Amz-Date: {stamp}", f"X-Amz-Content-SHA256: {EMPTY_BODY_SHA256}",
                 f"Authorization: AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                 f"SignedHeaders={signed}, Signature={signature}"]
        if token:
            lines.insert(1, f"X-Amz-Security-Token: {token}")
        return lines

    def _key(self, secret: str, day: str) -> bytes:
        cached = self._cached
        if cached.secret == secret and cached.day == day:
            return cached.key
        key = hmac.digest(f"AWS4{secret}".encode(), day.encode(), "sha256")
        for part in (self._region, "s3", "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        self._cached = _SigningKey(secret, day, key)
        return key


def host_of(url: str) -> str:
    """The Host that botocore signs for ``url``: lower case, IPv6 in brackets, no default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host
