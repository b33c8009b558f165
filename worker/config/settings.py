"""The settings tree, read from the environment once, and what names a setting's variable."""

from __future__ import annotations

import json
import os
from typing import get_origin

from pydantic import (
    Field,
    ValidationError,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from worker.config import rules
from worker.config.kafka import KafkaSettings
from worker.config.model import ModelSettings
from worker.config.sections import LogSettings, PipelineSettings, S3Settings
from worker.errors import ConfigError

ENV_PREFIX = "CLIP_WORKER_"
ENV_NESTED_DELIMITER = "__"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, frozen=True, extra="forbid"
    )

    model: ModelSettings = Field(default_factory=ModelSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    log: LogSettings = Field(default_factory=LogSettings)


def env_var(*path: str) -> str:
    """The environment variable of a setting, e.g. env_var("model", "device")."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(path).upper()


def every_variable() -> list[str]:
    """The environment variable of every setting."""
    return [env_var(section_name, name) for section_name, section in Settings.model_fields.items()
            for name in section.annotation.model_fields]  # type: ignore[union-attr]


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (overrides win); raise ConfigError naming the first bad
    one, or a CLIP_WORKER_ variable that is no setting (a typo must not be silently ignored)."""
    unknown = rules.unknown_variables(os.environ, prefix=ENV_PREFIX, known=every_variable())
    if unknown:
        variable, closest = unknown[0]
        hint = f"did you mean {closest}?" if closest else "see docs/configuration.md for the settings"
        raise ConfigError(variable, f"no such setting: {hint}")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        path = [str(part) for part in first["loc"]]
        where = f" (at {'.'.join(path[2:])})" if len(path) > 2 else ""  # an item of a list or dict setting
        raise ConfigError(env_var(*path[:2]), first["msg"].removeprefix("Value error, ") + where) from None
    except SettingsError:  # a list or dict setting whose value is not JSON: pydantic-settings names only its section
        raise ConfigError(_unparsable_json_variable(), "not valid JSON (list and dict settings take JSON)") from None


def require_stream_settings(settings: Settings) -> None:
    """What the stream needs beyond valid values, checked before the model loads; raises ConfigError.
    (Batch mode may run without them: local files need no allowlist.)"""
    if not settings.s3.allowed_sources:
        raise ConfigError(env_var("s3", "allowed_sources"),
                          'empty: name the buckets (or bucket/prefix) the worker may read, e.g. ["photos"]')
    if settings.pipeline.output_format == "confluent" and not settings.pipeline.schema_registry_url:
        raise ConfigError(env_var("pipeline", "schema_registry_url"), "output_format confluent needs a registry")


def _unparsable_json_variable() -> str:
    """The first CLIP_WORKER_* variable of a list or dict setting whose value does not parse as JSON."""
    for section_name, section in Settings.model_fields.items():
        for name, field in section.annotation.model_fields.items():  # type: ignore[union-attr]
            variable = env_var(section_name, name)
            if get_origin(field.annotation) in (tuple, dict, list) and variable in os.environ:
                try:
                    json.loads(os.environ[variable])
                except ValueError:
                    return variable
    return ENV_PREFIX + "*"
