import time
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from worker.health import HealthServer


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_probes_follow_the_loop_and_metrics_are_served() -> None:
    registry = CollectorRegistry()
    Counter("clip_worker_records_embedded_total", "test", registry=registry).inc(3)
    state = {"last_loop_at": time.monotonic(), "ready": False}
    server = HealthServer(
        port=0, host="127.0.0.1", registry=registry, stall_seconds=30,
        last_loop_at=lambda: state["last_loop_at"], ready=lambda: bool(state["ready"]),
    )
    server.start()
    try:
        assert get(server.port, "/livez")[0] == 200
        assert get(server.port, "/readyz")[0] == 503
        state["ready"] = True
        assert get(server.port, "/readyz")[0] == 200
        state["last_loop_at"] = time.monotonic() - 31  # the loop has not turned for longer than allowed
        assert get(server.port, "/livez")[0] == 503
        status, body = get(server.port, "/metrics")
        assert status == 200 and b"clip_worker_records_embedded_total 3.0" in body
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()


def test_livez_fails_when_records_in_flight_finish_nothing_for_the_stall_time() -> None:
    stalled = {"seconds": 0.0}
    server = HealthServer(
        port=0, host="127.0.0.1", registry=CollectorRegistry(), stall_seconds=30,
        last_loop_at=time.monotonic, ready=lambda: True, stalled_seconds=lambda: stalled["seconds"],
    )
    server.start()
    try:
        stalled["seconds"] = 29.0
        assert get(server.port, "/livez")[0] == 200
        stalled["seconds"] = 31.0  # the loop turns, but the pipeline behind it is stuck
        assert get(server.port, "/livez")[0] == 503
    finally:
        server.stop()
