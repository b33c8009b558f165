"""The pod's HTTP endpoints: /livez, /readyz and /metrics, served from a daemon thread.

- /livez: 200 while the poll loop turned within `stall_seconds`, and records in flight have seen an
  offset finished within it too (outside an outage): a stuck loop, or a pipeline stuck behind a
  thread that never returns, gets the pod restarted.
- /readyz: 200 while `ready` says so (clip-worker run: the model is loaded, the loop turns and a Kafka
  broker answers; a worker that cannot reach Kafka takes no traffic, and is not restarted for it).
- /metrics: the worker's Prometheus registry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, exposition


class HealthServer:
    def __init__(
        self,
        *,
        port: int,
        registry: CollectorRegistry,
        last_loop_at: Callable[[], float],
        ready: Callable[[], bool],
        stalled_seconds: Callable[[], float] = lambda: 0.0,
        stall_seconds: float = 60.0,
        host: str = "0.0.0.0",
    ) -> None:
        checks = {
            "/livez": lambda: time.monotonic() - last_loop_at() < stall_seconds and stalled_seconds() < stall_seconds,
            "/readyz": ready,
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, status = exposition.generate_latest(registry), 200
                    content_type = exposition.CONTENT_TYPE_LATEST
                elif self.path in checks:
                    ok = checks[self.path]()
                    body, status, content_type = (b"ok\n" if ok else b"not ok\n"), (200 if ok else 503), "text/plain"
                else:
                    body, status, content_type = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would drown the worker's own logs

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
