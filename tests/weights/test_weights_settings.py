"""model.pretrained as s3:// and model.weights_sha256 from hostile input: a ConfigError naming the variable,
never another exception; well-formed values come through as given (the digest in lower case)."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.config import load_settings, parse_weights_uri, rules
from worker.errors import ConfigError

FUZZ = settings(max_examples=300, deadline=None)
hostile = st.text() | st.builds(str.__add__, st.sampled_from(["s3://", "S3://", "s3:/", "s3://b/", "s3://bkt/"]),
                                st.text())


@FUZZ
@given(hostile)
def test_a_pretrained_value_is_accepted_or_refused_naming_its_variable_never_crashing(value: str) -> None:
    try:
        loaded = load_settings(model={"pretrained": value})
    except ConfigError as exc:
        assert exc.setting == "CLIP_WORKER_MODEL__PRETRAINED"
        missing_file = rules.names_a_file(value) and not rules.expanded(value.strip()).is_file()
        assert value.strip().lower().startswith("s3:") or missing_file
    else:
        assert loaded.model.pretrained == value
        assert not value.strip().lower().startswith("s3:") or parse_weights_uri(value.strip()) is not None


@FUZZ
@given(st.text(alphabet=string.ascii_lowercase + string.digits + ".-", min_size=3, max_size=63),
       st.text(alphabet=string.printable, min_size=1))
def test_an_s3_uri_parses_to_its_bucket_and_key_exactly_when_both_are_well_formed(bucket: str, key: str) -> None:
    value = f"s3://{bucket}/{key}"
    parsed = parse_weights_uri(value)
    wellformed = bucket[0].isalnum() and bucket[-1].isalnum() and key.isprintable() and not key.endswith("/")
    assert parsed == ((bucket, key) if wellformed else None)


@FUZZ
@given(st.text() | st.text(alphabet="0123456789abcdefABCDEF", min_size=62, max_size=66))
def test_a_weights_sha256_is_64_hex_digits_or_a_config_error_naming_its_variable(value: str) -> None:
    try:
        loaded = load_settings(model={"weights_sha256": value})
    except ConfigError as exc:
        assert exc.setting == "CLIP_WORKER_MODEL__WEIGHTS_SHA256"
    else:
        assert loaded.model.weights_sha256 == value.strip().lower()
        assert len(value.strip()) == 64 and all(c in string.hexdigits for c in value.strip())
