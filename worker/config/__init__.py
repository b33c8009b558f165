"""The worker's settings: one frozen tree, read from the environment once at startup.

Every setting has an environment variable: ``CLIP_WORKER_`` + section + ``__`` + name, upper-cased,
e.g. ``CLIP_WORKER_MODEL__MODEL_NAME=ViT-L-14`` or ``CLIP_WORKER_KAFKA__BOOTSTRAP_SERVERS=k:9092``.
List settings take JSON (``CLIP_WORKER_S3__ALLOWED_SOURCES='["photos", "raw/2026/"]'``).
The model section keeps the parameter names and defaults of the batch operator this worker grew
from (ImageClipEmbeddingRefiner). An invalid value stops the worker at startup with a ConfigError
that names the variable.
"""

from worker.config.kafka import KafkaSettings
from worker.config.model import ModelSettings, parse_weights_uri
from worker.config.sections import LogSettings, PipelineSettings, S3Settings
from worker.config.settings import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    Settings,
    env_var,
    every_variable,
    load_settings,
    require_stream_settings,
)

__all__ = [
    "ENV_NESTED_DELIMITER", "ENV_PREFIX", "KafkaSettings", "LogSettings", "ModelSettings", "PipelineSettings",
    "S3Settings", "Settings", "env_var", "every_variable", "load_settings", "parse_weights_uri",
    "require_stream_settings",
]
