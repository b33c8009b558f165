"""`clip-worker fetch-model`: put the configured model weights into the cache, and exit.

For whatever must have the weights before a worker starts: an init container that fills the pod's
cache volume, a one-off job that fills a volume the pods share, or a step of an image build that bakes
them in. It fetches exactly what `run` would (worker/weights), into the same ``model.cache_dir``, and
prints the file's path; the worker started afterwards with the same settings finds it there without
any network request.
"""

from __future__ import annotations

import argparse

from worker.config import Settings, env_var
from worker.errors import ConfigError

NAME = "fetch-model"
SUMMARY = "fetch the configured model weights into the cache (model.cache_dir) and exit"
DESCRIPTION = """\
Fetch the weights model.pretrained names into model.cache_dir, as `clip-worker run` would before
loading, and print the local file's path:

  s3://bucket/key      downloaded with the S3 settings' endpoint, region and credentials, checked
                       against model.weights_sha256 when set, and moved into place only when whole
  an OpenCLIP tag      downloaded through OpenCLIP from the Hugging Face hub (HF_HUB_OFFLINE=1: only
                       checked to be in the cache)
  a checkpoint file    checked against model.weights_sha256 when set

Nothing is loaded onto a device. Every setting comes from CLIP_WORKER_* environment variables.
Exit code 0 when the weights are in place, 1 when they could not be fetched or failed their checksum
(one line says what was tried), 2 on an invalid setting."""
EXAMPLE = ("CLIP_WORKER_MODEL__PRETRAINED=s3://models/vit-b-32.pt CLIP_WORKER_MODEL__CACHE_DIR=/cache "
           "clip-worker fetch-model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """None: it fetches what the environment's settings name, as the worker would."""


def handle(settings: Settings, args: argparse.Namespace) -> int:
    """The path on stdout; a failure is WeightsUnavailable (exit 1) or ConfigError (exit 2), raised to main."""
    from worker.weights import fetch_weights

    weights = fetch_weights(settings)
    if weights.path is not None:
        print(weights.path, flush=True)
        return 0
    model = settings.model
    if model.pretrained.strip().lower() in ("", "none") or model.model_name.startswith(("hf-hub:", "local-dir:")):
        print(f"nothing to fetch: {model.model_name} with pretrained={model.pretrained}", flush=True)
        return 0
    raise ConfigError(env_var("model", "pretrained"), f"{model.pretrained!r} is neither an s3:// URI, "
                      f"a checkpoint file nor a pretrained tag of {model.model_name}")
