"""Model weights before the model loads: fetched, checked and cached, so that pods start without the internet.

``model.pretrained`` is made a local, checked file before the engine builds the model:

- ``s3://bucket/key``: downloaded with the worker's S3 client into ``cache_dir`` (worker.weights.s3);
  the engine is then given the local path.
- an OpenCLIP tag: found in the hub cache, or downloaded through OpenCLIP (worker.weights.hub); the
  engine is still given the tag, so that OpenCLIP applies the tag's preprocessing and activation.
- a checkpoint file: checked against ``model.weights_sha256`` when that is set.
- "none", or a model name that carries its own weights (hf-hub:, local-dir:): nothing to fetch.

Anything else is left for the engine, which names the setting. A fetch that fails, after a bounded
number of retries, is WeightsUnavailable (exit 1) with one line naming what was tried and where: a
network that does not answer is not an invalid setting. This package sits above worker.engine and
worker.s3 (it uses the S3 client), below the commands that load a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.config import ModelSettings, Settings, env_var, parse_weights_uri
from worker.errors import ConfigError
from worker.weights.files import check_sha256, sha256_of
from worker.weights.retry import Budget

__all__ = ["Budget", "Weights", "default_cache_dir", "fetch_weights", "with_weights"]

_NAMES_WITH_WEIGHTS = ("hf-hub:", "local-dir:")


@dataclass(frozen=True, slots=True)
class Weights:
    """What was fetched: the value the engine gets as model.pretrained, and the file it will load."""

    pretrained: str
    path: Path | None  # None: random weights, or weights the model name brings


def default_cache_dir() -> Path:
    """Where s3:// checkpoints go when model.cache_dir is unset."""
    return Path.home() / ".cache" / "clip-worker"


def fetch_weights(settings: Settings, *, budget: Budget | None = None) -> Weights:
    """Make the configured weights local and checked. Raises WeightsUnavailable when they cannot be had,
    ConfigError when a checksum is set with nothing to check."""
    model, budget = settings.model, budget or Budget()
    value = model.pretrained.strip()
    if model.model_name.startswith(_NAMES_WITH_WEIGHTS) or value.lower() in ("", "none"):
        if model.weights_sha256 is not None:
            raise ConfigError(env_var("model", "weights_sha256"), "set, but no checkpoint file is loaded to check")
        return Weights(pretrained=model.pretrained, path=None)
    location = parse_weights_uri(value)
    if location is not None:
        from worker.weights.s3 import fetch_s3

        path = fetch_s3(*location, s3=settings.s3, cache_dir=model.cache_dir or default_cache_dir(),
                        sha256=model.weights_sha256, budget=budget)
        return Weights(pretrained=str(path), path=path)
    file = Path(value).expanduser()
    if file.is_file():
        _check(file, model.weights_sha256, what=f"model weights {file}")
        return Weights(pretrained=model.pretrained, path=file)
    from worker.weights.hub import fetch_tag, is_tag

    if is_tag(model.model_name, value):
        path = fetch_tag(model.model_name, value, cache_dir=model.cache_dir, budget=budget)
        _check(path, model.weights_sha256, what=f"model weights {value!r} ({path})")
        return Weights(pretrained=model.pretrained, path=path)
    return Weights(pretrained=model.pretrained, path=None)  # not a file nor a tag: the engine names the setting


def _check(path: Path, sha256: str | None, *, what: str) -> None:
    if sha256 is not None:  # a checkpoint is hundreds of MB: hashed only when there is a digest to match
        check_sha256(sha256_of(path), sha256, what=what)


def with_weights(settings: Settings, weights: Weights) -> ModelSettings:
    """The model settings the engine loads: model.pretrained replaced by what was fetched."""
    return settings.model.model_copy(update={"pretrained": weights.pretrained})
