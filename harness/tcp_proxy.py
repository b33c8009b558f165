"""A TCP proxy in front of the Kafka broker that stalls or cuts every connection on command.

Why: the failures that hurt the worker's transactions happen on the wire, and a real broker cannot
be told to produce them. Stopping it (``private_kafka_broker``) closes its sockets; what it cannot do
is keep them open and answer nothing, the way a broker in a long GC pause, a saturated disk or a
half-dead network path does. This proxy can:

- ``stall(seconds)``: every connection stays open, and no byte moves in either direction until the
  stall ends; then everything buffered meanwhile (in this process and in the kernel) is delivered.
- ``cut(seconds)``: every current connection is reset (RST on both sides), and each new one is reset
  as soon as it is accepted, until the cut ends.

The broker must advertise the proxy's port (``KafkaBroker(proxy_port=...)``), or clients would reach
it directly after bootstrap. One thread runs a selector loop over every socket: a stall is that loop
not reading or writing any connection. Byte counters let a test check that a stall moved nothing.
"""

from __future__ import annotations

import contextlib
import math
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable

Address = tuple[str, int]
_CHUNK = 65536
_BUFFER_LIMIT = 1 << 20  # stop reading a side while this much waits to be written to its peer


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a dropped load balancer connection would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Link:
    """A client connection and its upstream connection; ``out[s]`` is what waits to be written to s."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.peer = {client: upstream, upstream: client}
        self.out: dict[socket.socket, bytearray] = {client: bytearray(), upstream: bytearray()}
        self.eof: set[socket.socket] = set()  # sides that closed: nothing more to read from them


class TcpProxy:
    """Listens on ``port`` (0: any free one) and forwards each connection to ``upstream``, which may be
    a callable asked at every connect (the broker picks its listener port only when it starts)."""

    def __init__(self, upstream: Address | Callable[[], Address], *, port: int = 0) -> None:
        self._upstream: Callable[[], Address] = upstream if callable(upstream) else (lambda: upstream)
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._links: dict[socket.socket, _Link] = {}  # both sockets of every open link
        self._interest: dict[socket.socket, int] = {}
        self._state = threading.Condition()
        self._stall_until = self._cut_until = 0.0
        self._cut_pending = self._closing = False
        self._turns = 0  # loop iterations that re-read the state: commands wait for the next one
        self.error: BaseException | None = None
        self.bytes_to_upstream = self.bytes_to_client = 0
        self.connections = 0  # connections accepted and forwarded
        self.resets = 0  # connections reset by cuts, open ones and refused new ones alike
        self._thread = threading.Thread(target=self._run, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._links) // 2

    def stall(self, seconds: float | None = None) -> None:
        """Forward nothing for ``seconds`` (None: until ``heal``); returns once no byte moves any more."""
        self._command(stall_until=time.monotonic() + (math.inf if seconds is None else seconds))

    def cut(self, seconds: float | None = None) -> None:
        """Reset every connection, and every new one for ``seconds`` (None: until ``heal``); returns
        once the open ones are reset."""
        self._command(cut_until=time.monotonic() + (math.inf if seconds is None else seconds), cut_pending=True)

    def heal(self) -> None:
        """End a stall or a cut now."""
        self._command(stall_until=0.0, cut_until=0.0)

    def _command(self, **state: float | bool) -> None:
        with self._state:
            if self._closing or not self._thread.is_alive():
                raise RuntimeError("the proxy is closed") from self.error
            for name, value in state.items():
                setattr(self, f"_{name}", value)
            target = self._turns + 1
            self._wake_w.send(b"x")
            if not self._state.wait_for(lambda: self._turns >= target or not self._thread.is_alive(), timeout=10):
                raise TimeoutError("the proxy loop did not take the command")
            if self._turns < target:
                raise RuntimeError("the proxy loop failed") from self.error

    def close(self) -> None:
        """Stop the loop and close every socket; raises what the loop died of, if anything."""
        with self._state:
            if not self._closing:
                self._closing = True
                with contextlib.suppress(OSError):  # the loop may be gone already
                    self._wake_w.send(b"x")
        self._thread.join(10)
        if self._thread.is_alive():
            raise TimeoutError("the proxy thread did not stop")
        self._wake_w.close()
        if self.error is not None:
            raise RuntimeError("the proxy loop failed") from self.error

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the loop thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._state:
                    if self._closing:
                        return
                    now = time.monotonic()
                    stalled = now < self._stall_until
                    cut_now, self._cut_pending = self._cut_pending, False
                    wake_at = min((t for t in (self._stall_until, self._cut_until) if t > now), default=math.inf)
                    if cut_now:
                        for link in set(self._links.values()):
                            self._drop(link, reset=True)
                            self.resets += 1
                    self._update_interest(stalled)
                    self._turns += 1
                    self._state.notify_all()
                timeout = None if wake_at == math.inf else wake_at - now
                for key, events in self._selector.select(timeout):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                    elif sock is self._listener:
                        self._accept(refuse=time.monotonic() < self._cut_until)  # the cut may have ended
                    elif not stalled:
                        self._service(sock, events)
        except BaseException as exc:  # raised by close()
            self.error = exc
        finally:
            with self._state:
                for link in set(self._links.values()):
                    self._drop(link, reset=False)
                self._state.notify_all()
            self._selector.close()
            self._listener.close()
            self._wake_r.close()

    def _update_interest(self, stalled: bool) -> None:
        for sock, link in self._links.items():
            want = 0
            if not stalled:
                if sock not in link.eof and len(link.out[link.peer[sock]]) < _BUFFER_LIMIT:
                    want |= selectors.EVENT_READ
                if link.out[sock]:
                    want |= selectors.EVENT_WRITE
            have = self._interest.get(sock, 0)
            if want != have:
                if not have:
                    self._selector.register(sock, want)
                elif not want:
                    self._selector.unregister(sock)
                else:
                    self._selector.modify(sock, want)
                self._interest[sock] = want

    def _accept(self, *, refuse: bool) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            if refuse:
                self.resets += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream(), timeout=5)
            except OSError:  # the broker is down: so is the connection
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # add no latency of our own
            link = _Link(client, upstream)
            self._links[client] = self._links[upstream] = link
            self.connections += 1

    def _service(self, sock: socket.socket, events: int) -> None:
        link = self._links.get(sock)
        if link is None:
            return  # dropped earlier in this round
        try:
            if events & selectors.EVENT_WRITE and link.out[sock]:
                sent = sock.send(link.out[sock])
                del link.out[sock][:sent]
                if sock is link.upstream:
                    self.bytes_to_upstream += sent
                else:
                    self.bytes_to_client += sent
            if events & selectors.EVENT_READ:
                data = sock.recv(_CHUNK)
                if data:
                    link.out[link.peer[sock]] += data
                else:
                    link.eof.add(sock)
        except BlockingIOError:
            pass
        except OSError:  # reset by one side: reset the other too
            self._drop(link, reset=True)
            return
        # Kafka never half-closes: once a side is gone and what it sent is delivered, close both.
        if any(side in link.eof and not link.out[link.peer[side]] for side in (link.client, link.upstream)):
            self._drop(link, reset=False)

    def _drop(self, link: _Link, *, reset: bool) -> None:
        for sock in (link.client, link.upstream):
            if self._interest.pop(sock, 0):
                self._selector.unregister(sock)
            self._links.pop(sock, None)
            if reset:
                _reset(sock)
            else:
                sock.close()
