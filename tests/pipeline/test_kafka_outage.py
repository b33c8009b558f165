"""The broker stops under a running worker process and starts again: the worker says so once each way,
reports it (clip_worker_outage{cause="kafka"}, /readyz over HTTP), and loses and dead-letters nothing.

The stop is short (~6 s, well inside the session timeout) so that the group keeps its members: what is
tested is what the worker says and reports, and that the records come through; the longer outages that
fence a static member are test_broker_outage.py's. At-least-once only: exactly-once, the main thread
waits inside a transactional call while the broker is away, and one that does not return in time
ends the process (ClientWedged, as test_broker_outage.py shows), before librdkafka's signals are read.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import committed_and_end_offsets, produce_requests, read_all, written_count
from harness.s3_server import S3Server
from harness.workers import WorkerProcess, settings_env
from tests.pipeline.conftest import ids_of, requests_for
from tests.test_logs import closed_port
from worker.config import Settings


def probe(port: int) -> tuple[bool, float | None]:
    """(/readyz answered 200, the value of clip_worker_outage{cause="kafka"}) over HTTP; (False, None) while
    the server does not answer yet."""
    base = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=2) as response:
            metrics = response.read().decode()
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
            ready = response.status == 200
    except urllib.error.HTTPError as exc:
        ready = exc.code == 200
    except OSError:
        return False, None
    gauge = next((float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith('clip_worker_outage{cause="kafka"}')), None)
    return ready, gauge


def wait_for(predicate: Callable[[], bool], seconds: float, what: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s\n{worker.log_tail()}"
        time.sleep(0.2)


def test_a_stopped_broker_is_one_line_a_gauge_and_not_ready_and_its_return_one_line_with_nothing_lost(
    private_kafka_broker: KafkaBroker,
    s3_server: S3Server,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    broker = private_kafka_broker
    bucket, keys = photo_bucket
    port = closed_port()
    settings = make_settings(bucket, bootstrap=broker.bootstrap_servers,
                             pipeline={"metrics_port": port})
    kafka = settings.kafka
    for topic, partitions in ((kafka.input_topic, 3), (kafka.output_topic, 2), (kafka.dead_letter_topic, 1)):
        broker.create_topic(topic, partitions)
    requests = requests_for(bucket, keys, 600)
    produce_requests(broker.bootstrap_servers, kafka.input_topic, requests)
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(settings_env(settings) | s3_server.env(), log_path=log_path).start()
    try:
        wait_for(lambda: written_count(broker.bootstrap_servers, kafka.output_topic) >= 100, 90, "outputs", worker)
        assert probe(port) == (True, 0.0), "ready, no Kafka outage, while the broker answers"
        broker.stop()
        stopped = time.monotonic()
        wait_for(lambda: probe(port) == (False, 1.0), 15, "not ready and the gauge at 1", worker)
        time.sleep(max(0.0, 6 - (time.monotonic() - stopped)))
        broker.start()
        wait_for(lambda: probe(port) == (True, 0.0), 30, "ready again and the gauge at 0", worker)
        wait_for(lambda: (lambda c, e: c == e)(*committed_and_end_offsets(
            broker.bootstrap_servers, kafka.group_id, kafka.input_topic)), 120, "every offset committed", worker)
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
        assert worker.terminate(timeout=60) == 0, worker.log_tail()
    finally:
        worker.close()

    log = log_path.read_text(errors="replace").splitlines()
    unreachable = [line for line in log if "Kafka unreachable" in line]
    back = [line for line in log if "Kafka back after" in line]
    assert len(unreachable) == 1 and len(back) == 1, "\n".join(unreachable + back)
    assert "repeated librdkafka line(s) held back" in back[0]
    assert not [line for line in log if " ERROR " in line or "Traceback" in line], "\n".join(log[-40:])
    seen = ids_of(read_all(broker.bootstrap_servers, kafka.output_topic))
    assert set(seen) == {r.id for r in requests}, "no record is missing"
    assert read_all(broker.bootstrap_servers, kafka.dead_letter_topic) == [], "none is dead-lettered"
