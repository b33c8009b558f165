"""An HTTP proxy in front of the S3 endpoint that injects faults, for the retry tests.

moto serves S3 faithfully but never fails on purpose. Tests point the worker at this proxy
instead, tell it which keys should fail and how often (a 503 SlowDown, a 500, or a connection
reset), and the worker sees those faults on the wire exactly as it would from AWS, then the real
object once the faults are used up. "denied" (a 403 AccessDenied) is the one permanent fault: give it
enough `times` that it never clears. Two more faults for the hardening tests: `outage(seconds)`, in
which every request fails (503s and resets in turn) until the time is up, and `trickle(key)`, which
sends that object's body one byte a second.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

FaultKind = Literal["slowdown", "internal-error", "reset", "denied", "expired-token"]
_ERROR_BODIES = {
    "slowdown": (503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
    "internal-error": (
        500, b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"
    ),
    "denied": (403, b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"),
    "expired-token": (
        400, b"<Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>"
    ),
}


@dataclass
class _Fault:
    key_part: str
    kind: FaultKind
    remaining: int


class FaultyS3Proxy:
    def __init__(self, *, upstream: str) -> None:
        target = urlsplit(upstream)
        self._upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self._faults: list[_Fault] = []
        self._outage_until = 0.0
        self._trickled: set[str] = set()
        self._lock = threading.Lock()
        self.requests = 0
        self.faults_served = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                with proxy._lock:
                    proxy.requests += 1
                    fault = proxy._take_fault(self.path)
                    trickle = any(part in self.path for part in proxy._trickled)
                if fault == "reset":
                    # SO_LINGER 0: close() sends RST, as a dropped load balancer connection would.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault is not None:
                    status, body = _ERROR_BODIES[fault]
                    self._reply(status, [("Content-Type", "application/xml")], body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body_in = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body_in, headers=dict(self.headers))
                    response = upstream.getresponse()
                    payload = response.read()
                    hop_by_hop = ("transfer-encoding", "connection")
                    headers = [(k, v) for k, v in response.getheaders() if k.lower() not in hop_by_hop]
                    self._reply(response.status, headers, payload, trickle=trickle)
                finally:
                    upstream.close()

            def _reply(
                self, status: int, headers: list[tuple[str, str]], body: bytes, *, trickle: bool = False
            ) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if not trickle:
                    self.wfile.write(body)
                    return
                for i in range(len(body)):  # a byte a second, until the reader gives up
                    try:
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(1.0)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-s3", daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, key_part: str, *, kind: FaultKind, times: int) -> None:
        """The next `times` requests whose path contains `key_part` fail with `kind`."""
        with self._lock:
            self._faults.append(_Fault(key_part=key_part, kind=kind, remaining=times))

    def outage(self, seconds: float) -> None:
        """Every request fails for `seconds` from now: 503 SlowDown and connection resets in turn."""
        with self._lock:
            self._outage_until = time.monotonic() + seconds

    def trickle(self, key_part: str) -> None:
        """Objects whose path contains `key_part` are sent one byte a second."""
        with self._lock:
            self._trickled.add(key_part)

    def _take_fault(self, path: str) -> FaultKind | None:
        if time.monotonic() < self._outage_until:
            self.faults_served += 1
            return "slowdown" if self.faults_served % 2 else "reset"
        for fault in self._faults:
            if fault.remaining > 0 and fault.key_part in path:
                fault.remaining -= 1
                self.faults_served += 1
                return fault.kind
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def faulty_proxy(upstream: str) -> Iterator[FaultyS3Proxy]:
    proxy = FaultyS3Proxy(upstream=upstream)
    try:
        yield proxy
    finally:
        proxy.close()
