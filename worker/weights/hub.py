"""An OpenCLIP pretrained tag (``openai``, ``laion2b_s34b_b79k``...), made present in the hub cache.

OpenCLIP downloads a tag's weights from the Hugging Face hub into ``cache_dir`` (the hub's cache
layout) when it builds the model. Left to itself, an unreachable hub costs about half a minute of the
hub client's retries per file, and the failure surfaced as a bad setting. Here, before the model is
built:

- a tag whose file is in the cache is used without any network request;
- with ``HF_HUB_OFFLINE=1`` a tag that is not cached fails at once, saying so and what to do;
- otherwise one HEAD request with a timeout asks whether the hub answers, retried within the budget
  (worker.weights.retry), and only then does OpenCLIP's own download (open_clip.download_pretrained)
  fetch the file, so what lands in the cache is exactly what OpenCLIP then loads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import open_clip
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

from worker.errors import WeightsUnavailable
from worker.weights.retry import Budget, describe, retried

logger = logging.getLogger(__name__)

# open_clip's names for a hub repo's weights, and the safetensors file it prefers to each (pretrained.py).
_DEFAULT_FILE = "open_clip_pytorch_model.bin"
_SAFETENSORS_OF_DEFAULT = "open_clip_model.safetensors"
_OFFLINE_ADVICE = ("run `clip-worker fetch-model` with the same cache_dir where the hub is reachable, or set "
                   "CLIP_WORKER_MODEL__PRETRAINED to a checkpoint file or an s3:// URI")


def is_tag(model_name: str, value: str) -> bool:
    return bool(open_clip.get_pretrained_cfg(model_name.replace("/", "-"), value))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as the hub client reads it, also when it was set after the client was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or value.upper() in {"1", "ON", "YES", "TRUE"}


def fetch_tag(model_name: str, tag: str, *, cache_dir: Path | None, budget: Budget) -> Path:
    """The cached file of `tag`'s weights for `model_name`, downloaded through OpenCLIP if missing."""
    cfg = open_clip.get_pretrained_cfg(model_name.replace("/", "-"), tag)
    repo_id, filename = os.path.split(cfg["hf_hub"])
    filename = filename or _DEFAULT_FILE
    cache = str(cache_dir) if cache_dir is not None else None
    for candidate in (*_safetensors_of(filename), filename):
        cached = try_to_load_from_cache(repo_id, candidate, cache_dir=cache)
        if isinstance(cached, str):
            logger.info("model weights %s of %s: using the cached %s", tag, model_name, cached)
            return Path(cached)
    where = f"model weights {tag!r} of {model_name} (hf-hub {repo_id})"
    if hub_offline():
        raise WeightsUnavailable(f"{where}: HF_HUB_OFFLINE is set and they are not in the cache "
                                 f"{cache or constants.HF_HUB_CACHE}: {_OFFLINE_ADVICE}")
    what = f"could not fetch {where} from {constants.ENDPOINT}"
    url = hf_hub_url(repo_id, filename, endpoint=constants.ENDPOINT)
    retried(lambda: _ask_hub(url, timeout=budget.request_seconds), what=what, budget=budget,
            transient=lambda exc: True)
    logger.info("%s: downloading into %s", where, cache or constants.HF_HUB_CACHE)
    try:
        return Path(open_clip.download_pretrained(cfg, cache_dir=cache))
    except Exception as exc:  # the hub answered the HEAD but not the download: still not a bad setting
        raise WeightsUnavailable(f"{what}: {describe(exc)}") from exc


def _safetensors_of(filename: str) -> tuple[str, ...]:
    if filename == _DEFAULT_FILE:
        return (_SAFETENSORS_OF_DEFAULT,)
    return (filename[:-4] + ".safetensors",) if filename.endswith((".bin", ".pth")) else ()


def _ask_hub(url: str, *, timeout: float) -> None:
    """Raises while the hub does not answer (no HTTP response, or 429 / 5xx). Any other answer, a 404
    included, means it is reachable: OpenCLIP's download then tries the files it knows and says what it found."""
    try:
        get_hf_file_metadata(url, timeout=timeout, endpoint=constants.ENDPOINT)
    except Exception as exc:  # the hub client raises its own errors and httpx's
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is None or status == 429 or status >= 500:
            raise
