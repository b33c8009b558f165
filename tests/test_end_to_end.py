"""The whole worker on a real Kafka broker and a real S3 endpoint: messages in, embeddings out."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import produce_requests, read_all, wait_until_committed
from harness.models import TINY_MODEL_NAME, register_model_configs, tiny_model_settings
from harness.photos import photo_corpus
from harness.s3_server import S3Server
from harness.workers import InProcessWorker
from tests.conftest import Credentials
from worker.config import Settings
from worker.engine import Embedder
from worker.formats.encoding import EmbeddingEncoder
from worker.formats.messages import ImageRequest, S3Uri

N_MESSAGES = 60


def direct_open_clip_embeddings(checkpoint: Path, images: list[bytes]) -> np.ndarray:
    """What open_clip itself computes for these bytes: its model, its eval transform, no worker code."""
    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL_NAME, pretrained=str(checkpoint))
    model.eval()
    batch = torch.stack([preprocess(Image.open(io.BytesIO(data))) for data in images])
    with torch.no_grad():
        features = model.encode_image(batch)
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def test_every_message_gets_exactly_one_faithful_embedding_and_offsets_reach_the_end(
    kafka_broker: KafkaBroker,
    s3_server: S3Server,
    aws_credentials: Credentials,  # in the environment, for the decoder processes' own clients
    s3_client: Any,
    s3_bucket: str,
    topic_factory: Callable[..., str],
    tiny_checkpoint: Path,
) -> None:
    photos = photo_corpus()
    for name, data in photos:
        s3_client.put_object(Bucket=s3_bucket, Key=name, Body=data)
    requests = [
        ImageRequest(id=f"img-{i}", uri=S3Uri(s3_bucket, photos[i % len(photos)][0]), metadata={"n": str(i)})
        for i in range(N_MESSAGES)
    ]
    input_topic, output_topic, dlq = topic_factory(partitions=3), topic_factory(partitions=2), topic_factory()
    produce_requests(kafka_broker.bootstrap_servers, input_topic, requests)

    settings = Settings(
        model=tiny_model_settings(tiny_checkpoint, preprocess_mode="exact", inference_batch_size=8),
        kafka={"bootstrap_servers": kafka_broker.bootstrap_servers, "group_id": f"g-{input_topic}",
               "input_topic": input_topic, "output_topic": output_topic, "dead_letter_topic": dlq},
        s3={"endpoint_url": s3_server.endpoint_url, "allowed_sources": (s3_bucket,)},
        pipeline={"metrics_port": None},
    )
    embedder = Embedder.load(settings.model)
    with InProcessWorker(settings, embedder=embedder, s3_client=s3_client) as worker:
        committed = wait_until_committed(kafka_broker.bootstrap_servers, f"g-{input_topic}", input_topic)
        worker.stop()

    assert sum(committed.values()) == N_MESSAGES, "committed offsets are the end offsets of every partition"
    messages = read_all(kafka_broker.bootstrap_servers, output_topic, expect=N_MESSAGES)
    decoder = EmbeddingEncoder(field_name="image_clip_emb_tiny_vit", model_name=TINY_MODEL_NAME,
                               pretrained=str(tiny_checkpoint), normalized=True)
    records = {m.key().decode(): decoder.decode(m.value()) for m in messages}
    assert Counter(m.key().decode() for m in messages) == Counter(r.id for r in requests), "one output per id"
    assert read_all(kafka_broker.bootstrap_servers, dlq) == []

    expected = direct_open_clip_embeddings(tiny_checkpoint, [data for _, data in photos])
    for i, request in enumerate(requests):
        record = records[request.id]
        vector = np.asarray(record["image_clip_emb_tiny_vit"], dtype=np.float32)
        assert record["dim"] == embedder.dim == vector.shape[0] == 32
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
        assert float(vector @ expected[i % len(photos)]) >= 0.9999
        assert record["source_uri"] == str(request.uri) and record["metadata"] == request.metadata
        assert (record["input_topic"], record["model_name"]) == (input_topic, TINY_MODEL_NAME)
    assert worker.counter("clip_worker_records_embedded_total") == N_MESSAGES
