"""The configuration reference (docs/configuration.md), rendered from the settings model in worker.config.

    python -m worker.config_reference            # print the page
    python -m worker.config_reference --write    # write it to docs/configuration.md (what `make docs` runs)

The settings model is the one copy of every setting's name, type, default, bounds and description;
this page is generated from it, and tests/test_docs.py fails when the committed page differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from worker.config import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings, env_var

DEFAULT_PATH = Path("docs") / "configuration.md"

_INTRO = f"""\
# Configuration reference

<!-- Generated from worker/config/ by `make docs` (python -m worker.config_reference --write).
     Do not edit by hand: tests/test_docs.py fails when this page differs from the settings model. -->

Every setting is an environment variable `{ENV_PREFIX}<SECTION>{ENV_NESTED_DELIMITER}<NAME>`, upper-cased,
for example `{env_var("model", "model_name")}=ViT-L-14`. List and object settings take JSON
(`{env_var("s3", "allowed_sources")}='["photos", "raw/2026/"]'`). The worker reads them once at startup;
an invalid value stops it with exit code 2 and a message that names the variable.

In the Helm chart, `config.<section>.<name>` in `values.yaml` becomes the same variable (see
[operations.md](operations.md#helm-chart)). The `model` section keeps the parameter names and defaults
of the original batch operator, `ImageClipEmbeddingRefiner`.

Sections: {{sections}}.
"""


def _sections() -> dict[str, type[BaseModel]]:
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), name
        sections[name] = annotation
    return sections


def _json_schema(section: str, key: str) -> dict[str, Any]:
    full = Settings.model_json_schema()
    model = full["$defs"][full["properties"][section]["$ref"].rsplit("/", 1)[1]]
    schema: dict[str, Any] = model["properties"][key]
    return schema


def _type(schema: dict[str, Any]) -> str:
    """The setting's type in words: string, integer, number, boolean, list of strings, object, with "or unset"."""
    variants = schema.get("anyOf", [schema])
    words = []
    for variant in variants:
        kind = variant.get("type")
        if kind == "null":
            continue
        if kind == "array":
            words.append(f"list of {variant.get('items', {}).get('type', 'any')}s (JSON)")
        elif kind == "object":
            values = variant.get("additionalProperties", {})
            words.append(f"object of {values.get('type', 'any')}s (JSON)" if isinstance(values, dict) else "object")
        elif variant.get("format") == "path":
            words.append("path")
        else:
            words.append(str(kind))
    text = " or ".join(words)
    if any(variant.get("type") == "null" for variant in variants):
        text += " or unset"
    return text


def _allowed(schema: dict[str, Any]) -> str:
    """The allowed values (an enum) or bounds, in the schema's own terms."""
    parts = []
    for variant in schema.get("anyOf", [schema]):
        if "enum" in variant:
            parts.append(", ".join(f"`{value}`" for value in variant["enum"]))
        bounds = [
            (">=", variant.get("minimum")), (">", variant.get("exclusiveMinimum")),
            ("<=", variant.get("maximum")), ("<", variant.get("exclusiveMaximum")),
        ]
        parts.extend(f"{sign} {value}" for sign, value in bounds if value is not None)
    return ", ".join(parts) or "-"


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole configuration reference, as Markdown."""
    sections = _sections()
    lines = [_INTRO.replace("{sections}", ", ".join(f"[{name}](#{name})" for name in sections))]
    for section, model in sections.items():
        lines.append(f"## {section}\n")
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(model.__name__):
            lines.append(" ".join(doc.split()) + "\n")
        lines.append("| variable | type | default | allowed | description |")
        lines.append("| --- | --- | --- | --- | --- |")
        for key, field in model.model_fields.items():
            schema = _json_schema(section, key)
            lines.append(
                f"| `{env_var(section, key)}` | {_type(schema)} | {_cell(_default(field))} | "
                f"{_cell(_allowed(schema))} | {_cell(field.description or '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.config_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--write", nargs="?", const=str(DEFAULT_PATH), metavar="PATH",
                        help=f"write the page to PATH (default {DEFAULT_PATH}) instead of printing it")
    args = parser.parse_args(argv)
    page = render()
    if args.write:
        Path(args.write).write_text(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
