"""`clip-worker enqueue` on the real broker and S3: a prefix becomes the stream's own input messages,
two exactly-once workers embed each object once (a read_committed reader sees it once), and batch mode
on the same prefix gives the same embeddings; a dry run produces nothing, local files are refused."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import read_all, written_count
from harness.workers import InProcessWorker
from tests.batch.conftest import FIELD, MODEL, cosine
from tests.conftest import Credentials
from tests.pipeline.conftest import ids_of
from worker.batch.commands import EmbedOptions, embed
from worker.batch.inputs import InputSource
from worker.cli import enqueue as enqueue_command
from worker.config import Settings
from worker.engine import Embedder
from worker.formats.encoding import EmbeddingEncoder
from worker.formats.messages import ImageRequest, S3Uri, decode_request


def enqueue(settings: Settings, *sources: str, dry_run: bool = False) -> int:
    """`clip-worker enqueue SOURCE... [--dry-run]` with these settings, through the command's own options."""
    parser = argparse.ArgumentParser()
    enqueue_command.add_arguments(parser)
    return enqueue_command.handle(settings, parser.parse_intermixed_args([*sources, *["--dry-run"] * dry_run]))


def test_an_enqueued_prefix_is_embedded_once_per_object_by_two_exactly_once_workers(
    kafka_broker: KafkaBroker, make_settings: Callable[..., Settings], s3_client: Any, s3_bucket: str,
    aws_credentials: Credentials, small_photos: list[tuple[str, bytes]], embedder: Embedder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, data in small_photos:
        s3_client.put_object(Bucket=s3_bucket, Key=f"in/{name}", Body=data)
        s3_client.put_object(Bucket=s3_bucket, Key=f"in-2/{name}", Body=data)  # not under the prefix
    settings = make_settings(s3_bucket, input_partitions=3, model=MODEL,
                             pipeline={"delivery": "exactly-once", "max_batch_wait_ms": 20})
    prefix, bootstrap = f"s3://{s3_bucket}/in", kafka_broker.bootstrap_servers
    uris = {f"{prefix}/{name}" for name, _ in small_photos}

    assert enqueue(settings, prefix) == 0
    assert capsys.readouterr().out.strip() == f"enqueued {len(uris)} to {settings.kafka.input_topic}, refused 0"
    messages = read_all(bootstrap, settings.kafka.input_topic)
    for message in messages:  # the stream's own JSON request, keyed by its id
        key = message.key().decode()  # type: ignore[union-attr]
        assert decode_request(message.value(), input_format="json") == ImageRequest(
            id=key, uri=S3Uri(s3_bucket, key.removeprefix(f"s3://{s3_bucket}/")))
    assert set(ids_of(messages)) == uris

    with InProcessWorker(settings, embedder=embedder, s3_client=s3_client), \
            InProcessWorker(settings, embedder=embedder, s3_client=s3_client):
        # Not wait_until_committed: with 8 keys, an input partition may stay empty and never be committed.
        read_all(bootstrap, settings.kafka.output_topic, expect=len(uris), timeout=60)
    outputs = read_all(bootstrap, settings.kafka.output_topic, read_committed=True)  # both stopped: all of it
    seen = ids_of(outputs)
    assert set(seen) == uris and max(seen.values()) == 1, "every object, each once"

    decoder = EmbeddingEncoder(field_name=FIELD, model_name="", pretrained="", normalized=True)
    stream = {record["id"]: np.array(record[FIELD]) for record in (decoder.decode(m.value()) for m in outputs)}
    batch_out = io.StringIO()
    embed(settings, EmbedOptions(sources=(InputSource.parse(prefix),)), embedder=embedder, s3_client=s3_client,
          stdout=batch_out, stderr=io.StringIO())
    batch = {row["id"]: np.array(row[FIELD]) for row in map(json.loads, batch_out.getvalue().splitlines())}
    assert batch.keys() == stream.keys()
    assert min(cosine(batch[i], stream[i]) for i in batch) >= 0.9999, "batch mode embeds as the stream does"


def test_a_dry_run_counts_and_produces_nothing_and_a_local_file_is_refused(
    make_settings: Callable[..., Settings], kafka_broker: KafkaBroker, s3_client: Any, s3_bucket: str,
    aws_credentials: Credentials, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="in/a.jpg", Body=b"x")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "local", "uri": "a.jpg"}) + "\n"
                        + json.dumps({"id": "remote", "uri": f"s3://{s3_bucket}/in/a.jpg"}) + "\n")
    settings = make_settings(s3_bucket)

    assert enqueue(settings, f"s3://{s3_bucket}/in", str(manifest), dry_run=True) == 1
    out, err = capsys.readouterr()
    assert out.strip() == f"would enqueue 2 to {settings.kafka.input_topic}, refused 1"
    assert err.strip() == "refused local: a local file: workers read S3 only"
    assert written_count(kafka_broker.bootstrap_servers, settings.kafka.input_topic) == 0
