"""The Helm chart against the worker it deploys.

Two halves:
- static: every CLIP_WORKER_* name in the chart is a real setting of worker.config.Settings, the
  chart's `config:` tree covers exactly the settings it does not set itself, with the worker's defaults;
  values.schema.json types every key of values.yaml, refuses unknown ones, and types `config:` as
  the worker's settings do;
- rendered: `helm template` (default values and ci/all-features-values.yaml), asserting on the
  objects, and loading the rendered environment through worker.config.load_settings.

The rendering tests need a helm binary at .cache/bin/helm (or $HELM_BIN). They fail, not skip,
without one; HELM_PROVISION below is the command that builds it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from worker.config import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings, env_var, load_settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "clip-embedding-worker"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
# Only the values the chart requires (Kafka brokers, S3 sources): the base of every other render here.
MINIMAL = CHART / "ci" / "minimal-values.yaml"
SCHEMA = CHART / "values.schema.json"
HELM = Path(os.environ.get("HELM_BIN") or ROOT / ".cache" / "bin" / "helm")
HELM_VERSION = "v3.22.0"
HELM_PROVISION = f"GOBIN=$PWD/.cache/bin GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"

RELEASE = "rel"
NAMESPACE = "ml"
FULLNAME = f"{RELEASE}-clip-embedding-worker"

# Settings the chart sets itself (not from `config:`): the pod name, a secretKeyRef, the cache mount.
CHART_OWNED = {("kafka", "group_instance_id"), ("kafka", "sasl_password"), ("model", "cache_dir")}

ENV_NAME = re.compile(r"\b" + ENV_PREFIX + r"[A-Z0-9_]*[A-Z0-9]\b")


# -- the worker's settings tree ---------------------------------------------------------------


def _sections() -> dict[str, type[BaseModel]]:
    sections = {}
    for name, field in Settings.model_fields.items():
        assert isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel), name
        sections[name] = field.annotation
    return sections


def _settings_paths() -> set[tuple[str, str]]:
    return {(section, key) for section, model in _sections().items() for key in model.model_fields}


def _default(section: str, key: str) -> Any:
    return _sections()[section].model_fields[key].get_default(call_default_factory=True)


def _comparable(value: Any) -> Any:
    """Python defaults and YAML values side by side: tuples as lists, paths as strings."""
    if isinstance(value, tuple):
        return [_comparable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _chart_files() -> list[Path]:
    return sorted(path for path in CHART.rglob("*") if path.is_file())


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    return schema


# -- static checks (no helm needed) -----------------------------------------------------------


def test_every_env_var_name_in_the_chart_is_a_setting() -> None:
    sections = _sections()
    found: dict[str, set[str]] = {}
    for path in _chart_files():
        for name in ENV_NAME.findall(path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(CHART)))
    assert found, "no CLIP_WORKER_* names found in the chart: the scan is broken"
    # The names the templates spell out literally must be among them, or this test checks nothing.
    literal = {env_var(*path) for path in CHART_OWNED}
    assert literal <= found.keys(), f"templates no longer name {sorted(literal - found.keys())}"

    wrong = {}
    for name, files in found.items():
        parts = name[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER)
        if len(parts) != 2:
            wrong[name] = (files, "not CLIP_WORKER_<SECTION>__<NAME>")
            continue
        section, key = (part.lower() for part in parts)
        if section not in sections:
            wrong[name] = (files, f"no settings section {section!r}; sections: {sorted(sections)}")
        elif key not in sections[section].model_fields:
            wrong[name] = (files, f"{section} has no setting {key!r}")
    assert not wrong, f"env var names in the chart that worker.config does not read: {wrong}"


def test_values_config_covers_exactly_the_settings_the_chart_does_not_set() -> None:
    config = _values()["config"]
    in_values = {(section, key) for section, fields in config.items() for key in fields}
    paths = _settings_paths()
    assert paths >= CHART_OWNED, f"chart-owned settings missing from worker.config: {CHART_OWNED - paths}"
    unknown = in_values - paths
    assert not unknown, f"values.yaml config keys that are not settings: {sorted(unknown)}"
    owned = in_values & CHART_OWNED
    assert not owned, f"values.yaml config must not hold chart-owned settings: {sorted(owned)}"
    missing = paths - CHART_OWNED - in_values
    assert not missing, (
        f"settings not exposed in helm/clip-embedding-worker/values.yaml `config:` "
        f"(add them with the worker's default): {sorted(missing)}"
    )


def test_values_config_defaults_equal_the_settings_defaults() -> None:
    config = _values()["config"]
    differ = {
        f"{section}.{key}": (value, _comparable(_default(section, key)))
        for section, fields in config.items()
        for key, value in fields.items()
        if value != _comparable(_default(section, key))
    }
    assert not differ, f"values.yaml defaults (left) differ from worker.config (right): {differ}"


def test_model_section_keeps_the_original_operator_names_and_defaults() -> None:
    # The operator's parameters, by name and default; the chart must expose all of them.
    operator = {
        "model_name": "ViT-B-32",
        "pretrained": "openai",
        "device": "auto",
        "normalize": True,
        "feature_field_name": None,
        "inference_batch_size": 32,
        "use_fp16": True,
        "preprocess_workers": 4,
    }
    model = _values()["config"]["model"]
    assert {key: model.get(key, "<missing>") for key in operator} == operator
    assert {key: _default("model", key) for key in operator} == operator
    assert model["preprocess_mode"] == _default("model", "preprocess_mode") == "fast"


def _schema_gaps(values: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Where values.yaml and the schema disagree on keys: untyped keys, open objects, stale properties."""
    if not isinstance(values, dict) or "properties" not in schema:
        return []  # a leaf, or a free-form object (a Kubernetes object passed through as it is)
    gaps = []
    if schema.get("additionalProperties") is not False:
        gaps.append(f"{path or '/'}: additionalProperties is not false, so a misspelt key would pass")
    properties = schema["properties"]
    for key, value in values.items():
        if key not in properties:
            gaps.append(f"{path}/{key}: in values.yaml, not in the schema")
        else:
            gaps.extend(_schema_gaps(value, properties[key], f"{path}/{key}"))
    # The schema may know keys values.yaml does not hold: Helm's `global`, and the settings the chart
    # owns (allowed through so that the chart's own check refuses them with a message that says why).
    allowed_extra = {"/global"} | {f"/config/{section}/{key}" for section, key in CHART_OWNED}
    gaps.extend(
        f"{path}/{key}: in the schema, not in values.yaml"
        for key in properties
        if key not in values and f"{path}/{key}" not in allowed_extra
    )
    return gaps


def test_values_schema_types_every_key_of_values_yaml_and_closes_every_object() -> None:
    schema = _schema()
    # Helm supports JSON Schema draft-07 (and later drafts); draft-07 is what this file is written to.
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert _schema_gaps(_values(), schema, "") == []
    # Every leaf of values.yaml has a type (or an enum): the schema is not a list of names.
    untyped = []

    def walk(values: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(values, dict) and "properties" in node:
            for key, value in values.items():
                walk(value, node["properties"][key], f"{path}/{key}")
        elif "type" not in node and "enum" not in node:
            untyped.append(path)

    walk(_values(), schema, "")
    assert untyped == []


def _settings_schema(section: str, key: str) -> dict[str, Any]:
    """What the chart's schema must say of one setting, from pydantic's own JSON schema of it."""
    full = Settings.model_json_schema()
    model = full["$defs"][full["properties"][section]["$ref"].rsplit("/", 1)[1]]
    expected: dict[str, Any] = {}
    types = []
    for variant in model["properties"][key].get("anyOf", [model["properties"][key]]):
        types.append(variant["type"])
        for keyword in ("enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "items"):
            if keyword in variant:
                expected[keyword] = variant[keyword]
        if "additionalProperties" in variant:
            expected["additionalProperties"] = variant["additionalProperties"]
    expected["type"] = types[0] if len(types) == 1 else types
    return expected


def test_values_schema_types_the_config_section_as_the_worker_settings_do() -> None:
    config = _schema()["properties"]["config"]
    assert config["additionalProperties"] is False
    assert config["properties"].keys() == _sections().keys(), "one schema object per settings section"
    differ: dict[str, Any] = {}
    for section, model in _sections().items():
        schema = config["properties"][section]
        assert schema["additionalProperties"] is False, section
        for key in model.model_fields:
            expected = _settings_schema(section, key)
            if (section, key) == ("pipeline", "metrics_port"):
                # The one deliberate difference: the worker may run without a health server, the chart may
                # not (probes and the Service hang on it), so the chart's schema refuses null.
                expected = {"type": "integer", "minimum": 1, "maximum": 65535}
            actual = schema["properties"].get(key)
            if actual is None or {k: v for k, v in actual.items() if k != "description"} != expected:
                differ[f"config.{section}.{key}"] = {"schema has": actual, "expected": expected}
            elif (section, key) not in CHART_OWNED | {("pipeline", "metrics_port")} and (
                actual.get("description") != model.model_fields[key].description
            ):
                # The description is worker/config/'s, word for word (editors show it); the chart-owned
                # settings and metrics_port say what the chart does with them instead.
                differ[f"config.{section}.{key}"] = {
                    "schema's description": actual.get("description"),
                    "worker/config/'s": model.model_fields[key].description,
                }
        differ.update({f"config.{section}.{key}": "not a setting" for key in schema["properties"].keys()
                       - model.model_fields.keys()})
    # The message is the JSON to put in values.schema.json (add a "description" too).
    assert not differ, f"values.schema.json disagrees with worker.config:\n{json.dumps(differ, indent=2)}"


# -- helm --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The helm binary and a private HOME for it; fails (no skips in this project) when absent."""
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.fail(
            f"helm not found at {HELM}. Provision it from the repository root (Go >= 1.26, ~2.5 min cold, "
            f"~10 s with a warm Go cache):\n    {HELM_PROVISION}",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    version = subprocess.run([str(HELM), "version", "--short"], capture_output=True, text=True, env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("v3."), (version.stdout, version.stderr)
    return {"bin": str(HELM), "env": env}


def _helm(helm: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm["bin"], *args], capture_output=True, text=True, env=helm["env"], timeout=120)


def _render(helm: dict[str, Any], *args: str, required: bool = True) -> dict[tuple[str, str], dict[str, Any]]:
    """`helm template` into {(kind, name): object}; with ci/minimal-values.yaml first unless not `required`."""
    base = ["-f", str(MINIMAL)] if required else []
    done = _helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *base, *args)
    assert done.returncode == 0, f"helm template {args} failed:\n{done.stderr}"
    objects = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"rendered twice: {key}"
            objects[key] = doc
    return objects


def _render_fails(helm: dict[str, Any], *args: str, required: bool = True) -> str:
    base = ["-f", str(MINIMAL)] if required else []
    done = _helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *base, *args)
    assert done.returncode != 0, f"helm template {args} rendered, but the chart should refuse:\n{done.stdout}"
    return done.stderr


def _one(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for (k, _), obj in objects.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, got {[name for (k, name) in objects if k == kind]}"
    return found[0]


def _worker(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    container: dict[str, Any] = containers[0]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [entry["name"] for entry in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env entries: {names}"
    return {entry["name"]: entry for entry in container["env"]}


def _settings_from_pod(
    objects: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch, secrets: dict[tuple[str, str], str]
) -> Settings:
    """What the worker in pod -0 would read: the ConfigMap (envFrom), then the env list (which wins)."""
    sts = _one(objects, "StatefulSet")
    return _settings_from_container(objects, _worker(sts), f"{sts['metadata']['name']}-0", monkeypatch, secrets)


def _settings_from_container(
    objects: dict[tuple[str, str], dict[str, Any]],
    container: dict[str, Any],
    pod_name: str,
    monkeypatch: pytest.MonkeyPatch,
    secrets: dict[tuple[str, str], str],
) -> Settings:
    """What `container` (in a pod named `pod_name`) would read through worker.config.load_settings."""
    environment: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source and source["configMapRef"]["name"] == FULLNAME:
            environment.update(objects[("ConfigMap", FULLNAME)]["data"])
    for name, entry in _env(container).items():
        if not name.startswith(ENV_PREFIX):
            continue
        if "value" in entry:
            environment[name] = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", entry
            environment[name] = pod_name
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            environment[name] = secrets[(ref["name"], ref["key"])]
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        assert isinstance(value, str), f"{name}: env values must be strings, got {value!r}"
        monkeypatch.setenv(name, value)
    return load_settings()


def test_every_ci_values_file_lints_and_renders(helm: dict[str, Any]) -> None:
    files = sorted((CHART / "ci").glob("*.yaml"))
    assert {MINIMAL, ALL_FEATURES} <= set(files)
    for values in files:
        done = _helm(helm, "lint", "--strict", str(CHART), "-f", str(values))
        assert done.returncode == 0 and "0 chart(s) failed" in done.stdout, (values.name, done.stdout, done.stderr)
        assert ("StatefulSet", FULLNAME) in _render(helm, "-f", str(values), required=False), values.name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "config.kafka.bootstrap_servers is required"),
        (["--set", "config.kafka.bootstrap_servers=127.0.0.1:9092"], "config.kafka.bootstrap_servers is required"),
        (["--set", "config.kafka.bootstrap_servers="], "config.kafka.bootstrap_servers is required"),
        (["--set", "config.kafka.bootstrap_servers=kafka:9092"], "config.s3.allowed_sources is required"),
        (["--set", "config.kafka.bootstrap_servers=kafka:9092", "--set-json", "config.s3.allowed_sources=[]"],
         "config.s3.allowed_sources is required"),
    ],
)
def test_rendering_without_the_brokers_or_the_s3_sources_fails_with_a_message_naming_the_value(
    helm: dict[str, Any], args: list[str], message: str
) -> None:
    error = _render_fails(helm, *args, required=False)
    assert message in error and "e.g. --set" in error, "the message says how to set it"


def test_default_render(helm: dict[str, Any]) -> None:
    objects = _render(helm)
    kinds = sorted(kind for kind, _ in objects)
    # The Pod is the `helm test` hook (helm template renders hooks too).
    assert kinds == ["ConfigMap", "Pod", "PodDisruptionBudget", "Service", "ServiceAccount", "StatefulSet"], kinds

    sts = objects[("StatefulSet", FULLNAME)]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    container = _worker(sts)
    env = _env(container)
    port = Settings().pipeline.metrics_port

    assert spec["replicas"] == 1
    assert spec["podManagementPolicy"] == "Parallel"
    # GPU.
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Probes: the worker's paths on its metrics port.
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {
        "startupProbe": {"path": "/readyz", "port": "metrics"},
        "livenessProbe": {"path": "/livez", "port": "metrics"},
        "readinessProbe": {"path": "/readyz", "port": "metrics"},
    }
    # Static membership: the group instance id is the pod name.
    assert env[env_var("kafka", "group_instance_id")]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env_var("kafka", "sasl_password") not in env
    # Shutdown grace.
    assert pod["terminationGracePeriodSeconds"] > Settings().pipeline.shutdown_grace_seconds
    # Non-root, read-only root, writable /tmp, memory /dev/shm and the model cache.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    # The weights are the image's (modelCache.type image): no cache volume, and model.cache_dir is the
    # image's own; the libraries' other caches go to the writable /tmp.
    assert env_var("model", "cache_dir") not in env and "model-cache" not in volumes
    for name in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        assert env[name]["value"].startswith("/tmp/"), name
    # Service: headless, governing the StatefulSet, selecting its pods, carrying the metrics port.
    service = objects[("Service", f"{FULLNAME}-headless")]
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (
        service["spec"]["selector"],
        spec["selector"]["matchLabels"],
        objects[("PodDisruptionBudget", FULLNAME)]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items(), selector
    assert pod["serviceAccountName"] == FULLNAME and ("ServiceAccount", FULLNAME) in objects
    assert sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_default_render_loads_as_the_worker_defaults(helm: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _settings_from_pod(_render(helm), monkeypatch, secrets={})
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    defaults = Settings()
    assert loaded.kafka.group_instance_id == f"{FULLNAME}-0"
    assert loaded.model.cache_dir is None, "the image's CLIP_WORKER_MODEL__CACHE_DIR applies"
    assert loaded.kafka.sasl_password is None
    # The two values an install must give (ci/minimal-values.yaml), as given.
    minimal = yaml.safe_load(MINIMAL.read_text())["config"]
    assert loaded.kafka.bootstrap_servers == minimal["kafka"]["bootstrap_servers"]
    assert list(loaded.s3.allowed_sources) == minimal["s3"]["allowed_sources"]
    owned = {"kafka": {"group_instance_id", "bootstrap_servers"}, "model": {"cache_dir"}, "s3": {"allowed_sources"}}
    assert loaded.model_dump(exclude=owned) == defaults.model_dump(exclude=owned)


def test_the_device_journal_is_on_an_empty_dir_so_it_outlives_a_restart_of_the_container(
    helm: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A container's own filesystem is new after a restart; a pod's emptyDir is not. The journal is what
    # turns a crash of the GPU's JPEG decoder into one restart instead of a loop (device_journal.py).
    objects = _render(helm)
    journal = _settings_from_pod(objects, monkeypatch, secrets={}).model.decode_journal_dir
    pod = _one(objects, "StatefulSet")["spec"]["template"]["spec"]
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounts = [Path(m["mountPath"]) for m in _worker(_one(objects, "StatefulSet"))["volumeMounts"]
              if m["name"] in empty_dirs]
    assert any(journal.is_relative_to(mount) for mount in mounts), (journal, mounts)


def test_all_features_render(helm: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    objects = _render(helm, "-f", str(ALL_FEATURES))
    values = yaml.safe_load(ALL_FEATURES.read_text())
    sts = objects[("StatefulSet", FULLNAME)]
    pod = sts["spec"]["template"]["spec"]
    container = _worker(sts)
    env = _env(container)

    # KEDA owns the replica count.
    assert "replicas" not in sts["spec"]
    # The SASL password only by reference, never as a value, anywhere.
    password = env[env_var("kafka", "sasl_password")]
    assert password == {
        "name": env_var("kafka", "sasl_password"),
        "valueFrom": {"secretKeyRef": {"name": "clip-worker-kafka", "key": "sasl-password"}},
    }
    assert env[env_var("kafka", "sasl_username")]["valueFrom"]["secretKeyRef"]["key"] == "sasl-username"
    config_map = objects[("ConfigMap", FULLNAME)]["data"]
    assert not any("PASSWORD" in name for name in config_map)
    assert env[env_var("kafka", "group_instance_id")]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert {"secretRef": {"name": "clip-worker-s3"}} in container["envFrom"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["runtimeClassName"] == "nvidia"

    # The worker reads it all back as configured.
    settings = _settings_from_pod(
        objects,
        monkeypatch,
        secrets={("clip-worker-kafka", "sasl-password"): "s3cret", ("clip-worker-kafka", "sasl-username"): "clip"},
    )
    assert settings.model.model_name == "ViT-L-14"
    assert settings.model.half_dtype == "bfloat16"
    assert settings.model.max_image_pixels == 100_000_000
    assert settings.model.cache_dir == Path("/cache/open_clip")
    assert settings.kafka.group_instance_id == f"{FULLNAME}-0"
    assert settings.kafka.sasl_password is not None and settings.kafka.sasl_password.get_secret_value() == "s3cret"
    assert settings.kafka.sasl_username == "clip"
    assert settings.kafka.client_config == {
        "socket.keepalive.enable": "true", "ssl.ca.location": "/etc/kafka-ca/ca.crt"}, "kafkaAuth.caSecret, merged"
    assert settings.kafka.consumer_config == {"session.timeout.ms": "120000"}
    assert settings.s3.allowed_sources == ("photos", "raw/2026/")
    assert settings.s3.backoff_initial_seconds == 0.25
    assert settings.pipeline.delivery == "exactly-once"
    assert settings.pipeline.shutdown_grace_seconds == 55.5
    assert settings.pipeline.metrics_port == 9500

    # Grace, port.
    assert pod["terminationGracePeriodSeconds"] == math.ceil(55.5) + 15
    assert container["ports"][0]["containerPort"] == 9500
    service = objects[("Service", f"{FULLNAME}-headless")]
    assert service["spec"]["ports"][0]["port"] == 9500

    # Model cache: one claim per pod.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "model-cache"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert "model-cache" not in {v["name"] for v in pod["volumes"]}
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Delete"}

    # KEDA: the StatefulSet, on the worker's own group, topic and brokers.
    scaled = objects[("ScaledObject", FULLNAME)]
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": FULLNAME}
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 12)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(value, str) for value in meta.values()), meta
    assert meta["bootstrapServers"] == config_map[env_var("kafka", "bootstrap_servers")]
    assert meta["consumerGroup"] == config_map[env_var("kafka", "group_id")] == values["config"]["kafka"]["group_id"]
    assert meta["topic"] == config_map[env_var("kafka", "input_topic")]
    assert meta["lagThreshold"] == "500"
    assert meta["excludePersistentLag"] == "true"
    assert meta["offsetResetPolicy"] == "earliest"
    assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
    auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    params = {entry["parameter"]: entry for entry in auth["spec"]["env"]}
    assert params.keys() == {"username", "password"}
    for entry in params.values():
        assert entry["containerName"] == container["name"] and entry["name"] in env
    # ... and the CA the worker mounts, from the same Secret.
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "ca", "name": "kafka-cluster-ca-cert", "key": "ca.crt"}]

    # ServiceMonitor on the Service's metrics port.
    monitor = objects[("ServiceMonitor", FULLNAME)]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    # IRSA.
    annotations = objects[("ServiceAccount", FULLNAME)]["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


@pytest.mark.parametrize("grace", [0.5, 25.0, 100.5, 3600.0])
def test_termination_grace_exceeds_the_shutdown_grace(helm: dict[str, Any], grace: float) -> None:
    objects = _render(helm, "--set-json", f"config.pipeline.shutdown_grace_seconds={grace}")
    tgps = objects[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert isinstance(tgps, int) and tgps > grace
    # The worker gets the same number the pod's grace was derived from.
    assert float(objects[("ConfigMap", FULLNAME)]["data"][env_var("pipeline", "shutdown_grace_seconds")]) == grace


def test_explicit_termination_grace_is_checked(helm: dict[str, Any]) -> None:
    objects = _render(helm, "--set", "terminationGracePeriodSeconds=30")
    assert objects[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    error = _render_fails(helm, "--set", "terminationGracePeriodSeconds=25")
    assert "must exceed config.pipeline.shutdown_grace_seconds" in error
    assert "terminationGraceMarginSeconds" in _render_fails(helm, "--set", "terminationGraceMarginSeconds=0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "config.kafka.sasl_password=hunter2"], "kafkaAuth.existingSecret"),
        (["--set", "config.kafka.group_instance_id=fixed"], "pod name"),
        (["--set", "config.model.cache_dir=/models"], "modelCache.mountPath"),
        (
            ["--set", "config.kafka.security_protocol=SASL_SSL", "--set", "config.kafka.sasl_username=u"],
            "kafkaAuth.existingSecret",
        ),
        (["--set", "kafkaAuth.existingSecret=s"], "not SASL_"),
        (["--set", "kafkaAuth.caSecret=ca"], "a CA is for SSL or SASL_SSL"),
        (
            ["--set", "config.kafka.security_protocol=SSL", "--set", "kafkaAuth.caSecret=ca",
             "--set", "config.kafka.client_config.ssl\\.ca\\.location=/ca.pem"],
            "keep one",
        ),
        (["--set", "config.pipeline.metrics_port=null"], "metrics_port must be set"),
        # Refused by values.schema.json's enum, which names the key as a JSON path.
        (["--set", "modelCache.type=hostPath"], "/modelCache/type"),
        (["--set", "modelCache.type=existingClaim"], "modelCache.existingClaim"),
        (
            ["--set", "keda.enabled=true", "--set", "keda.limitToPartitionsWithLag=true",
             "--set", "keda.allowIdleConsumers=true"],
            "cannot both be true",
        ),
    ],
)
def test_chart_refuses_bad_values(helm: dict[str, Any], args: list[str], message: str) -> None:
    error = _render_fails(helm, *args)
    assert message in error
    assert "hunter2" not in error


def test_gpu_count_zero_requests_no_gpu(helm: dict[str, Any]) -> None:
    objects = _render(helm, "--set", "gpu.count=0")
    limits = _worker(objects[("StatefulSet", FULLNAME)])["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and limits["memory"] == "16Gi"


# -- startup probe -----------------------------------------------------------------------------


def test_startup_probe_passes_only_once_the_model_is_loaded_and_polling(helm: dict[str, Any]) -> None:
    # /livez is 200 while the model loads (worker/cli/run.py serves health before loading), so a startup
    # probe on it would pass at once and a hung download or load would never be restarted. /readyz is 200
    # only once the model is loaded and the poll loop turns.
    container = _worker(_render(helm)[("StatefulSet", FULLNAME)])
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # The whole budget for download + load: generous by default, for multi-GB checkpoints ...
    values = _values()["probes"]["startup"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "big model loads need many minutes"
    assert {key: startup[key] for key in values} == values
    # ... and a value, so it can be raised for bigger models without editing the chart.
    raised = _render(helm, "--set", "probes.startup.failureThreshold=360")
    assert _worker(raised[("StatefulSet", FULLNAME)])["startupProbe"]["failureThreshold"] == 360


def test_chart_readme_names_the_probe_paths_the_chart_renders(helm: dict[str, Any]) -> None:
    container = _worker(_render(helm)[("StatefulSet", FULLNAME)])
    paths = [container[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")]
    readme = (CHART / "README.md").read_text()
    assert f"paths are {', '.join(paths)}" in readme, "the probes row of the values table"
    assert "**The startup probe is `/readyz`.**" in readme


# -- a secured cluster: the SASL secret and a mounted CA --------------------------------------------


def test_no_kafka_ca_is_mounted_unless_kafka_auth_ca_secret_is_set(helm: dict[str, Any]) -> None:
    objects = _render(helm)
    pod = objects[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]
    assert "kafka-ca" not in {v["name"] for v in pod["volumes"]}
    assert objects[("ConfigMap", FULLNAME)]["data"][env_var("kafka", "client_config")] == "{}"


def test_a_kafka_ca_secret_is_mounted_read_only_and_named_by_ssl_ca_location(
    helm: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _render(helm, "--set", "config.kafka.security_protocol=SSL", "--set", "kafkaAuth.caSecret=kafka-ca",
                      "--set", "kafkaAuth.caKey=cluster.pem",
                      "--set", "config.kafka.client_config.ssl\\.endpoint\\.identification\\.algorithm=https")
    sts = objects[("StatefulSet", FULLNAME)]
    for spec, container in ((sts["spec"]["template"]["spec"], _worker(sts)),
                            (_check_pod(objects)["spec"], _check_pod(objects)["spec"]["containers"][0])):
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["kafka-ca"]["secret"] == {"secretName": "kafka-ca",
                                                 "items": [{"key": "cluster.pem", "path": "cluster.pem"}]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["kafka-ca"] == {"name": "kafka-ca", "mountPath": "/etc/kafka-ca", "readOnly": True}
    settings = _settings_from_pod(objects, monkeypatch, secrets={})
    assert settings.kafka.security_protocol == "SSL"
    assert settings.kafka.client_config == {"ssl.ca.location": "/etc/kafka-ca/cluster.pem",
                                            "ssl.endpoint.identification.algorithm": "https"}, "merged, not replaced"


def _secured_values_in_the_docs() -> str:
    """The chart values of docs/operations.md's "Running against a secured cluster" (its first yaml block)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## Running against a secured cluster"):]
    return section[section.index("```yaml\n") + len("```yaml\n"):section.index("```\n", section.index("```yaml"))]


def test_the_secured_cluster_values_in_the_docs_render_the_password_by_reference_and_the_ca_mounted(
    helm: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = tmp_path / "secured.yaml"
    values.write_text(_secured_values_in_the_docs())
    objects = _render(helm, "-f", str(values))
    documented = yaml.safe_load(values.read_text())
    auth = documented["kafkaAuth"]
    container = _worker(objects[("StatefulSet", FULLNAME)])
    assert _env(container)[env_var("kafka", "sasl_password")]["valueFrom"] == {
        "secretKeyRef": {"name": auth["existingSecret"], "key": auth["passwordKey"]}}
    assert not any("PASSWORD" in name for name in objects[("ConfigMap", FULLNAME)]["data"])
    assert {"name": "kafka-ca", "mountPath": "/etc/kafka-ca", "readOnly": True} in container["volumeMounts"]
    settings = _settings_from_pod(objects, monkeypatch, secrets={(auth["existingSecret"], auth["passwordKey"]): "pw"})
    assert (settings.kafka.security_protocol, settings.kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert settings.kafka.client_config["ssl.ca.location"] == f"/etc/kafka-ca/{auth.get('caKey', 'ca.crt')}"


# -- values.schema.json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "bogus=1"], "at '': additional properties 'bogus' not allowed"),
        # A nested typo: without the schema Helm would ignore it and the worker would run with the default.
        (["--set", "config.model.modle_name=ViT-L-14"], "at '/config/model': additional properties 'modle_name'"),
        (["--set", "keda.limitToPartitionWithLag=true"], "additional properties 'limitToPartitionWithLag'"),
        (["--set", "probes.startup.httpGet.path=/livez"], "additional properties 'httpGet'"),
        (["--set", "config.model.inference_batch_size=big"], "/config/model/inference_batch_size"),
        (["--set", "config.model.inference_batch_size=0"], "/config/model/inference_batch_size"),
        (["--set", "config.pipeline.delivery=exactly_once"], "/config/pipeline/delivery"),
        (["--set", "config.kafka.producer_config.linger\\.ms=20"], "/config/kafka/producer_config/linger.ms"),
        (["--set-string", "gpu.count=1"], "/gpu/count"),
        (["--set", "kafkaAuth.caKey="], "/kafkaAuth/caKey"),
    ],
)
def test_schema_refuses_unknown_and_mistyped_values(helm: dict[str, Any], args: list[str], message: str) -> None:
    assert message in _render_fails(helm, *args)
    lint = _helm(helm, "lint", "--strict", str(CHART), "-f", str(MINIMAL), *args)
    assert lint.returncode != 0 and message in lint.stdout + lint.stderr, (lint.stdout, lint.stderr)


def test_schema_lets_the_chart_owned_settings_through_to_the_chart_s_own_message(helm: dict[str, Any]) -> None:
    # The schema knows these keys, so the refusal is the chart's, which says what to do instead.
    error = _render_fails(helm, "--set", "config.model.cache_dir=/models")
    assert "additional properties" not in error and "modelCache.mountPath" in error


# -- KEDA --------------------------------------------------------------------------------------


def _trigger_metadata(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (trigger,) = objects[("ScaledObject", FULLNAME)]["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata: dict[str, Any] = trigger["metadata"]
    # KEDA reads trigger metadata as map[string]string: a YAML bool or number would be refused.
    assert all(isinstance(value, str) for value in metadata.values()), metadata
    return metadata


def test_keda_trigger_carries_the_partition_and_offset_options_as_strings(helm: dict[str, Any]) -> None:
    defaults = _trigger_metadata(_render(helm, "--set", "keda.enabled=true"))
    assert defaults["limitToPartitionsWithLag"] == "false"
    assert defaults["scaleToZeroOnInvalidOffset"] == "false"
    assert defaults["activationLagThreshold"] == "0"

    configured = _trigger_metadata(_render(helm, "-f", str(ALL_FEATURES)))
    keda = yaml.safe_load(ALL_FEATURES.read_text())["keda"]
    assert keda["limitToPartitionsWithLag"] is True and keda["scaleToZeroOnInvalidOffset"] is True
    assert configured["limitToPartitionsWithLag"] == "true"
    assert configured["scaleToZeroOnInvalidOffset"] == "true"
    assert configured["activationLagThreshold"] == str(keda["activationLagThreshold"]) == "10"


# -- helm test ---------------------------------------------------------------------------------


def _check_pod(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    pods = [obj for (kind, _), obj in objects.items() if kind == "Pod"]
    assert len(pods) == 1, [obj["metadata"]["name"] for obj in pods]
    return pods[0]


def test_helm_test_pod_runs_clip_worker_check_as_the_worker_would(
    helm: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _render(helm, "-f", str(ALL_FEATURES))
    sts = objects[("StatefulSet", FULLNAME)]
    worker, pod = _worker(sts), _check_pod(objects)
    spec = pod["spec"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert spec["restartPolicy"] == "Never"
    (check,) = spec["containers"]

    # The worker's image and command, with `check`.
    assert check["image"] == worker["image"] == "registry.example.com/ml/clip-embedding-worker:0.1.0-test"
    assert check["command"] + check["args"] == worker["command"] + ["check"] == ["clip-worker", "check"]
    # The worker's environment: the same ConfigMap and Secrets, the same variables, plus the CPU.
    assert check["envFrom"] == worker["envFrom"]
    check_env = _env(check)
    assert check_env.pop(env_var("model", "device")) == {"name": env_var("model", "device"), "value": "cpu"}
    assert check_env == _env(worker)
    secrets = {("clip-worker-kafka", "sasl-password"): "s3cret", ("clip-worker-kafka", "sasl-username"): "clip"}
    pod_name = pod["metadata"]["name"]
    checked = _settings_from_container(objects, check, pod_name, monkeypatch, secrets)
    running = _settings_from_pod(objects, monkeypatch, secrets)
    owned = {"kafka": {"group_instance_id"}, "model": {"device"}}
    assert checked.model_dump(exclude=owned) == running.model_dump(exclude=owned)
    assert (checked.model.device, running.model.device) == ("cpu", "cuda")
    # Small, and no GPU: it must not wait for, or take, one the workers hold.
    assert check["resources"] == yaml.safe_load(ALL_FEATURES.read_text())["helmTest"]["resources"]
    assert not any("gpu" in name for name in check["resources"].get("limits", {}))
    # As locked down as the worker, with its volumes (the Kafka CA, a writable /tmp and model cache).
    assert check["securityContext"] == worker["securityContext"]
    assert spec["securityContext"] == sts["spec"]["template"]["spec"]["securityContext"]
    assert spec["enableServiceLinks"] is False and spec["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in check["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/cache": "model-cache", "/etc/kafka-ca": "kafka-ca",
                      "/etc/clip-worker-extra": "extra-config"}
    assert {v["name"] for v in spec["volumes"]} == set(mounts.values())
    # Not one of the worker's pods: no selector of the release may pick it up.
    labels = pod["metadata"]["labels"]
    for selector in (
        sts["spec"]["selector"]["matchLabels"],
        objects[("Service", f"{FULLNAME}-headless")]["spec"]["selector"],
        objects[("PodDisruptionBudget", FULLNAME)]["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= labels.items(), selector


def test_helm_test_pod_can_be_turned_off(helm: dict[str, Any]) -> None:
    assert not [name for kind, name in _render(helm, "--set", "helmTest.enabled=false") if kind == "Pod"]


# -- model weights -----------------------------------------------------------------------------


def _volumes(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in _one(objects, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}


def test_weights_from_a_cache_volume_set_the_cache_dir_below_its_mount(
    helm: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _render(helm, "--set", "modelCache.type=emptyDir", "--set", "modelCache.mountPath=/weights")
    assert _volumes(objects)["model-cache"]["emptyDir"] == {"sizeLimit": "10Gi"}
    mounts = {m["name"]: m for m in _worker(_one(objects, "StatefulSet"))["volumeMounts"]}
    assert mounts["model-cache"] == {"name": "model-cache", "mountPath": "/weights"}
    assert _settings_from_pod(objects, monkeypatch, secrets={}).model.cache_dir == Path("/weights/open_clip")
    assert "initContainers" not in _one(objects, "StatefulSet")["spec"]["template"]["spec"], "fetch is opt-in"


def test_fetch_model_init_container_downloads_into_the_cache_volume_with_the_worker_s_environment(
    helm: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert yaml.safe_load(ALL_FEATURES.read_text())["modelCache"]["fetch"]["enabled"] is True
    objects = _render(helm, "-f", str(ALL_FEATURES), "--set", "config.model.pretrained=s3://models/vit-l-14.bin")
    pod = _one(objects, "StatefulSet")["spec"]["template"]["spec"]
    worker = _worker(_one(objects, "StatefulSet"))
    (fetch,) = pod["initContainers"]
    assert fetch["image"] == worker["image"]
    assert fetch["command"] + fetch["args"] == ["clip-worker", "fetch-model"]
    # The same settings, S3 credentials (aws.existingSecret) and cache, so it fetches what the worker loads.
    assert fetch["envFrom"] == worker["envFrom"] and _env(fetch) == _env(worker)
    assert {"secretRef": {"name": "clip-worker-s3"}} in fetch["envFrom"]
    secrets = {("clip-worker-kafka", "sasl-password"): "s3cret", ("clip-worker-kafka", "sasl-username"): "clip"}
    fetched = _settings_from_container(objects, fetch, f"{FULLNAME}-0", monkeypatch, secrets)
    assert fetched.model.pretrained == "s3://models/vit-l-14.bin"
    assert fetched.model.cache_dir == Path("/cache/open_clip")
    mounts = {m["name"]: m["mountPath"] for m in fetch["volumeMounts"]}
    assert mounts["model-cache"] == "/cache" and mounts["tmp"] == "/tmp"
    assert fetch["securityContext"] == worker["securityContext"]
    assert not any("gpu" in name for name in fetch["resources"].get("limits", {})), "no GPU to download"


def test_an_existing_claim_filled_beforehand_mounts_read_only(helm: dict[str, Any]) -> None:
    objects = _render(helm, "--set", "modelCache.type=existingClaim", "--set", "modelCache.existingClaim=weights",
                      "--set", "modelCache.readOnly=true")
    assert _volumes(objects)["model-cache"]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    (mount,) = [m for m in _worker(_one(objects, "StatefulSet"))["volumeMounts"] if m["name"] == "model-cache"]
    assert mount["readOnly"] is True
    check = _check_pod(objects)["spec"]
    assert {"claimName": "weights", "readOnly": True} in [v.get("persistentVolumeClaim") for v in check["volumes"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "modelCache.fetch.enabled=true"], "modelCache.type image has the weights in the image"),
        (["--set", "modelCache.type=pvc", "--set", "modelCache.readOnly=true"], "modelCache.readOnly is for"),
        (["--set", "modelCache.type=existingClaim", "--set", "modelCache.existingClaim=w",
          "--set", "modelCache.readOnly=true", "--set", "modelCache.fetch.enabled=true"], "read-only claim"),
    ],
)
def test_chart_refuses_model_weight_settings_that_cannot_work(
    helm: dict[str, Any], args: list[str], message: str
) -> None:
    assert message in _render_fails(helm, *args)


def _notes(helm: dict[str, Any], tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it: rendered through a copy of the chart that carries it in a
    ConfigMap (`helm template` does not print NOTES, and `helm install --dry-run` needs a cluster)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "files").mkdir()
    shutil.copy(CHART / "templates" / "NOTES.txt", chart / "files" / "notes.txt")
    (chart / "templates" / "notes-for-test.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n'
        '  notes: {{ tpl (.Files.Get "files/notes.txt") . | toJson }}\n'
    )
    done = _helm(helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE, "-f", str(MINIMAL), *args)
    assert done.returncode == 0, done.stderr
    (notes,) = [doc for doc in yaml.safe_load_all(done.stdout) if doc and doc["metadata"]["name"] == "notes"]
    text: str = notes["data"]["notes"]
    return text


def test_notes_name_the_sources_read_and_where_the_weights_come_from(helm: dict[str, Any], tmp_path: Path) -> None:
    default = _notes(helm, tmp_path / "a")
    assert "reads only from photos;" in default and "dead-lettered (SourceForbidden)" in default
    assert "WARNING" not in default, "nothing left to warn about: the chart refuses what it warned of"
    assert "make image MODEL_NAME=ViT-B-32 PRETRAINED=openai" in default
    fetched = _notes(helm, tmp_path / "b", "--set", "modelCache.type=pvc", "--set", "modelCache.fetch.enabled=true")
    assert "downloaded by the fetch-model init container into the pvc cache" in fetched
    assert "make image" not in fetched
    at_start = _notes(helm, tmp_path / "c", "--set", "modelCache.type=emptyDir")
    assert "downloaded by the worker at start into the emptyDir cache" in at_start


# -- scheduling, disk, network -----------------------------------------------------------------


def test_topology_spread_constraints_are_off_by_default_and_rendered_when_set(helm: dict[str, Any]) -> None:
    assert "topologySpreadConstraints" not in _one(_render(helm), "StatefulSet")["spec"]["template"]["spec"]
    pod = _one(_render(helm, "-f", str(ALL_FEATURES)), "StatefulSet")["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"] == yaml.safe_load(ALL_FEATURES.read_text())["topologySpreadConstraints"]


def test_ephemeral_storage_is_unset_by_default_and_rendered_when_set(helm: dict[str, Any]) -> None:
    resources = _worker(_one(_render(helm), "StatefulSet"))["resources"]
    assert "ephemeral-storage" not in resources["requests"] and "ephemeral-storage" not in resources["limits"]
    set_ = _worker(_one(_render(helm, "--set", "ephemeralStorage.request=2Gi", "--set", "ephemeralStorage.limit=12Gi"),
                        "StatefulSet"))["resources"]
    assert set_["requests"]["ephemeral-storage"] == "2Gi" and set_["limits"]["ephemeral-storage"] == "12Gi"
    # Beside the rest, not instead of it.
    assert set_["limits"]["nvidia.com/gpu"] == 1
    assert set_["requests"]["cpu"] == _values()["resources"]["requests"]["cpu"]


def test_cpu_request_follows_the_sizing_rule_for_the_decode_workers() -> None:
    # ceil(1.4 x preprocess_workers): values.yaml's comment states the rule, docs/operations.md derives it.
    values = _values()
    workers = values["config"]["model"]["preprocess_workers"]
    assert float(values["resources"]["requests"]["cpu"]) == math.ceil(1.4 * workers)
    assert "ceil(1.4 x config.model.preprocess_workers)" in (CHART / "values.yaml").read_text()


def test_network_policy_is_off_by_default_and_allows_only_dns_kafka_s3_the_registry_and_metrics(
    helm: dict[str, Any],
) -> None:
    assert not [name for kind, name in _render(helm) if kind == "NetworkPolicy"]
    monitoring = '[{"namespaceSelector": {"matchLabels": {"name": "mon"}}}]'
    objects = _render(helm, "-f", str(ALL_FEATURES), "--set-json", f"networkPolicy.metricsFrom={monitoring}",
                      "--set-json", 'networkPolicy.kafka.to=[{"ipBlock": {"cidr": "10.1.0.0/16"}}]')
    policy = objects[("NetworkPolicy", FULLNAME)]["spec"]
    assert policy["podSelector"]["matchLabels"] == _one(objects, "StatefulSet")["spec"]["selector"]["matchLabels"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": {"name": "mon"}}}]
    ports = [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in policy["egress"]]
    # ci/all-features: brokers on 9093, S3 at https://minio.storage.svc:9000, the registry at :8081.
    assert ports == [[(53, "TCP"), (53, "UDP")], [(9093, "TCP")], [(9000, "TCP")], [(8081, "TCP")]]
    assert policy["egress"][0]["to"] == _values()["networkPolicy"]["dns"]["to"]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}]
    assert "to" not in policy["egress"][2], "S3 anywhere on its port unless networkPolicy.s3.to says where"
    # Defaults: Kafka's port from each host:port, S3 on 443, no registry rule without a registry.
    plain = _render(helm, "--set", "networkPolicy.enabled=true",
                    "--set-string", "config.kafka.bootstrap_servers=k1:9094\\,k2:9094\\,k3")
    egress = plain[("NetworkPolicy", FULLNAME)]["spec"]["egress"]
    assert [[p["port"] for p in rule["ports"]] for rule in egress] == [[53, 53], [9094, 9092], [443]]
    assert "ingress" in plain[("NetworkPolicy", FULLNAME)]["spec"] and "from" not in egress[0]["ports"][0]
