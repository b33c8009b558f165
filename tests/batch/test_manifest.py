"""Manifests are hostile input too: whatever a line holds, it gives an entry or that line's BadMessage,
never a crash, and one line's fault never costs another line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.batch.manifest import MAX_LINE_BYTES, ManifestEntry, parse_line, read_manifest
from worker.errors import BadMessage
from worker.formats.messages import S3Uri

FOLDER = Path("/data/manifests")


def line(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def assert_entry_or_refused(raw: bytes) -> ManifestEntry | None:
    try:
        entry = parse_line(raw, folder=FOLDER)
    except BadMessage as exc:
        str(exc).encode("utf-8")  # the reason goes into an error row
        return None
    for text in (entry.id, str(entry.location), *entry.metadata, *entry.metadata.values()):
        text.encode("utf-8")  # every field can be written to any output format
    assert entry.id
    return entry


def test_a_line_names_an_s3_object_or_a_local_path_relative_to_the_manifest() -> None:
    assert parse_line(line(id="a", uri="s3://photos/2026/a.jpg", metadata={"k": "v"}), folder=FOLDER) == (
        ManifestEntry(id="a", location=S3Uri("photos", "2026/a.jpg"), metadata={"k": "v"}))
    assert parse_line(line(id="b", uri="img/b.png"), folder=FOLDER).location == FOLDER / "img/b.png"
    assert parse_line(line(id="c", uri="/abs/c.png"), folder=FOLDER).location == Path("/abs/c.png")


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "malformed JSON"),
    (b"[]", "must be an object"),
    (line(uri="s3://photos/a.jpg"), "'id'"),
    (line(id="a"), "'uri'"),
    (line(id="a", uri=""), "local path"),
    (line(id="a", uri="https://example.com/a.jpg"), "local path"),
    (line(id="a", uri="file:///a.jpg"), "local path"),
    (line(id="a", uri="s3://Not_A_Bucket/a.jpg"), "s3://bucket/key"),
    (line(id="a", uri="a\u0000b.jpg"), "local path"),
    (b'{"id": "\\ud800", "uri": "a.jpg"}', "UTF-8"),
    (line(id="a", uri="a.jpg", metadata={"k": 1}), "metadata"),
])
def test_a_line_that_is_no_request_is_refused_saying_why(raw: bytes, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        parse_line(raw, folder=FOLDER)


def test_each_line_gives_its_entry_or_its_error_and_blank_and_over_long_lines_cost_nothing_else(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\n".join([
        line(id="a", uri="a.jpg"),
        b"   ",
        b'{"id": "long", "uri": "' + b"x" * MAX_LINE_BYTES + b'"}',
        b"{broken",
        line(id="b", uri="s3://photos/b.jpg"),
    ]))  # no newline at the end
    results = list(read_manifest(manifest))
    assert [result.index for result in results] == [0, 2, 3, 4], "blank lines are skipped, indexes are line indexes"
    assert results[0].entry == ManifestEntry(id="a", location=tmp_path / "a.jpg", metadata={})
    assert isinstance(results[1].entry, BadMessage) and "over" in str(results[1].entry)
    assert isinstance(results[2].entry, BadMessage)
    assert results[3].entry == ManifestEntry(id="b", location=S3Uri("photos", "b.jpg"), metadata={})


@given(st.binary(max_size=300))
def test_any_bytes_give_an_entry_or_a_bad_message(raw: bytes) -> None:
    assert_entry_or_refused(raw)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@given(
    st.one_of(st.text(max_size=20), JSON_VALUES),
    st.one_of(st.text(max_size=40), st.text(max_size=20).map(lambda key: f"s3://photos/{key}"), JSON_VALUES),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), JSON_VALUES),
)
def test_any_json_object_gives_an_entry_or_a_bad_message(image_id: object, uri: object, metadata: object) -> None:
    entry = assert_entry_or_refused(json.dumps({"id": image_id, "uri": uri, "metadata": metadata}).encode())
    if entry is not None:
        assert entry.id == image_id
        if isinstance(entry.location, S3Uri):
            assert str(entry.location) == uri
        else:
            assert entry.location == FOLDER / str(uri)


@given(st.lists(st.one_of(st.binary(max_size=80), st.builds(line, id=st.text(min_size=1, max_size=8),
                                                              uri=st.text(min_size=1, max_size=20))), max_size=20))
def test_a_manifest_of_any_lines_gives_one_result_per_line_that_is_not_blank(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder, "m.jsonl")
        manifest.write_bytes(b"\n".join(lines))
        results = list(read_manifest(manifest))
    expected = [i for i, raw in enumerate(b"\n".join(lines).split(b"\n")) if raw.strip()]
    assert [result.index for result in results] == expected
    for result in results:
        assert isinstance(result.entry, ManifestEntry | BadMessage)
