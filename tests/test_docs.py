"""The documentation holds one copy of each fact, and these tests tie each copy to the code it describes.

- docs/configuration.md is generated from the settings model (worker/config_reference.py, `make docs`);
- the metrics table in docs/operations.md lists exactly the metrics the worker registers;
- the dead-letter headers table in docs/delivery.md lists exactly the headers the worker writes;
- the README and docs/ link only to pages that exist, and figures live in BENCHMARKS.md alone.
"""

from __future__ import annotations

import re
from pathlib import Path

from worker import config_reference
from worker.config import Settings, env_var

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
        "docs/configuration.md differs from worker/config.py: run `make docs` and commit the result"
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
