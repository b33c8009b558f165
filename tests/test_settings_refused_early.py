"""Every bad setting a user is likely to make is refused at startup, in well under a second, before
the model loads or any client connects, naming the variable and how to fix it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.config import every_variable, load_settings, rules
from worker.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"CLIP_WORKER_S3__ALLOWED_SOURCES": '["photos"]'}

# (the environment beside GOOD, the variable the error names, words the message says)
MISTAKES = [
    ({"CLIP_WORKER_S3__ALLOWED_SOURCES": "[]"}, "CLIP_WORKER_S3__ALLOWED_SOURCES", "name the buckets"),
    ({"CLIP_WORKER_S3__ALLOWED_SOURCES": '["s3://photos"]'}, "CLIP_WORKER_S3__ALLOWED_SOURCES",
     "drop the scheme"),
    ({"CLIP_WORKER_S3__ALLOWED_SOURCES": '["photos//a"]'}, "CLIP_WORKER_S3__ALLOWED_SOURCES", "segments"),
    ({"CLIP_WORKER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "CLIP_WORKER_KAFKA__SASL_MECHANISM", "needs a mechanism"),
    ({"CLIP_WORKER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "CLIP_WORKER_KAFKA__SASL_MECHANISM": "GSSAPI"},
     "CLIP_WORKER_KAFKA__SASL_MECHANISM", "Kerberos"),
    ({"CLIP_WORKER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "CLIP_WORKER_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512"},
     "CLIP_WORKER_KAFKA__SASL_PASSWORD", "needs sasl_username and sasl_password"),
    ({"CLIP_WORKER_KAFKA__SECURITY_PROTOCOL": "TLS"}, "CLIP_WORKER_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
    ({"CLIP_WORKER_KAFKA__BOOTSTRAP_SERVERS": "kafka"}, "CLIP_WORKER_KAFKA__BOOTSTRAP_SERVERS", "host:port"),
    ({"CLIP_WORKER_KAFKA__OUTPUT_TOPIC": "images"}, "CLIP_WORKER_KAFKA__OUTPUT_TOPIC", "input topic too"),
    ({"CLIP_WORKER_KAFKA__INPUT_TOPIC": "my images"}, "CLIP_WORKER_KAFKA__INPUT_TOPIC", "no Kafka topic name"),
    ({"CLIP_WORKER_S3__ENDPOINT_URL": "minio:9000"}, "CLIP_WORKER_S3__ENDPOINT_URL", "http:// or https://"),
    ({"CLIP_WORKER_PIPELINE__SCHEMA_REGISTRY_URL": "registry"}, "CLIP_WORKER_PIPELINE__SCHEMA_REGISTRY_URL",
     "http:// or https://"),
    ({"CLIP_WORKER_PIPELINE__OUTPUT_FORMAT": "confluent"}, "CLIP_WORKER_PIPELINE__SCHEMA_REGISTRY_URL",
     "needs a registry"),
    ({"CLIP_WORKER_MODEL__PRETRAINED": "/nonexistent/weights.pt"}, "CLIP_WORKER_MODEL__PRETRAINED",
     "no such checkpoint file"),
    ({"CLIP_WORKER_MODEL__PRETRAINED": "/tmp"}, "CLIP_WORKER_MODEL__PRETRAINED", "is a folder"),
    ({"CLIP_WORKER_MODEL__MODEL_CONFIG_DIR": "/nonexistent/configs"}, "CLIP_WORKER_MODEL__MODEL_CONFIG_DIR",
     "is not a folder"),
    ({"CLIP_WORKER_MODEL__CACHE_DIR": "/etc/hostname"}, "CLIP_WORKER_MODEL__CACHE_DIR", "is a file"),
    ({"CLIP_WORKER_MODEL_DEVICE": "cuda"}, "CLIP_WORKER_MODEL_DEVICE", "did you mean CLIP_WORKER_MODEL__DEVICE"),
    ({"CLIP_WORKER_MODELL__DEVICE": "cuda"}, "CLIP_WORKER_MODELL__DEVICE", "did you mean CLIP_WORKER_MODEL__DEVICE"),
]

# One child process runs `clip-worker run` once per mistake: its exit code, its message, how long
# `main` took, and whether torch was imported by then (it would be, had the model begun to load).
PROBE = """
import io, json, os, sys, time, contextlib
from worker.cli import main
results = []
for env in json.loads(sys.argv[1]):
    saved = dict(os.environ)
    os.environ.update(env)
    err = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(err):
        code = main(["run"])
    results.append([code, err.getvalue(), time.monotonic() - started, "torch" in sys.modules])
    os.environ.clear(); os.environ.update(saved)
print(json.dumps(results))
"""


def test_each_likely_mistake_is_refused_in_under_a_second_before_the_model_loads() -> None:
    envs = [GOOD | env for env, _, _ in MISTAKES]
    clean = {k: v for k, v in __import__("os").environ.items() if not k.upper().startswith("CLIP_WORKER_")}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(envs)], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=120, check=True)
    for (env, variable, words), (code, message, seconds, torch_loaded) in zip(
            MISTAKES, json.loads(done.stdout), strict=True):
        assert code == 2, (env, message)
        assert variable in message and words in message, (env, message)
        assert message.count("\n") == 1, f"one line, no traceback: {message!r}"
        assert seconds < 1.0 and not torch_loaded, (env, seconds)


def test_a_sasl_setup_the_client_can_serve_loads_with_the_mechanism_upper_cased(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {"SECURITY_PROTOCOL": "sasl_ssl", "SASL_MECHANISM": "scram-sha-512",
                        "SASL_USERNAME": "worker", "SASL_PASSWORD": "s3cret"}.items():
        monkeypatch.setenv(f"CLIP_WORKER_KAFKA__{name}", value)
    kafka = load_settings().kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")


def test_an_unknown_variable_far_from_any_setting_points_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_WORKER_ZZZ", "1")
    with pytest.raises(ConfigError, match=r"see docs/configuration\.md") as caught:
        load_settings()
    assert caught.value.setting == "CLIP_WORKER_ZZZ"


names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", max_size=40)


@settings(max_examples=300, deadline=None)
@given(suffix=names)
def test_any_clip_worker_variable_is_a_setting_or_an_unknown_one_never_a_crash(suffix: str) -> None:
    variable = "CLIP_WORKER_" + suffix
    unknown = rules.unknown_variables({variable: "x"}, prefix="CLIP_WORKER_", known=every_variable())
    if variable in every_variable():
        assert unknown == []
    else:
        assert [name for name, _ in unknown] == [variable]
        closest = unknown[0][1]
        assert closest is None or closest in every_variable()


hostile = st.text(max_size=80)


@settings(max_examples=300, deadline=None)
@given(value=hostile)
def test_any_text_as_a_topic_broker_list_url_or_allowlist_entry_passes_or_says_why(value: str) -> None:
    for rule in (rules.kafka_topic, rules.bootstrap_servers, rules.http_url, rules.allowlist_entry):
        try:
            assert rule(value) == value
        except ValueError as exc:
            assert str(exc), rule
