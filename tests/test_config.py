from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from worker.config import Settings, env_var, load_settings
from worker.errors import ConfigError
from worker.kafka.config import consumer_config, is_cooperative, producer_config

CONFIGURATION = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def every_env_var() -> list[str]:
    return [
        env_var(section, name)
        for section, field in Settings.model_fields.items()
        for name in field.annotation.model_fields  # type: ignore[union-attr]
    ]


def test_the_original_operators_parameters_keep_their_defaults() -> None:
    model = Settings().model
    assert (model.model_name, model.pretrained, model.device, model.normalize) == ("ViT-B-32", "openai", "auto", True)
    assert (model.feature_field_name, model.inference_batch_size, model.use_fp16, model.preprocess_workers) == (
        None, 32, True, 4)
    assert model.output_field == "image_clip_emb_vit_b_32"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_WORKER_MODEL__MODEL_NAME", "ViT-L-14")
    monkeypatch.setenv("CLIP_WORKER_S3__ALLOWED_SOURCES", '["photos", "raw/2026/"]')
    monkeypatch.setenv("CLIP_WORKER_KAFKA__SASL_PASSWORD", "hunter2")
    settings = load_settings()
    assert settings.model.output_field == "image_clip_emb_vit_l_14"
    assert settings.s3.allowed_sources == ("photos", "raw/2026/")
    assert settings.kafka.sasl_password == SecretStr("hunter2")
    assert "hunter2" not in repr(settings), "secrets never show in logs"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLIP_WORKER_MODEL__INFERENCE_BATCH_SIZE", "0"),
        ("CLIP_WORKER_MODEL__DEVICE", "gpu"),
        ("CLIP_WORKER_PIPELINE__DELIVERY", "at-most-once"),
        ("CLIP_WORKER_S3__MAX_ATTEMPTS", "many"),
    ],
)
def test_an_invalid_value_fails_naming_its_variable(variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == variable


def test_the_default_settings_let_the_device_decode() -> None:
    assert load_settings().model.device_decode_serves


@pytest.mark.parametrize(
    ("clash", "named"),
    [({"PREPROCESS_MODE": "exact"}, "preprocess_mode=exact"),
     ({"PREPROCESS_IN": "processes"}, "preprocess_in=processes"),
     ({"EXIF_ORIENTATION": "true"}, "exif_orientation=True")],
)
def test_decoding_on_the_gpu_fails_where_it_cannot_serve_and_auto_falls_back(
    clash: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in clash.items():
        monkeypatch.setenv(f"CLIP_WORKER_MODEL__{name}", value)
    assert load_settings().model.device_decode_serves is False  # so auto decodes on the CPU, even on CUDA
    for decode in ("auto", "cpu"):
        monkeypatch.setenv("CLIP_WORKER_MODEL__DECODE", decode)
        assert load_settings().model.decode == decode
    monkeypatch.setenv("CLIP_WORKER_MODEL__DECODE", "gpu")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == "CLIP_WORKER_MODEL__DECODE" and named in str(caught.value)


def test_the_configuration_reference_documents_every_setting() -> None:
    text = CONFIGURATION.read_text()
    assert [name for name in every_env_var() if f"`{name}`" not in text] == []


def test_kafka_clients_follow_the_delivery_contract() -> None:
    settings = Settings(kafka={"group_instance_id": "pod-0", "sasl_password": "s3cret",
                               "consumer_config": {"session.timeout.ms": "6000"}})
    consumer = consumer_config(settings.kafka, settings.pipeline)
    assert consumer["enable.auto.offset.store"] is False, "offsets are stored only for finished records"
    assert consumer["enable.auto.commit"] is True and consumer["group.instance.id"] == "pod-0"
    assert consumer["session.timeout.ms"] == "6000" and consumer["sasl.password"] == "s3cret"
    assert is_cooperative(consumer)
    producer = producer_config(settings.kafka, settings.pipeline)
    assert producer["message.timeout.ms"] == 0 and producer["acks"] == "all" and "transactional.id" not in producer

    exactly_once = Settings(kafka={"group_instance_id": "pod-0", "group_protocol": "consumer"},
                            pipeline={"delivery": "exactly-once"})
    consumer = consumer_config(exactly_once.kafka, exactly_once.pipeline)
    assert consumer["enable.auto.commit"] is False
    assert "partition.assignment.strategy" not in consumer, "KIP-848 forbids it on the client"
    assert is_cooperative(consumer)
    producer = producer_config(exactly_once.kafka, exactly_once.pipeline)
    assert producer["transactional.id"] == "clip-embedding-worker-pod-0", "stable, so a restart fences the old one"


def test_a_list_setting_that_is_not_json_fails_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_WORKER_S3__ALLOWED_SOURCES", "[photos")  # pydantic-settings names only "s3"
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == "CLIP_WORKER_S3__ALLOWED_SOURCES"


# Text an environment can hold: no NUL, no surrogates (os.environ cannot encode them).
env_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(variable=st.sampled_from(every_env_var()), value=st.one_of(env_text, st.sampled_from(
    ["[", "{", "[1, 2]", '{"a": 1}', "null", "-1", "1e999", "true", "[\"x\", 3]", ""])))
def test_any_value_of_any_setting_loads_or_fails_naming_that_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as env:
        env.setenv(variable, value)
        try:
            load_settings()
        except ConfigError as exc:
            assert exc.setting == variable, (variable, value, exc)
