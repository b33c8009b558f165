"""End-to-end throughput of the worker, next to model-only throughput of the same model and batch.

Starts a real Kafka broker and moto's S3 server, uploads the photo corpus (48 real photos, 640-1600 px
JPEGs), produces N messages, runs `python -m worker` as its own process, and measures the rate at
which outputs were written (their embedded_at stamps, after a warm-up share is dropped, so model
load is excluded). Model-only: the same Embedder's embed() on already-prepared images, batch after
batch, in this process. The ratio says how much of the device's rate the data path delivers.

    .venv/bin/python bench/pipeline_bench.py --model ViT-B-32 --messages 600 --batch 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import produce_requests, read_all, wait_until_committed
from harness.models import model_config_dir, write_random_checkpoint
from harness.photos import photo_corpus
from harness.s3_server import S3Server, fill_bucket
from harness.workers import settings_env
from worker.config import ModelSettings, Settings
from worker.engine import Embedder
from worker.formats.encoding import EmbeddingEncoder
from worker.formats.messages import ImageRequest, S3Uri

WARMUP_SHARE = 0.1


def model_only(settings: ModelSettings, images: list[bytes], *, seconds: float) -> float:
    embedder = Embedder.load(settings)
    prepared = [embedder.prepare(data) for data in images]
    batch = [prepared[i % len(prepared)] for i in range(embedder.batch_size)]
    embedder.embed(batch)  # warm-up
    rates = []
    for _ in range(3):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            embedder.embed(batch)
            done += len(batch)
        rates.append(done / (time.perf_counter() - started))
    return statistics.median(rates)


def end_to_end(settings: Settings, images: list[tuple[str, bytes]], *, messages: int, log: Path) -> float:
    with KafkaBroker() as broker, S3Server() as s3:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        s3_settings = settings.s3.model_copy(update={"endpoint_url": s3.endpoint_url})
        settings = settings.model_copy(update={"kafka": kafka, "s3": s3_settings})
        for topic, partitions in ((kafka.input_topic, 4), (kafka.output_topic, 2), (kafka.dead_letter_topic, 1)):
            broker.create_topic(topic, partitions)
        fill_bucket(s3, "bench", images)
        requests = [ImageRequest(id=f"m{i}", uri=S3Uri("bench", images[i % len(images)][0])) for i in range(messages)]
        produce_requests(broker.bootstrap_servers, kafka.input_topic, requests)
        with log.open("wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "worker"], env=os.environ | settings_env(settings)
                                      | s3.env(), stdout=out, stderr=out)
        try:
            wait_until_committed(broker.bootstrap_servers, kafka.group_id, kafka.input_topic, timeout=3600)
        finally:
            worker.terminate()
            worker.wait(60)
        model = settings.model
        decoder = EmbeddingEncoder(field_name=model.output_field, model_name="", pretrained="", normalized=True)
        stamps = sorted(
            decoder.decode(m.value())["embedded_at"].timestamp()  # type: ignore[arg-type]
            for m in read_all(broker.bootstrap_servers, kafka.output_topic, expect=messages)
        )
    return steady_rate(stamps)


def steady_rate(stamps: list[float]) -> float:
    """Outputs per second from their sorted write times, the first WARMUP_SHARE dropped (model load)."""
    skip = int(len(stamps) * WARMUP_SHARE)
    return (len(stamps) - skip - 1) / (stamps[-1] - stamps[skip])


def bench_settings(model_name: str, tmp: Path, *, batch: int, mode: str) -> Settings:
    """A worker on random weights of `model_name` (a checkpoint written into `tmp`), reading the
    benchmark bucket, with the given batch size and preprocessing mode."""
    checkpoint = write_random_checkpoint(model_name, tmp / "random.pt", seed=0)
    model = ModelSettings(model_name=model_name, pretrained=str(checkpoint), model_config_dir=model_config_dir(),
                          inference_batch_size=batch, preprocess_mode=mode)
    return Settings(model=model, s3={"allowed_sources": ("bench",)}, pipeline={"metrics_port": 0},
                    kafka={"group_id": "bench"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mode", choices=["fast", "exact"], default="fast")
    parser.add_argument("--model-seconds", type=float, default=3.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(args.model, Path(tmp), batch=args.batch, mode=args.mode)
        images = photo_corpus()
        device_rate = model_only(settings.model, [data for _, data in images], seconds=args.model_seconds)
        e2e_rate = end_to_end(settings, images, messages=args.messages, log=Path(tmp) / "worker.log")
    print("| model | mode | batch | model-only img/s | end-to-end img/s | end-to-end / model-only |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    print(f"| {args.model} | {args.mode} | {args.batch} | {device_rate:.1f} | {e2e_rate:.1f} | "
          f"{e2e_rate / device_rate:.2f} |")


if __name__ == "__main__":
    main()
