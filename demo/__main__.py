"""`make demo`: the worker end to end on a real Kafka broker and a real S3 endpoint, offline.

Starts a single-node Kafka 4 broker (KRaft, from the Maven Central jars) and moto's S3 server,
uploads a few dozen real photos (scikit-image's, re-encoded at several sizes), produces one
message per photo plus two bad ones, runs `python -m worker` as its own process until the group
has committed the end of the input, stops it with SIGTERM, and prints what came out.

Weights: no model hub is reachable here, so the default is ViT-B-32 with random weights. For
real weights, set CLIP_WORKER_MODEL__PRETRAINED to an OpenCLIP tag whose file is already in the
cache (CLIP_WORKER_MODEL__CACHE_DIR) or to a local checkpoint file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import produce, produce_requests, read_all, wait_until_committed
from harness.photos import photo_corpus
from harness.s3_server import S3Server, fill_bucket
from worker.config import ModelSettings
from worker.formats.encoding import EmbeddingEncoder
from worker.formats.messages import ImageRequest, S3Uri

BUCKET = "demo-photos"
INPUT, OUTPUT, DLQ, GROUP = "images", "image-embeddings", "images-dlq", "clip-demo"


def main() -> int:
    model = ModelSettings(pretrained=os.environ.get("CLIP_WORKER_MODEL__PRETRAINED", "none"))
    print("starting Kafka (KRaft, single node) and S3 (moto server) on 127.0.0.1 ...", flush=True)
    with KafkaBroker() as broker, S3Server() as s3:
        for topic, partitions in ((INPUT, 3), (OUTPUT, 3), (DLQ, 1)):
            broker.create_topic(topic, partitions)
        photos = photo_corpus()
        fill_bucket(s3, BUCKET, [*((f"photos/{name}", data) for name, data in photos),
                                 ("photos/notes.txt", b"not an image")])
        requests = [ImageRequest(id=name, uri=S3Uri(BUCKET, f"photos/{name}")) for name, _ in photos]
        produce_requests(broker.bootstrap_servers, INPUT, requests)
        bad = [ImageRequest(id="missing", uri=S3Uri(BUCKET, "photos/missing.jpg")),
               ImageRequest(id="text", uri=S3Uri(BUCKET, "photos/notes.txt"))]
        produce_requests(broker.bootstrap_servers, INPUT, bad)
        produce(broker.bootstrap_servers, INPUT, [(b"garbled", b"{not json")])
        total = len(requests) + len(bad) + 1
        print(f"uploaded {len(photos)} photos to s3://{BUCKET}/photos/, produced {total} messages to {INPUT}")

        env = os.environ | s3.env() | {
            "CLIP_WORKER_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "CLIP_WORKER_KAFKA__GROUP_ID": GROUP,
            "CLIP_WORKER_KAFKA__INPUT_TOPIC": INPUT,
            "CLIP_WORKER_KAFKA__OUTPUT_TOPIC": OUTPUT,
            "CLIP_WORKER_KAFKA__DEAD_LETTER_TOPIC": DLQ,
            "CLIP_WORKER_S3__ENDPOINT_URL": s3.endpoint_url,
            "CLIP_WORKER_S3__REGION": "us-east-1",
            "CLIP_WORKER_S3__ALLOWED_SOURCES": f'["{BUCKET}/photos/"]',
            "CLIP_WORKER_S3__MAX_ATTEMPTS": "2",
            "CLIP_WORKER_MODEL__PRETRAINED": model.pretrained,
            "CLIP_WORKER_PIPELINE__METRICS_PORT": "0",
        }
        started = time.monotonic()
        print(f"running: python -m worker  (model {model.model_name}, pretrained {model.pretrained})", flush=True)
        worker = subprocess.Popen([sys.executable, "-m", "worker"], env=env)
        try:
            wait_until_committed(broker.bootstrap_servers, GROUP, INPUT, timeout=600)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(timeout=60)
            finally:
                if worker.poll() is None:  # it must not outlive the broker it talks to
                    worker.kill()
                    worker.wait()
        wall = time.monotonic() - started
        outputs = read_all(broker.bootstrap_servers, OUTPUT)
        dead = read_all(broker.bootstrap_servers, DLQ)
        _summary(model, outputs, dead, total=total, wall=wall, exit_code=code)
    return 0 if code == 0 and len(outputs) == len(requests) and len(dead) == 3 else 1


def _summary(model: ModelSettings, outputs: list, dead: list, *, total: int, wall: float, exit_code: int) -> None:  # type: ignore[type-arg]
    decoder = EmbeddingEncoder(field_name=model.output_field, model_name=model.model_name,
                               pretrained=model.pretrained, normalized=True)
    records = [decoder.decode(m.value()) for m in outputs]
    vectors = np.array([r[model.output_field] for r in records], dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    stamps = sorted(r["embedded_at"].timestamp() for r in records)  # timestamp-millis decodes as datetime
    span = max(stamps[-1] - stamps[0], 1e-3)
    print("\n=== clip-embedding-worker demo ===")
    print(f"records in:        {total}")
    print(f"records out:       {len(records)} to {OUTPUT}, {len(dead)} dead-lettered to {DLQ}")
    for message in dead:
        headers = dict(message.headers() or [])
        print(f"  dead letter:     {message.value()[:40]!r} at {headers['__connect.errors.stage'].decode()}: "
              f"{headers['__connect.errors.exception.class.name'].decode()}")
    print(f"embedding field:   {model.output_field}, dim {vectors.shape[1]}, float32")
    print(f"norms:             min {norms.min():.6f} max {norms.max():.6f}")
    print(f"throughput:        {len(records) / span:.1f} img/s while embedding ({wall:.1f} s wall, "
          "model load included)")
    query = 0
    similarity = vectors @ vectors[query]
    order = [i for i in np.argsort(-similarity) if i != query][:2]
    print(f"nearest to {records[query]['id']}:")
    for i in order:
        print(f"  {records[i]['id']:<40} cosine {similarity[i]:.4f}")
    if model.pretrained == "none":
        print("(random weights: neighbours mean little. "
              "Real weights: CLIP_WORKER_MODEL__PRETRAINED=<tag or checkpoint path>)")
    print(f"worker exit code:  {exit_code}")


if __name__ == "__main__":
    sys.exit(main())
