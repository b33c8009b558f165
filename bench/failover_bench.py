"""What a broker failover costs the worker: produce-to-visible latency through it, and replacements.

Starts a 3-node replicated cluster (harness/kafka_cluster.py: RF 3, min.insync.replicas 2) and moto's
S3 server; for each scenario a fresh set of topics and one exactly-once worker with default settings
(the tiny model, static membership), fed about 40 records a second throughout (harness/failover.py).
Latency is from the feeder's produce to the record's output becoming visible to a read_committed
reader (median, p99, max over every record of the scenario). The failover begins 10 s after the
first 100 outputs, once the backlog of the worker's start-up is gone. Scenarios:

- kill-group-15 / kill-group-60: SIGKILL the group coordinator's node, start it again 15 s / 60 s later;
- kill-txn-15 / kill-txn-60: the same for the transaction coordinator's node (the worker's
  transactional.id), which may be another node;
- roll: a rolling restart of all three (SIGTERM, a controlled shutdown, then start);
- wedge: an in-process worker whose first producer blocks in send_offsets_to_transaction (as
  librdkafka's does while a coordinator fails over): how long after the call the clients are
  replaced, and how long the replacement itself takes.

    .venv/bin/python bench/failover_bench.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

from bench.header import run_header
from harness.failover import Feeder, Watcher, failover_settings, latencies, transactional_id
from harness.kafka_cluster import KafkaCluster
from harness.models import TINY_MODEL_NAME, write_random_checkpoint
from harness.photos import photo_corpus
from harness.s3_server import S3Server, fill_bucket
from harness.workers import InProcessWorker, settings_env
from worker.config import Settings
from worker.engine import Embedder
from worker.stream import clients as clients_module

SETTLE_SECONDS = 10.0  # after the first 100 outputs, before the failover


def scenario(cluster: KafkaCluster, settings: Settings, s3: S3Server, keys: list[str], log: Path,
             event: Callable[[], None], *, in_process: Callable[[], Any] | None = None) -> dict[str, Any]:
    kafka = settings.kafka
    worker: Any
    if in_process is None:
        with log.open("ab") as out:
            worker = subprocess.Popen([sys.executable, "-m", "worker"], env=os.environ | settings_env(settings)
                                      | s3.env(), stdout=out, stderr=out)
    else:
        worker = in_process()
    feeder = Feeder(cluster.bootstrap_servers, kafka.input_topic, bucket="bench", keys=keys).start()
    watcher = Watcher(cluster.bootstrap_servers, kafka.output_topic).start()
    try:
        while len(watcher.visible_at) < 100:
            time.sleep(0.2)
        if in_process is None:
            time.sleep(SETTLE_SECONDS)  # the backlog of the worker's start-up is gone: a steady state
        event()
        time.sleep(5)
        produced = feeder.stop()
        missing = watcher.wait_for(produced, timeout=300)
        exited = worker.poll() if in_process is None else worker.error
    finally:
        watcher.stop()
        if in_process is None:
            worker.terminate()
            worker.wait(60)
        else:
            worker.stop()
    return latencies(feeder, watcher) | {"records": len(produced), "missing": len(missing),
                                         "duplicates": watcher.duplicates, "exited": exited}


def kill(cluster: KafkaCluster, settings: Settings, name: str) -> Callable[[], None]:
    """kill-group-<seconds> or kill-txn-<seconds>."""
    _, coordinator, seconds = name.split("-")

    def event() -> None:
        node = cluster.node(cluster.group_coordinator(settings.kafka.group_id) if coordinator == "group" else
                            cluster.transaction_coordinator(transactional_id(settings)))
        node.kill()
        time.sleep(float(seconds))
        node.start()
        cluster.wait_until_replicated()

    return event


def roll(cluster: KafkaCluster) -> Callable[[], None]:
    def event() -> None:
        for node in cluster.nodes:
            node.stop()
            node.start()
            cluster.wait_until_replicated()

    return event


class OffsetsNeverReturn:
    """The worker's producer, except that send_offsets_to_transaction blocks until released."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.released = threading.Event()
        self.called_at: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self.called_at = time.monotonic()
        self.released.wait()


def wedge(settings: Settings, s3: S3Server, timings: dict[str, float]) -> Callable[[], InProcessWorker]:
    original = clients_module.Clients.replace

    def timed(self: clients_module.Clients, cause: Any) -> None:
        started = time.monotonic()
        original(self, cause)
        timings["replace"] = time.monotonic() - started
        timings["ended_at"] = time.monotonic()

    def start() -> InProcessWorker:
        clients_module.Clients.replace = timed  # type: ignore[method-assign]
        os.environ.update(s3.env())
        worker = InProcessWorker(settings, embedder=Embedder.load(settings.model))
        committer: Any = worker.runtime._clients.current.committer
        committer._producer = stand_in = OffsetsNeverReturn(committer._producer)
        timings["stand_in"] = stand_in  # type: ignore[assignment]
        return worker.start()

    return start


SCENARIOS = ("kill-group-15", "kill-txn-15", "kill-group-60", "kill-txn-60", "roll", "wedge")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=SCENARIOS)
    args = parser.parse_args()
    wanted = args.only or list(SCENARIOS)
    load_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    checkpoint = write_random_checkpoint(TINY_MODEL_NAME, tmp / "tiny.pt", seed=7)
    images = [(name, data) for name, data in photo_corpus() if "1024" in name][:8] or photo_corpus()[:8]
    results: dict[str, dict[str, Any]] = {}
    cluster = KafkaCluster()
    cluster.start()
    try:
        with S3Server() as s3:
            fill_bucket(s3, "bench", images)
            keys = [name for name, _ in images]
            for name in wanted:
                settings = failover_settings(cluster, s3, checkpoint, prefix="bench", bucket="bench",
                                             delivery="exactly-once", journal_dir=tmp / name)
                log = tmp / f"{name}.log"
                if name == "wedge":
                    timings: dict[str, Any] = {}
                    result = scenario(cluster, settings, s3, keys, log, lambda: time.sleep(25),
                                      in_process=wedge(settings, s3, timings))
                    called = timings["stand_in"].called_at
                    result["wedged->replaced"] = timings["ended_at"] - called if called else float("nan")
                    result["replacement"] = timings.get("replace", float("nan"))
                else:
                    event = roll(cluster) if name == "roll" else kill(cluster, settings, name)
                    result = scenario(cluster, settings, s3, keys, log, event)
                    result["replacements"] = log.read_text(errors="replace").count("replacing the Kafka clients")
                results[name] = result
                print(name, {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}, flush=True)
    finally:
        cluster.close()
    print("\n".join(run_header("failover_bench.py", (load_start, os.getloadavg()[0]))))
    print("| scenario | records | median s | p99 s | max s | missing | duplicates | exited | replacements |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for name, r in results.items():
        extra = (f"{r.get('replacements', 1)}" if name != "wedge" else
                 f"1: {r['wedged->replaced']:.1f} s after the call, {r['replacement']:.1f} s to replace")
        print(f"| {name} | {r['records']} | {r['median']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | {r['missing']} "
              f"| {r['duplicates']} | {'no' if not r['exited'] else r['exited']} | {extra} |")


if __name__ == "__main__":
    main()
