"""What the batch commands read: folders by image extension, files as named, S3 prefixes by whole
segments (on the real S3 endpoint), each input once, and arguments checked before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.batch.inputs import BatchInput, InputError, InputSource, read_inputs
from worker.config import S3Settings
from worker.errors import BadMessage, ConfigError, FatalError
from worker.formats.messages import S3Uri
from worker.formats.positions import BatchPosition
from worker.s3.reader import S3Reader

NO_S3 = S3Reader(client=None, settings=S3Settings())


def inputs(*arguments: str, s3: S3Reader = NO_S3) -> list[BatchInput | InputError]:
    return list(read_inputs([InputSource.parse(a) for a in arguments], s3=s3))


def test_a_folder_gives_its_image_files_recursively_in_sorted_order_whatever_the_case_of_the_extension(
    tmp_path: Path,
) -> None:
    for name in ("b/2.PNG", "a.jpg", "b/1.webp", "c/deep/3.tiff", "notes.txt", "b/archive.zip"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    got = inputs(str(tmp_path))
    assert [item.id for item in got] == [str(tmp_path / n) for n in ("a.jpg", "b/1.webp", "b/2.PNG", "c/deep/3.tiff")]
    assert [item.position for item in got] == [BatchPosition(str(tmp_path), i) for i in range(4)]
    first = got[0]
    assert isinstance(first, BatchInput) and first.uri == (tmp_path / "a.jpg").as_uri()


def test_a_named_file_is_taken_whatever_its_extension_and_a_repeated_id_gets_an_error_row_of_its_own(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    got = inputs(str(tmp_path / "notes.txt"), str(tmp_path / "a.jpg"), str(tmp_path))
    assert [item.id for item in got] == [str(tmp_path / "notes.txt"), str(tmp_path / "a.jpg"), f"{tmp_path}#0"]
    repeat = got[2]
    assert isinstance(repeat, InputError) and isinstance(repeat.error, BadMessage)
    assert "repeats" in repeat.error.reason and repeat.source_uri == (tmp_path / "a.jpg").as_uri()


@pytest.mark.parametrize("argument", ["/no/such/folder", "s3://", "s3://Bad_Bucket/x"])
def test_a_source_that_does_not_exist_or_is_no_bucket_is_refused_before_anything_runs(argument: str) -> None:
    with pytest.raises(ConfigError, match="SOURCE"):
        InputSource.parse(argument)


def test_an_s3_prefix_lists_its_objects_by_whole_segments_and_leaves_folder_keys_out(
    s3_client: Any, s3_bucket: str
) -> None:
    for key in ("raw/a.jpg", "raw/sub/b.jpg", "raw/", "raw-2/c.jpg", "top.jpg"):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    s3 = S3Reader(client=s3_client, settings=S3Settings(allowed_sources=(s3_bucket,)))
    raw = inputs(f"s3://{s3_bucket}/raw", s3=s3)
    assert [item.id for item in raw] == [f"s3://{s3_bucket}/raw/a.jpg", f"s3://{s3_bucket}/raw/sub/b.jpg"]
    assert [item.position for item in raw] == [BatchPosition(f"s3://{s3_bucket}/raw", i) for i in (0, 1)]
    whole = inputs(f"s3://{s3_bucket}", s3=s3)
    assert [item.location for item in whole if isinstance(item, BatchInput)] == [
        S3Uri(s3_bucket, key) for key in ("raw-2/c.jpg", "raw/a.jpg", "raw/sub/b.jpg", "top.jpg")]


def test_a_listing_that_fails_stops_the_run_naming_the_prefix(s3_client: Any) -> None:
    s3 = S3Reader(client=s3_client, settings=S3Settings(allowed_sources=("no-such-bucket",)))
    with pytest.raises(FatalError, match=r"listing s3://no-such-bucket/x failed: SourceNotFound"):
        inputs("s3://no-such-bucket/x", s3=s3)
