"""The chart's alerts and Grafana dashboard against the worker they watch.

- `promtool test rules` (Prometheus's own rule tester) on the PrometheusRule as helm renders it: each
  alert fires on series named as the worker names them, and stays quiet for the look-alikes beside
  it (tests/alerts/rules.test.yaml);
- every clip_worker_* name in a rule or a dashboard panel is one a running worker serves on /metrics;
- each alert has a summary, a description and a runbook_url pointing at a section of
  docs/operations.md that exists;
- the dashboard ConfigMap carries the label Grafana's sidecar looks for, and its JSON's expressions
  parse as PromQL.

Needs helm (.cache/bin/helm) and promtool (.cache/bin/promtool, or $PROMTOOL_BIN); fails, not
skips, without them. PROMTOOL_PROVISION below is the command that builds promtool.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import test_helm_chart as chart
from worker.health import HealthServer
from worker.metrics import Metrics

ROOT = chart.ROOT
RULES_TEST = ROOT / "tests" / "alerts" / "rules.test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
PROMTOOL = Path(os.environ.get("PROMTOOL_BIN") or ROOT / ".cache" / "bin" / "promtool")
PROMTOOL_VERSION = "v0.316.0"
PROMTOOL_PROVISION = (
    "GOBIN=$PWD/.cache/bin GOFLAGS=-mod=mod "
    f"go install github.com/prometheus/prometheus/cmd/promtool@{PROMTOOL_VERSION}"
)
DASHBOARD_KEY = "clip-embedding-worker.json"

METRIC_NAME = re.compile(r"\bclip_worker_[a-zA-Z0-9_]*[a-zA-Z0-9]\b")
# What the dashboard's Grafana variables stand for when its expressions are checked as PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "2m",
    "$namespace": chart.NAMESPACE,
    "$job": f"{chart.FULLNAME}-headless",
    "$pod": ".+",
}


# -- tools -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The helm binary and a private HOME for it, as tests/test_helm_chart.py runs it."""
    if not (chart.HELM.is_file() and os.access(chart.HELM, os.X_OK)):
        pytest.fail(f"helm not found at {chart.HELM}. Provision it:\n    {chart.HELM_PROVISION}", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return {"bin": str(chart.HELM), "env": env}


@pytest.fixture(scope="module")
def promtool() -> str:
    if not (PROMTOOL.is_file() and os.access(PROMTOOL, os.X_OK)):
        pytest.fail(
            f"promtool not found at {PROMTOOL}. Provision it from the repository root (`make .cache/bin/promtool`"
            f" does it; Go >= 1.26):\n    {PROMTOOL_PROVISION}",
            pytrace=False,
        )
    return str(PROMTOOL)


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


# -- the rendered chart ------------------------------------------------------------------------


def _rule(helm: dict[str, Any], *args: str) -> dict[str, Any]:
    objects = chart._render(helm, "--set", "alerts.enabled=true", "--set", "alerts.ruleLabels.team=ml", *args)
    return chart._one(objects, "PrometheusRule")


def _alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    alerts = {}
    for group in rule["spec"]["groups"]:
        for entry in group["rules"]:
            assert entry["alert"] not in alerts, f"{entry['alert']} twice"
            alerts[entry["alert"]] = entry
    return alerts


def _dashboard_config_map(helm: dict[str, Any], *args: str) -> dict[str, Any]:
    return chart._one(
        {key: obj for key, obj in chart._render(helm, "--set", "dashboard.enabled=true", *args).items()
         if key[1].endswith("-dashboard")},
        "ConfigMap",
    )


def _dashboard(helm: dict[str, Any]) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(_dashboard_config_map(helm)["data"][DASHBOARD_KEY])
    return dashboard


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves left out."""
    found = []
    for panel in dashboard["panels"]:
        found.extend(_panels(panel) if "panels" in panel else [])
        if panel["type"] != "row":
            found.append(panel)
    return found


def _panel_expressions(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in _panels(dashboard)}


def _variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    return {
        variable["name"]: variable["query"]["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    }


# -- what a running worker serves ----------------------------------------------------------------


def _exposed_names(text: str) -> set[str]:
    """The series names a scrape of `text` (Prometheus text format) can hold.

    Sample lines name themselves. Labelled metrics with no children yet (no topic assigned, no outage,
    no failure) have only their # TYPE line; their series names follow from the type, as the
    exposition format writes them: counters end in _total already, histograms add _bucket, _sum and
    _count.
    """
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = {"histogram": ["_bucket", "_sum", "_count"], "summary": ["", "_sum", "_count"]}
            names.update(name + suffix for suffix in suffixes.get(kind, [""]))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """GET /metrics from the worker's health server, serving a fresh worker's registry."""
    metrics = Metrics()
    metrics.describe(
        version="0.1.0", model="ViT-B-32", pretrained="openai", device="cpu", dtype="float32", device_memory=None
    )
    server = HealthServer(
        port=0, host="127.0.0.1", registry=metrics.registry, stall_seconds=30,
        last_loop_at=time.monotonic, ready=lambda: True,
    )
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            assert response.status == 200
            names = _exposed_names(response.read().decode())
    finally:
        server.stop()
    return names


def test_the_exposed_names_include_labelled_metrics_that_have_no_series_yet(exposed: set[str]) -> None:
    # Without this the checks below would pass only for metrics that happen to have a sample.
    assert {
        "clip_worker_records_failed_total", "clip_worker_outage", "clip_worker_consumergroup_lag",
        "clip_worker_fetch_seconds_bucket", "clip_worker_fetch_seconds_count", "clip_worker_records_consumed_total",
    } <= exposed
    assert "clip_worker_fetch_seconds" not in exposed and "clip_worker_records_failed" not in exposed


def _unknown(expressions: dict[str, list[str]], exposed: set[str]) -> dict[str, list[str]]:
    unknown = {}
    for where, exprs in expressions.items():
        names = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
        if names - exposed:
            unknown[where] = sorted(names - exposed)
    return unknown


def test_every_rule_uses_only_metric_names_the_worker_exposes(helm: dict[str, Any], exposed: set[str]) -> None:
    alerts = _alerts(_rule(helm))
    expressions = {name: [alert["expr"]] for name, alert in alerts.items()}
    used = {name for exprs in expressions.values() for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert len(used) >= 8, f"the scan finds too few names to check anything: {used}"
    assert _unknown(expressions, exposed) == {}, "rules name series the worker does not serve"


def test_every_dashboard_panel_uses_only_metric_names_the_worker_exposes(
    helm: dict[str, Any], exposed: set[str]
) -> None:
    dashboard = _dashboard(helm)
    expressions = _panel_expressions(dashboard)
    expressions.update({f"variable {name}": [query] for name, query in _variable_queries(dashboard).items()})
    assert all(exprs for title, exprs in expressions.items()), "a panel without a query"
    assert _unknown(expressions, exposed) == {}, "dashboard panels name series the worker does not serve"


def test_the_dashboard_shows_latency_percentiles_for_every_histogram_the_worker_exposes(
    helm: dict[str, Any], exposed: set[str]
) -> None:
    text = "\n".join(expr for exprs in _panel_expressions(_dashboard(helm)).values() for expr in exprs)
    histograms = {name.removesuffix("_bucket") for name in exposed if name.endswith("_bucket")}
    assert len(histograms) >= 7, histograms
    quantile = "histogram_quantile(0.95, sum by (le) (rate({}_bucket"
    assert [name for name in sorted(histograms) if quantile.format(name) not in text] == []


def test_the_dashboard_shows_throughput_lag_failures_outages_device_memory_and_what_is_in_flight(
    helm: dict[str, Any],
) -> None:
    text = "\n".join(expr for exprs in _panel_expressions(_dashboard(helm)).values() for expr in exprs)
    for name in [
        "clip_worker_records_consumed_total", "clip_worker_records_embedded_total", "clip_worker_consumergroup_lag",
        "clip_worker_records_dead_lettered_total", "clip_worker_outage", "clip_worker_device_memory_bytes",
        "clip_worker_records_in_flight", "clip_worker_in_flight_bytes",
    ]:
        assert name in text, name
    assert "by (stage, error)" in text, "failures by stage and error class"


# -- the alerts ----------------------------------------------------------------------------------


def test_alerts_and_the_dashboard_are_off_by_default(helm: dict[str, Any]) -> None:
    kinds = {kind for kind, _ in chart._render(helm)}
    assert "PrometheusRule" not in kinds
    assert not [name for kind, name in chart._render(helm) if kind == "ConfigMap" and name.endswith("-dashboard")]


def test_the_alerts_fire_when_they_should_and_not_when_they_should_not(
    helm: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    rule = _rule(helm)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    done = _promtool(promtool, "test", "rules", str(tmp_path / RULES_TEST.name))
    assert done.returncode == 0, f"promtool test rules failed:\n{done.stdout}\n{done.stderr}"
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not(helm: dict[str, Any]) -> None:
    cases: dict[str, set[bool]] = {}
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert cases.keys() == _alerts(_rule(helm)).keys()
    assert {name: fires for name, fires in cases.items() if fires != {True, False}} == {}


def test_every_alert_has_a_summary_a_description_and_a_runbook_section_that_exists(helm: dict[str, Any]) -> None:
    base = "https://example.com/clip-embedding-worker/blob/main/docs/operations.md"
    alerts = _alerts(_rule(helm, "--set", f"alerts.runbookUrl={base}/"))
    assert len(alerts) == 6
    sections = {_anchor(heading) for heading in re.findall(r"^#{2,4} (.+)$", OPERATIONS.read_text(), re.M)}
    runbook = OPERATIONS.read_text().split("\n## Runbook\n", 1)[1].split("\n## ", 1)[0]
    runbook_sections = {_anchor(heading) for heading in re.findall(r"^### (.+)$", runbook, re.M)}
    for name, alert in alerts.items():
        annotations = alert["annotations"]
        assert annotations.keys() == {"summary", "description", "runbook_url"}, name
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url == base, name
        assert anchor in runbook_sections and anchor in sections, f"{name}: no Runbook section #{anchor}"
        assert name in runbook, f"the Runbook does not name {name}"
        assert alert["labels"]["team"] == "ml" and alert["labels"]["severity"] in {"warning", "critical"}, name


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_thresholds_durations_and_switches_come_from_values(helm: dict[str, Any]) -> None:
    alerts = _alerts(_rule(
        helm,
        "--set", "alerts.consumerLag.minLag=5000", "--set", "alerts.consumerLag.for=1h",
        "--set", "alerts.deviceMemory.gibibytes=141", "--set", "alerts.restarts.enabled=false",
        "--set", "alerts.metricSelector=job=\"clip\"", "--set", "alerts.labels.release=kube-prometheus-stack",
    ))
    assert "ClipWorkerRestarting" not in alerts
    lag = alerts["ClipWorkerConsumerLagGrowing"]
    assert lag["for"] == "1h" and lag["expr"].rstrip().endswith("> 5000")
    assert "0.9 * 141 * 1024^3" in alerts["ClipWorkerDeviceMemoryNearLimit"]["expr"]
    assert all('{job="clip"}' in alert["expr"] for alert in alerts.values())
    rule = _rule(helm, "--set", "alerts.labels.release=kube-prometheus-stack")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_schema_refuses_a_duration_prometheus_would_not_read(helm: dict[str, Any]) -> None:
    error = chart._render_fails(helm, "--set", "alerts.enabled=true", "--set", "alerts.stall.for=5 minutes")
    assert "alerts/stall/for" in error or "alerts.stall.for" in error, error


# -- the dashboard -------------------------------------------------------------------------------


def test_the_dashboard_config_map_carries_the_sidecar_label_and_valid_json(helm: dict[str, Any]) -> None:
    config_map = _dashboard_config_map(helm)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"][DASHBOARD_KEY])
    assert dashboard["uid"] == "clip-embedding-worker" and len(_panels(dashboard)) >= 12
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # Every panel reads the data source the variable picks (the sidecar cannot fill ${DS_...} inputs).
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in _panels(dashboard))

    relabelled = _dashboard_config_map(
        helm, "--set", "dashboard.label=dashboards", "--set-string", "dashboard.labelValue=clip",
        "--set", "dashboard.annotations.grafana_folder=ML",
    )
    assert relabelled["metadata"]["labels"]["dashboards"] == "clip"
    assert "grafana_dashboard" not in relabelled["metadata"]["labels"]
    assert relabelled["metadata"]["annotations"] == {"grafana_folder": "ML"}


def test_every_dashboard_expression_parses_as_promql(helm: dict[str, Any], promtool: str, tmp_path: Path) -> None:
    rules = []
    for title, exprs in _panel_expressions(_dashboard(helm)).items():
        for number, expr in enumerate(exprs):
            for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{title}: a variable this test does not know: {expr}"
            rules.append({"record": f"dashboard:{re.sub(r'[^a-z0-9]+', '_', title.lower())}:{number}", "expr": expr})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _promtool(promtool, "check", "rules", "--lint=none", str(path))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
