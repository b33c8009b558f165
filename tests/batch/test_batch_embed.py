"""Batch mode end to end, in this process: the stream's stages on folders, manifests (local paths and
objects on the real S3 endpoint) and every output format, each embedding checked against the engine's
own; one row per input, an error row (never a vector) per failure; reruns resume, --overwrite starts
over, and an S3 that serves nobody stops the run instead of failing every input."""

from __future__ import annotations

import hashlib
import io
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from fastavro.schema import to_parsing_canonical_form

from tests.batch.conftest import BAD, FIELD, cosine
from tests.conftest import Credentials
from worker.batch.commands import EmbedOptions, embed
from worker.batch.formats import FormatName
from worker.batch.inputs import InputSource
from worker.batch.progress import Tally
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import FatalError
from worker.formats.encoding import embedding_schema

Row = dict[str, Any]


def run(settings: Settings, embedder: Embedder, *sources: str, s3_client: Any = None, **options: Any) -> tuple[
    Tally, list[Row], str
]:
    """embed() on `sources`; (tally, the rows printed to stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    tally = embed(settings, EmbedOptions(sources=tuple(InputSource.parse(s) for s in sources), **options),
                  embedder=embedder, s3_client=s3_client, stdout=stdout, stderr=stderr)
    return tally, [json.loads(line) for line in stdout.getvalue().splitlines()], stderr.getvalue()


def read_part(path: Path) -> list[Row]:
    """One part, read with the format's own reader (not this package's)."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".avro":
        with path.open("rb") as file:
            return [dict(record) for record in fastavro.reader(file)]  # type: ignore[call-overload]
    rows: list[Row] = pq.read_table(path).to_pylist()
    return rows


def read_output(folder: Path) -> tuple[list[Row], list[Row]]:
    """(embedded rows, error rows) of every part in `folder`."""
    def rows(pattern: str) -> list[Row]:
        return [row for path in sorted(folder.glob(pattern)) for row in read_part(path)]

    return rows("part-*"), rows("errors-*")


def test_a_folder_of_good_and_bad_images_gives_a_vector_per_photo_and_an_error_row_per_bad_file(
    batch_settings: Callable[..., Settings], embedder: Embedder, photo_folder: Path,
    small_photos: list[tuple[str, bytes]], reference: Callable[[bytes], np.ndarray],
) -> None:
    tally, rows, stderr = run(batch_settings(), embedder, str(photo_folder))
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == len(by_id) == len(small_photos) + len(BAD), "one row per input; README.txt is no input"
    for name, data in small_photos:
        row = by_id[str(photo_folder / name)]
        assert cosine(np.array(row[FIELD]), reference(data)) >= 0.9999
        assert row["source_uri"] == (photo_folder / name).as_uri() and row["input_topic"] == str(photo_folder)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
    for name, (_data, error) in BAD.items():
        row = by_id[str(photo_folder / "bad" / f"{name}.jpg")]
        assert (row["error_class"], row["stage"]) == (error.__name__, "decode-image"), name
        assert FIELD not in row, "a failed input never gets a vector"
    assert (tally.embedded, tally.failed, tally.skipped) == (len(small_photos), len(BAD), 0)
    assert stderr.startswith(f"embedded {len(small_photos)}, failed {len(BAD)} (")


@pytest.mark.parametrize("fmt", ["jsonl", "avro", "parquet"])
def test_each_format_is_written_in_whole_parts_and_reads_back_as_the_engines_embeddings(
    fmt: FormatName, batch_settings: Callable[..., Settings], embedder: Embedder, photo_folder: Path,
    small_photos: list[tuple[str, bytes]], reference: Callable[[bytes], np.ndarray], tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    run(batch_settings(), embedder, str(photo_folder), output=output, format=fmt, part_size=3)
    assert sorted(len(read_part(p)) for p in output.glob(f"part-*.{fmt}")) == [2, 3, 3]
    assert sorted(len(read_part(p)) for p in output.glob("errors-*.jsonl")) == [1, 3, 3, 3]
    assert not list(output.glob(".*")), "no temp file is left behind"
    embedded, errors = read_output(output)
    by_id = {row["id"]: row for row in embedded}
    for name, data in small_photos:
        assert cosine(np.array(by_id[str(photo_folder / name)][FIELD], dtype=np.float32), reference(data)) >= 0.9999
    assert {row["error_class"] for row in errors} == {error.__name__ for _data, error in BAD.values()}
    if fmt == "avro":
        with next(output.glob("part-*.avro")).open("rb") as file:
            schema = fastavro.reader(file).writer_schema
        assert to_parsing_canonical_form(schema) == to_parsing_canonical_form(
            fastavro.parse_schema(embedding_schema(FIELD))), "the stream's output schema"
    if fmt == "parquet":
        column = pq.read_table(next(output.glob("part-*.parquet"))).schema.field(FIELD)
        assert column.type == pa.list_(pa.float32(), 32), "a fixed-size list of float32"


# With decoder processes the S3 inputs are fetched and decoded in them, the local files on threads.
@pytest.mark.parametrize("preprocess_in", ["threads", "processes"])
def test_a_manifest_mixes_local_files_and_s3_objects_under_the_allowlist(
    preprocess_in: str, batch_settings: Callable[..., Settings], embedder: Embedder, s3_client: Any, s3_bucket: str,
    small_photos: list[tuple[str, bytes]], reference: Callable[[bytes], np.ndarray], tmp_path: Path,
    aws_credentials: Credentials,  # in the environment, for the decoder processes' own clients
) -> None:
    (name_a, photo_a), (name_b, photo_b) = small_photos[:2]
    s3_client.put_object(Bucket=s3_bucket, Key=f"in/{name_a}", Body=photo_a)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / name_b).write_bytes(photo_b)
    lines = [
        {"id": "s3-photo", "uri": f"s3://{s3_bucket}/in/{name_a}", "metadata": {"camera": "7"}},
        {"id": "local-photo", "uri": f"img/{name_b}"},
        {"id": "s3-missing", "uri": f"s3://{s3_bucket}/in/missing.jpg"},
        {"id": "s3-not-allowed", "uri": "s3://other-bucket/x.jpg"},
        {"id": "local-missing", "uri": "/no/such/file.jpg"},
        {"id": "s3-photo", "uri": f"s3://{s3_bucket}/in/{name_a}"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
    tally, rows, _ = run(batch_settings(s3_bucket, preprocess_in=preprocess_in), embedder, str(manifest),
                         s3_client=s3_client)
    by_id = {row["id"]: row for row in rows}
    assert cosine(np.array(by_id["s3-photo"][FIELD]), reference(photo_a)) >= 0.9999
    assert by_id["s3-photo"]["metadata"] == {"camera": "7"}
    assert by_id["s3-photo"]["source_uri"] == f"s3://{s3_bucket}/in/{name_a}"
    assert cosine(np.array(by_id["local-photo"][FIELD]), reference(photo_b)) >= 0.9999
    assert by_id["local-photo"]["input_offset"] == 1, "a manifest input's position is its line index"
    assert {i: by_id[i]["error_class"] for i in ("s3-missing", "s3-not-allowed", "local-missing")} == {
        "s3-missing": "SourceNotFound", "s3-not-allowed": "SourceForbidden", "local-missing": "SourceNotFound"}
    assert by_id[f"{manifest}#5"]["error"].startswith("id 's3-photo' repeats"), "a repeat is named by its place"
    assert by_id[f"{manifest}#6"]["error_class"] == "BadMessage" and by_id[f"{manifest}#6"]["source_uri"] is None
    assert (tally.embedded, tally.failed) == (2, 5)


def test_a_rerun_skips_what_the_output_holds_redoes_what_it_lacks_and_overwrite_starts_over(
    batch_settings: Callable[..., Settings], embedder: Embedder, photo_folder: Path, tmp_path: Path,
) -> None:
    output, settings = tmp_path / "out", batch_settings()
    total = len(list(photo_folder.rglob("*.jpg")))
    run(settings, embedder, str(photo_folder), output=output, part_size=4)
    parts = sorted(p.name for p in output.iterdir())

    again, _, stderr = run(settings, embedder, str(photo_folder), output=output, part_size=4)
    assert (again.embedded, again.failed, again.skipped) == (0, 0, total)
    assert sorted(p.name for p in output.iterdir()) == parts, "nothing new is written"
    assert "skipped 18 (already in the output)" in stderr

    lost = read_part(output / "part-00001.jsonl")
    (output / "part-00001.jsonl").unlink()
    redo, _, _ = run(settings, embedder, str(photo_folder), output=output, part_size=4)
    assert (redo.embedded, redo.skipped) == (len(lost), total - len(lost))
    embedded, errors = read_output(output)
    ids = [row["id"] for row in embedded + errors]
    assert len(ids) == len(set(ids)) == total, "every input once"

    fresh, _, _ = run(settings, embedder, str(photo_folder), output=output, part_size=4, overwrite=True)
    assert (fresh.skipped, fresh.embedded + fresh.failed) == (0, total)
    assert len(list(output.glob("part-*"))) == 2, "the old parts are gone"


def test_an_s3_that_serves_nobody_stops_the_run_instead_of_failing_every_input(
    batch_settings: Callable[..., Settings], embedder: Embedder, tmp_path: Path,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on: every connection is refused
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    down = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{closed_port}", region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y",
                        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"s3-{i}", "uri": f"s3://photos/{i}.jpg"}) + "\n" for i in range(5)))
    settings = batch_settings("photos", s3={"max_attempts": 2, "backoff_initial_seconds": 0.01})
    with pytest.raises(FatalError, match="SourceOutage"):
        run(settings, embedder, str(manifest), s3_client=down, output=tmp_path / "out")
    assert read_output(tmp_path / "out") == ([], []), "no input was failed for S3's outage: a rerun does them all"
