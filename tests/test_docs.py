"""The documentation holds one copy of each fact, and these tests tie each copy to the code it describes.

- docs/configuration.md is generated from the settings model (worker/config_reference.py, `make docs`);
- the metrics table in docs/operations.md lists exactly the metrics the worker registers;
- the dead-letter headers table in docs/delivery.md lists exactly the headers the worker writes;
- the README and docs/ link only to pages that exist, and figures live in BENCHMARKS.md alone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from worker import config_reference
from worker.config import Settings, env_var
from worker.metrics import Metrics
from worker.stream import deadletter

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"


def _table_first_column(page: Path, heading: str) -> list[str]:
    """The code spans in the first column of the first table under `heading` in `page`."""
    text = page.read_text()
    start = text.find(heading)
    assert start >= 0, f"{page.name} has no {heading!r}"
    rows = []
    in_table = False
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            in_table = True
            first = line.split("|")[1]
            rows.extend(re.findall(r"`([^`]+)`", first))
        elif in_table:
            break
    assert rows, f"no table rows under {heading!r} in {page.name}"
    return rows


# -- the configuration reference ----------------------------------------------------------------


def test_the_committed_configuration_reference_is_what_the_settings_model_generates() -> None:
    assert CONFIGURATION.read_text() == config_reference.render(), (
        "docs/configuration.md differs from worker/config/: run `make docs` and commit the result"
    )


def test_the_configuration_reference_names_every_setting_with_its_default_and_description() -> None:
    page = config_reference.render()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert model is not None
        for key, setting in model.model_fields.items():
            row = next((line for line in page.splitlines() if line.startswith(f"| `{env_var(section, key)}` |")), None)
            assert row is not None, f"{env_var(section, key)} is missing"
            assert (setting.description or "") in row, f"{env_var(section, key)}: description missing"


def test_the_configuration_reference_shows_allowed_values_and_bounds() -> None:
    page = config_reference.render()
    delivery = next(line for line in page.splitlines() if env_var("pipeline", "delivery") in line)
    assert "`at-least-once`, `exactly-once`" in delivery
    batch = next(line for line in page.splitlines() if env_var("model", "inference_batch_size") in line)
    assert ">= 1, <= 4096" in batch and "`32`" in batch


def test_make_docs_writes_the_configuration_reference(tmp_path: Path) -> None:
    target = tmp_path / "configuration.md"
    assert config_reference.main(["--write", str(target)]) == 0
    assert target.read_text() == config_reference.render()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docs:.*\n\t.*worker\.config_reference --write docs/configuration\.md$", makefile, re.M)
    assert re.search(r"^\.PHONY:.*\bdocs\b", makefile, re.M)


# -- the metrics table ------------------------------------------------------------------------------


def _registered_metrics() -> dict[str, tuple[str, ...]]:
    """Every metric the worker registers, by its exposed name (counters with _total), with its label names."""
    metrics = Metrics()
    found = {}
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            name = collector._name + ("_total" if collector._type == "counter" else "")
            found[name] = tuple(collector._labelnames)
    exposed = {family.name + ("_total" if family.type == "counter" else "") for family in metrics.registry.collect()}
    assert found.keys() == exposed, "the Metrics attributes and its registry disagree: the scan is broken"
    return found


def _metrics_table() -> dict[str, str]:
    """The metrics table of docs/operations.md: metric name -> its labels cell."""
    text = (DOCS / "operations.md").read_text()
    rows = {}
    for line in text[text.index("## Metrics"):].splitlines():
        match = re.match(r"\| `(clip_worker_[a-z_]+)` \|\s*([^|]*?)\s*\|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    assert rows, "no metrics table in docs/operations.md"
    return rows


def test_every_metric_the_worker_registers_is_documented_with_its_labels() -> None:
    documented = _metrics_table()
    registered = _registered_metrics()
    missing = sorted(registered.keys() - documented.keys())
    assert not missing, f"metrics registered in worker/metrics.py but not in docs/operations.md: {missing}"
    # The labels cell names each label in backticks; what follows in parentheses are example values.
    wrong = {
        name: {"registered": sorted(labels), "documented": documented[name]}
        for name, labels in registered.items()
        if set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", documented[name]))) != set(labels)
    }
    assert not wrong, f"label names differ between worker/metrics.py and docs/operations.md: {wrong}"


def test_every_documented_metric_exists() -> None:
    unknown = sorted(_metrics_table().keys() - _registered_metrics().keys())
    assert not unknown, f"docs/operations.md documents metrics that worker/metrics.py does not register: {unknown}"


# -- the dead-letter headers table ----------------------------------------------------------------


def _headers_written() -> set[str]:
    """Every header name the dead-letter code writes: its module's constants under its own prefixes."""
    names = {
        value for name, value in vars(deadletter).items()
        if name.isupper() and isinstance(value, str) and value.startswith(deadletter.PREFIXES)
    }
    assert len(names) > 10, "the header constants were not found: the scan is broken"
    return names


def test_every_dead_letter_header_the_worker_writes_is_documented() -> None:
    documented = set(_table_first_column(DOCS / "delivery.md", "### Dead-letter headers"))
    missing = sorted(_headers_written() - documented)
    assert not missing, f"headers written by the dead-letter code but not in docs/delivery.md: {missing}"


def test_every_documented_dead_letter_header_is_written_by_the_worker() -> None:
    documented = set(_table_first_column(DOCS / "delivery.md", "### Dead-letter headers"))
    unknown = sorted(documented - _headers_written())
    assert not unknown, f"docs/delivery.md documents headers the worker does not write: {unknown}"


# -- the pages as a whole -------------------------------------------------------------------------


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


def test_every_relative_link_in_the_readme_and_docs_points_at_a_file_that_exists() -> None:
    broken = []
    for page in _pages():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, f"links to files that do not exist: {broken}"


ARCHITECTURE = DOCS / "architecture.md"


def _named_code_paths() -> set[str]:
    """Every `worker/...` path the architecture page names, the short forms after a first path in a
    cell (`metrics.py` beside `worker/logs.py`) resolved against that path's folder."""
    named = set()
    for line in ARCHITECTURE.read_text().splitlines():
        if not line.startswith("| `worker/"):
            continue
        spans = re.findall(r"`([^`]+)`", line.split("|")[1])
        folder = spans[0].rsplit("/", 1)[0] if not spans[0].endswith("/") else spans[0].rstrip("/")
        named.add(spans[0].rstrip("/"))
        named.update(f"{folder}/{span}" for span in spans[1:])
    return named


def test_every_worker_path_the_architecture_page_names_exists() -> None:
    missing = sorted(path for path in _named_code_paths() if not (ROOT / path).exists())
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"


def test_the_architecture_page_names_every_package_and_top_level_module_of_the_worker() -> None:
    named = _named_code_paths()
    worker = ROOT / "worker"
    parts = [p for p in worker.iterdir() if (p.is_dir() and (p / "__init__.py").exists())
             or (p.suffix == ".py" and p.name not in ("__init__.py", "__main__.py"))]
    unnamed = sorted(str(p.relative_to(ROOT)) for p in parts
                     if str(p.relative_to(ROOT)) not in named
                     and not any(n.startswith(str(p.relative_to(ROOT)) + "/") for n in named))
    assert unnamed == [], f"docs/architecture.md does not say where these live: {unnamed}"


# Written with [ ] so that the pattern does not find itself in this file.
DEVELOPMENT_SPEAK = re.compile(
    r"issue[ ][0-9]+|\.\./shared|not[ ]drawn|device[ ]tool|this[ ]task|pass(es)?[ ]of[ ]issue", re.I
)


def test_the_repository_speaks_of_the_product_not_of_how_it_was_developed() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / name for name in tracked.split() if name != "CHANGELOG.md" and (ROOT / name).is_file()
             and (ROOT / name).suffix not in (".jpg", ".png", ".lock")]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if DEVELOPMENT_SPEAK.search(line)
    ]
    assert not found, "development history in user-facing files (git keeps the history):\n" + "\n".join(found)


def test_the_readme_stays_short_and_links_each_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in sorted(DOCS.glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
