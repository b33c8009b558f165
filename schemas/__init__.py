"""The message schemas, shipped inside the package as ``worker.schemas`` (see pyproject.toml)."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any


def load_schema(name: str) -> dict[str, Any]:
    """The parsed JSON of one schema file of this folder, e.g. ``load_schema("image-embedding.avsc")``."""
    parsed: dict[str, Any] = json.loads(files(__name__).joinpath(name).read_text(encoding="utf-8"))
    return parsed
