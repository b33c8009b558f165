"""Part "e2e": the whole worker (`python -m worker`, its own process) from Kafka through S3 to Avro outputs.

What it is: the real worker process, settings from CLIP_WORKER_* variables as in a pod, reading JSON
requests from Kafka, fetching the corpus photos from S3 over HTTP, embedding on the device and
producing Avro records. What it is not: a production data path. The GPU machine has no Java and no
network, so Kafka is librdkafka's mock cluster (one in-process mock broker, topics auto-created with
4 partitions) and S3 is gofakes3 in memory (standins.py); their costs are not a real broker's or S3's.

Each run produces N requests into fresh topics, starts the worker (or several "pods" of it in one
consumer group, each with its own tower on the one GPU and its own GIL), and samples every 0.25 s: outputs
written (the output topic's end offsets), dead letters, the GPU's busy % (nvidia-smi), the worker's
process-tree CPU, its main thread's (the loop: one core at most, so `main_cores` near 1 per pod names
it as the ceiling) and the machine's. img/s is the output rate over the steady window: from a few
seconds after the first output (model load and warm-up excluded) to the time limit or the last
record. The worker is then stopped with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from bench.gpu_parts.common import Budget, Context, Report
from bench.gpu_parts.standins import BUCKET, LOG, GpuSampler, mock_kafka, s3_server
from harness.cpu_time import box_busy_cpu, thread_cpu, tree_cpu
from harness.kafka_io import produce_requests
from harness.workers import settings_env
from worker.config import Settings
from worker.formats.messages import ImageRequest, S3Uri

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED", "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED"}


def written(probe: Consumer, topic: str) -> int:
    try:
        partitions = probe.list_topics(topic, timeout=5).topics[topic].partitions
        return sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in partitions)
    except (KafkaException, KeyError):
        return 0


def worker_settings(ctx: Context, bootstrap: str, endpoint: str, tag: str, model: str, batch: int,
                    preprocess: dict[str, Any]) -> Settings:
    return Settings(
        model={"model_name": model, "pretrained": "none", "device": str(ctx.device), "inference_batch_size": batch,
               **ctx.model_extra, **preprocess},
        kafka={"bootstrap_servers": bootstrap, "group_id": f"bench-{tag}", "input_topic": f"in-{tag}",
               "output_topic": f"out-{tag}", "dead_letter_topic": f"dlq-{tag}"},
        s3={"endpoint_url": endpoint, "region": "us-east-1", "allowed_sources": (BUCKET,), "fetch_workers": 32},
        pipeline={"metrics_port": 0, "max_in_flight": 4 * batch + 512, "shutdown_grace_seconds": 5.0},
    )


def one_run(ctx: Context, report: Report, budget: Budget, *, bootstrap: str, endpoint: str, server: str,
            model: str, batch: int, preprocess: dict[str, Any], messages: int, log_dir: Path, pods: int) -> None:
    """`pods` worker processes in one consumer group, each with its own tower on the one GPU: its CPU
    figures are theirs together (`main_cores` the sum of their main threads)."""
    tag = uuid.uuid4().hex[:8]
    settings = worker_settings(ctx, bootstrap, endpoint, tag, model, batch, preprocess)
    names = [name for name, _ in ctx.corpus]
    requests = (ImageRequest(id=f"r{i}", uri=S3Uri(BUCKET, names[i % len(names)])) for i in range(messages))
    produce_requests(bootstrap, settings.kafka.input_topic, requests)
    label = f"{model} batch {batch} " + ", ".join(f"{k}={v}" for k, v in preprocess.items()) + f", {pods} pod(s)"
    env = os.environ | settings_env(settings) | CREDENTIALS | {"AWS_ENDPOINT_URL_S3": endpoint}
    log = log_dir / f"worker-{tag}.log"
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{tag}", "logger": LOG})
    gpu = GpuSampler()
    with log.open("ab") as out:
        workers = [subprocess.Popen([sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdout=out, stderr=out)
                   for _ in range(pods)]
    started = time.monotonic()
    samples: list[tuple[float, int, float, float, float]] = []  # (time, outputs, worker, main thread, box CPU s)
    first = dead = 0.0
    # The smoke run waits for all its records (it ends as soon as they are out): a busy machine is slow.
    warmup, window = (0.5, 90.0) if ctx.smoke else (3.0, 20.0)
    try:
        while budget.left() > 5.0 and all(worker.poll() is None for worker in workers):
            time.sleep(0.25)
            now, done = time.monotonic(), written(probe, settings.kafka.output_topic)
            dead = written(probe, settings.kafka.dead_letter_topic)
            samples.append((now, done, sum(tree_cpu(w.pid) for w in workers),
                            sum(thread_cpu(w.pid, w.pid) for w in workers), box_busy_cpu()))
            first = first or (now if done else 0.0)
            if done + dead >= messages or (first and now - first >= warmup + window):
                break
    finally:
        stop_began = time.monotonic()
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = []
        for worker in workers:
            try:
                codes.append(worker.wait(30))
            except subprocess.TimeoutExpired:
                worker.kill()
                codes.append(worker.wait())
        code = max(codes, key=abs)
        gpu.close()
        probe.close()
    steady = [s for s in samples if first and s[0] >= first + warmup]
    if len(steady) < 2:  # all done before the warm-up ended: from the last sample without outputs (a lower bound)
        steady = [s for i, s in enumerate(samples) if s[1] or (i + 1 < len(samples) and samples[i + 1][1])]
    if len(steady) < 2:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        report.check(f"e2e {label}: outputs written", False, f"{samples[-1][1] if samples else 0} outputs, "
                     f"{dead:.0f} dead letters, exit {code}; worker log: " + " | ".join(tail)[-1500:])
        return
    (t0, n0, c0, m0, b0), (t1, n1, c1, m1, b1) = steady[0], steady[-1]
    seconds = max(t1 - t0, 1e-6)
    report.figure(kind="end to end", model=model, batch=batch, **preprocess, pods=pods, s3=server,
                  kafka="librdkafka mock",
                  img_per_s=round((n1 - n0) / seconds, 1), outputs=int(n1), dead_letters=int(dead),
                  window_s=round(seconds, 1), startup_s=round(first - started, 1),
                  gpu_busy_pct=gpu.mean(t0, t1), worker_cores=round((c1 - c0) / seconds, 2),
                  worker_cpu_ms_per_image=round(1000 * (c1 - c0) / max(n1 - n0, 1), 2),
                  main_cores=round((m1 - m0) / seconds, 2),
                  main_us_per_image=round(1e6 * (m1 - m0) / max(n1 - n0, 1), 1),
                  box_cores=round((b1 - b0) / seconds, 2), stop_s=round(time.monotonic() - stop_began, 1), exit=code,
                  jpeg_decode="device" if "JPEG decode on the device" in log.read_text(errors="replace") else "cpu")
    report.check(f"e2e {label}: outputs written, no dead letters", n1 > 0 and dead == 0,
                 f"{n1} outputs, {dead:.0f} dead letters in {t1 - started:.0f} s")


def run(ctx: Context, report: Report, budget: Budget) -> None:
    threads: dict[str, Any] = {"preprocess_workers": 16}
    on_gpu = threads | {"decode": "gpu"}  # baseline JPEGs decoded by nvJPEG on the device thread
    in_processes: dict[str, Any] = {"preprocess_workers": 16, "preprocess_in": "processes"}
    # (model, batch, model settings, messages, pods), the likeliest to reach the B-32 target first
    if ctx.smoke:  # the device decode's path as the GPU runs it, with libjpeg-turbo on the device thread
        runs: list[tuple[str, int, dict[str, Any], int, int]] = [
            ("tiny-vit", 16, {"preprocess_workers": 2, "decode": "gpu"}, 64, 2)]
    else:
        runs = [("ViT-B-32", 256, threads, 60_000, 1), ("ViT-B-32", 256, on_gpu, 80_000, 1),
                ("ViT-B-32", 256, on_gpu, 80_000, 2), ("ViT-L-14", 128, in_processes, 20_000, 1),
                ("ViT-B-32", 256, in_processes, 60_000, 1)]
    with tempfile.TemporaryDirectory() as tmp, mock_kafka() as bootstrap, s3_server(ctx) as (endpoint, server):
        report.figure(kind="e2e setup", kafka=f"librdkafka mock cluster at {bootstrap}", s3=f"{server} at {endpoint}",
                      objects=len(ctx.corpus))
        for i, (model, batch, preprocess, messages, pods) in enumerate(runs):
            share = budget.share(len(runs) - i)
            if share.left() < (4.0 if ctx.smoke else 28.0):
                report.note(f"e2e {model} {preprocess} skipped: out of time")
                continue
            one_run(ctx, report, share, bootstrap=bootstrap, endpoint=endpoint, server=server, model=model,
                    batch=batch, preprocess=preprocess, messages=messages, log_dir=Path(tmp), pods=pods)
