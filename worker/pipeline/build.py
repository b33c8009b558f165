"""One function wires the whole data path.

    Kafka input topic
        │  poll (main thread)                               ┌──────────────────────────────┐
        ▼                                                   │ dead letters (any stage):     │
    decode message ──────────── bad ──────────────────────▶ │ DLQ topic, or skip, or stop   │
        │                                                   └──────────────┬───────────────┘
        ▼                                                                  │
    fetch from S3          (fetch_workers threads, retries) ── fails ──────▶│
        ▼                                                                  │
    decode + preprocess    (preprocess_workers threads)     ── fails ──────▶│
        ▼                                                                  │
    batcher                (inference_batch_size or max_batch_wait_ms)     │
        ▼                                                                  │
    embed on the device    (one thread, <= 2 batches outstanding) ─ fails ─▶│
        ▼                                                                  ▼
    Avro encode ─▶ emitter ─▶ output topic             emitter ─▶ DLQ topic
        │  broker ack (at-least-once) or transaction (exactly-once)
        ▼
    offset tracker: watermark per partition ─▶ store_offsets / send_offsets_to_transaction
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer

from worker import registry
from worker.config import Settings
from worker.encoding import EmbeddingEncoder, embedding_schema
from worker.engine import Embedder
from worker.errors import ConfigError
from worker.kafka_config import consumer_config, is_cooperative, producer_config
from worker.metrics import Metrics, record_lag
from worker.pipeline.batching import Batcher
from worker.pipeline.deadletter import DeadLetterStage
from worker.pipeline.inference import InferenceStage
from worker.pipeline.offsets import OffsetTracker
from worker.pipeline.outputs import OutputStage
from worker.pipeline.produce import AckedEmitter, Emitter, InOrderEmitter, Outbox
from worker.pipeline.runtime import Runtime, Stages
from worker.pipeline.stages import ThreadStage, fetch_step, preprocess_step
from worker.source import S3Source, make_s3_client


def build_runtime(
    settings: Settings, *, embedder: Embedder, metrics: Metrics, s3_client: Any | None = None
) -> Runtime:
    kafka, pipeline, model = settings.kafka, settings.pipeline, settings.model
    if not settings.s3.allowed_sources:
        raise ConfigError("CLIP_WORKER_S3__ALLOWED_SOURCES", "empty: name the buckets the worker may read")
    consumer_conf = consumer_config(kafka, pipeline)
    consumer = Consumer(consumer_conf | {"stats_cb": lambda s: record_lag(metrics, s)})
    outbox = Outbox(Producer(producer_config(kafka, pipeline)))
    tracker = OffsetTracker()
    emitter: Emitter = (
        InOrderEmitter(outbox=outbox, tracker=tracker)
        if pipeline.delivery == "exactly-once"
        else AckedEmitter(outbox=outbox, tracker=tracker)
    )

    registry_client = None
    if pipeline.output_format == "confluent" or pipeline.schema_registry_url:
        if not pipeline.schema_registry_url:
            raise ConfigError("CLIP_WORKER_PIPELINE__SCHEMA_REGISTRY_URL", "confluent output needs a registry")
        registry_client = registry.registry_client(pipeline.schema_registry_url)
    serializer = None
    if pipeline.output_format == "confluent":
        serializer = registry.output_serializer(
            registry_client,
            embedding_schema(embedder.field_name),
            auto_register=pipeline.schema_registry_auto_register,
        )
    encoder = EmbeddingEncoder(
        field_name=embedder.field_name,
        model_name=model.model_name,
        pretrained=model.pretrained,
        normalized=model.normalize,
        registry_serializer=serializer,
    )

    dead_letters = DeadLetterStage(
        emitter=emitter,
        topic=kafka.dead_letter_topic,
        policy=pipeline.on_error,
        max_consecutive=pipeline.max_consecutive_failures,
        metrics=metrics,
    )
    output = OutputStage(
        emitter=emitter, encoder=encoder, topic=kafka.output_topic, dead_letters=dead_letters, metrics=metrics
    )
    inference = InferenceStage(embed=embedder.embed, next=output, failures=dead_letters, metrics=metrics)
    batcher = Batcher(batch_size=embedder.batch_size, max_wait=pipeline.max_batch_wait_ms / 1000, next=inference)
    preprocess = ThreadStage(
        name="preprocess",
        workers=model.preprocess_workers,
        step=preprocess_step(embedder.prepare),
        next=batcher,
        failures=dead_letters,
    )
    source = S3Source(client=s3_client or make_s3_client(settings.s3), settings=settings.s3)
    fetch = ThreadStage(
        name="fetch",
        workers=settings.s3.fetch_workers,
        step=fetch_step(source, metrics),
        next=preprocess,
        failures=dead_letters,
    )
    return Runtime(
        consumer=consumer,
        outbox=outbox,
        emitter=emitter,
        tracker=tracker,
        stages=Stages(
            fetch=fetch, preprocess=preprocess, batcher=batcher, inference=inference, dead_letters=dead_letters
        ),
        input_topic=kafka.input_topic,
        settings=pipeline,
        metrics=metrics,
        cooperative=is_cooperative(consumer_conf),
        confluent_decoder=registry.input_decoder(registry_client, kafka.input_topic) if registry_client else None,
    )
