"""One function wires the stream: the Kafka clients, the message decoder, the image path both drivers
share (images/path.py), the output, dead letters, outages, and the committer of the delivery mode.
docs/architecture.md draws the data path.

The consumer, the producer and what is bound to them (committer, backpressure, rebalancer) are one
generation, built by `generation()` here at start and again whenever a client has to be replaced
(clients.py); the rest is built once.

Every stage takes submit/poll/close (images/stages.py); the message decoder and the output finish their
work inside submit() and are Sinks. Every failure goes through failures.py.
"""

from __future__ import annotations

from typing import Any

import torch
from confluent_kafka import Consumer, Producer

from worker import __version__
from worker.config import Settings, require_stream_settings
from worker.engine import Embedder
from worker.errors import WorkerError
from worker.formats import registry
from worker.formats.encoding import EmbeddingEncoder, embedding_schema
from worker.images.budget import InFlightBytes
from worker.images.path import build_image_path
from worker.images.wake import Wake
from worker.kafka.boundary import create
from worker.kafka.config import consumer_config, is_cooperative, producer_config, property_settings
from worker.kafka.health import KafkaHealth
from worker.metrics import Metrics, record_lag
from worker.s3.reader import S3Reader, make_s3_client
from worker.stream.backpressure import Backpressure
from worker.stream.clients import Clients, Generation
from worker.stream.deadletter import DeadLetters
from worker.stream.decode import MessageDecoder
from worker.stream.delivery.acked import Committer, StoredOffsetsCommitter
from worker.stream.delivery.transactional import TransactionalCommitter
from worker.stream.failures import FailureRouter
from worker.stream.loop import Runtime
from worker.stream.offsets import OffsetTracker
from worker.stream.outage import OutageGate
from worker.stream.output import Output
from worker.stream.pipeline import Pipeline
from worker.stream.produce import AckedEmitter, Emitter, InOrderEmitter, Outbox
from worker.stream.rebalance import Rebalancer
from worker.stream.stop import Stop

_DEFAULT_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes


def build_runtime(
    settings: Settings, *, embedder: Embedder, metrics: Metrics, s3_client: Any | None = None,
    kafka_health: KafkaHealth | None = None,
) -> Runtime:
    kafka, pipeline, model = settings.kafka, settings.pipeline, settings.model
    require_stream_settings(settings)
    _describe(metrics, settings, embedder)
    health = kafka_health or KafkaHealth(
        bootstrap=kafka.bootstrap_servers, auth_failure_seconds=kafka.auth_failure_seconds, metrics=metrics
    )
    consumer_conf = consumer_config(kafka, pipeline)
    producer_conf = producer_config(kafka, pipeline)

    def new_consumer() -> Consumer:
        return create(Consumer, health.attach(consumer_conf | {"stats_cb": lambda s: record_lag(metrics, s)}),
                      what="consumer", settings=property_settings(kafka, role="consumer"))

    def new_producer() -> Producer:
        return create(Producer, health.attach(producer_conf), what="producer",
                      settings=property_settings(kafka, role="producer"))

    first_producer = [new_producer()]  # the outbox's until generation() takes it
    outbox = Outbox(
        first_producer[0], max_message_bytes=int(producer_conf.get("message.max.bytes", _DEFAULT_MESSAGE_MAX_BYTES))
    )
    tracker = OffsetTracker()
    budget = InFlightBytes(limit=pipeline.max_in_flight_bytes)
    exactly_once = pipeline.delivery == "exactly-once"
    emitter: Emitter = (InOrderEmitter if exactly_once else AckedEmitter)(outbox=outbox, tracker=tracker)

    registry_client = None
    if pipeline.schema_registry_url:
        registry_client = registry.registry_client(pipeline.schema_registry_url)
    serializer = None
    if pipeline.output_format == "confluent":
        schema = embedding_schema(embedder.field_name)
        if not pipeline.schema_registry_auto_register:
            registry.require_registered(registry_client, schema, subject=f"{kafka.output_topic}-value")
        serializer = registry.output_serializer(
            registry_client, schema, auto_register=pipeline.schema_registry_auto_register
        )
    encoder = EmbeddingEncoder(
        field_name=embedder.field_name,
        model_name=model.model_name,
        pretrained=model.pretrained,
        normalized=model.normalize,
        registry_serializer=serializer,
    )

    stop = Stop()
    health.stop_with(stop.report)  # a persisting authentication or TLS failure stops the loop
    dead_letters = DeadLetters(
        emitter=emitter, topic=kafka.dead_letter_topic, policy=pipeline.on_error,
        max_consecutive=pipeline.max_consecutive_failures, max_bytes=outbox.max_record_bytes,
        worker_id=str(consumer_conf["client.id"]), metrics=metrics, stop=stop,
    )
    outages = OutageGate(
        initial_wait=pipeline.outage_retry_initial_seconds, max_wait=pipeline.outage_retry_max_seconds,
        metrics=metrics,
    )
    router = FailureRouter(dead_letters=dead_letters, outages=outages, stop=stop)
    output = Output(
        emitter=emitter, outbox=outbox, encoder=encoder, topic=kafka.output_topic, failures=router,
        dead_letters=dead_letters, outages=outages, metrics=metrics, forward_headers=pipeline.forward_headers,
    )
    failures = router.sink()  # the image path's: a record it parks is redone from its first stage (bound below)
    wake = Wake()
    images = build_image_path(
        settings, embedder, s3=S3Reader(client=s3_client or make_s3_client(settings.s3), settings=settings.s3),
        next_step=output, failures=failures, metrics=metrics, wake=wake, budget=budget, encode=output.encode,
    )
    failures.resume_at(images.fetch)
    decode = MessageDecoder(
        input_format=pipeline.input_format,
        confluent=registry.input_decoder(registry_client, kafka.input_topic) if registry_client else None,
        next_step=images.fetch,
        failures=router,
    )

    floors = dead_letters.floors  # read-only: only the dead letters move the floors

    def generation() -> Generation:
        """New Kafka clients and what is bound to them: at start, and for each replacement (clients.py)."""
        consumer = new_consumer()
        try:
            producer = outbox.producer = first_producer.pop() if first_producer else new_producer()
        except WorkerError:
            consumer.close()  # no librdkafka handle is left for the interpreter's exit to destroy
            raise
        committer: Committer = (
            TransactionalCommitter(producer=producer, consumer=consumer, outbox=outbox, tracker=tracker, floors=floors,
                                   metrics=metrics, call_seconds=kafka.transaction_call_seconds,
                                   refused=health.due_refusal)
            if exactly_once
            else StoredOffsetsCommitter(consumer=consumer, tracker=tracker, floors=floors)
        )
        backpressure = Backpressure(
            consumer=consumer, max_in_flight=pipeline.max_in_flight, max_bytes=pipeline.max_in_flight_bytes,
            metrics=metrics,
        )
        rebalancer = Rebalancer(
            consumer=consumer, outbox=outbox, tracker=tracker, emitter=emitter, committer=committer,
            backpressure=backpressure, outages=outages, metrics=metrics, cooperative=is_cooperative(consumer_conf),
            flush_seconds=pipeline.shutdown_grace_seconds,
        )
        return Generation(consumer=consumer, producer=producer, committer=committer, backpressure=backpressure,
                          rebalancer=rebalancer)

    clients = Clients(
        build=generation, input_topic=kafka.input_topic, metrics=metrics,
        max_replacements=kafka.client_replacements_max, window_seconds=kafka.client_replacements_window_seconds,
    )
    return Runtime(
        clients=clients, outbox=outbox, tracker=tracker, budget=budget,
        pipeline=Pipeline(decode=decode, images=images.upstream, batcher=images.batcher, inference=images.inference,
                          dead_letters=dead_letters, outages=outages, wake=wake, stop=stop),
        settings=pipeline, metrics=metrics,
    )


def _describe(metrics: Metrics, settings: Settings, embedder: Embedder) -> None:
    device = embedder.device
    metrics.describe(
        version=__version__, model=settings.model.model_name, pretrained=settings.model.pretrained,
        device=str(device), dtype=str(embedder.dtype).removeprefix("torch."),
        device_memory=(lambda: torch.cuda.memory_allocated(device)) if device.type == "cuda" else None,
    )
