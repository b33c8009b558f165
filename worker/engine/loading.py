"""Build the model the real OpenCLIP way, keep only its vision tower, and only then put it on the device.

The original operator built the whole CLIP model on the device in fp32 and deleted the text tower
afterwards, so the text weights passed through GPU memory and the peak was the full model's. Here the
model is built (and its checkpoint loaded) on the CPU, ``visual`` is kept and everything else is freed,
and only the vision tower, already cast to its final dtype, is moved to the device.

Loading stays OpenCLIP's own path, so any name it knows works (built-in, ``hf-hub:``, ``local-dir:``,
configs registered from ``model_config_dir``) and ``pretrained`` means what it means to OpenCLIP: a
tag resolved through its cache (``cache_dir``), a local checkpoint file, or "none" for random weights.
An ``s3://`` checkpoint is not read here: worker.weights fetches it (and fetches a tag missing from the
cache, with bounded retries) before the commands load the model, and hands over a local path.
Every way loading can fail becomes a ConfigError naming the setting, at startup, except weights that
could not be downloaded: WeightsUnavailable, since the network is at fault, not the setting.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg

from worker.config import ModelSettings, env_var, rules
from worker.engine.preprocess import preprocess_cfg_from
from worker.errors import ConfigError, WeightsUnavailable

logger = logging.getLogger(__name__)

_SCHEMAS = ("hf-hub:", "local-dir:")
_registered_config_paths: set[Path] = set()
_register_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class VisionTower:
    module: torch.nn.Module  # eval mode, no grads, on ``device`` in ``dtype``
    preprocess_cfg: PreprocessCfg
    device: torch.device
    dtype: torch.dtype
    dim: int
    param_count: int
    param_bytes: int


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Everything alive now (the model, torch, the clients) kept out of every garbage collection in the
    block: it lives as long as the process, and each full collection walked it, on whichever thread
    happened to allocate (measured in BENCHMARKS.md). Unfrozen after, so that exit collects as usual
    (frozen objects are never freed, and triton's nanobind bindings then print leak reports at exit)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def share_cores(device: torch.device, *, preprocess_workers: int) -> None:
    """On a CPU device the tower runs on the cores the preprocess workers decode on. torch's intra-op
    pool, sized for every core, keeps its threads spinning between the forward's operators on cores
    the decoders need (measured in BENCHMARKS.md); so it gets what the workers leave, one thread at
    least. Process-wide: the worker's process calls it once, after loading."""
    if device.type == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - preprocess_workers))


def resolve_device(requested: str) -> torch.device:
    """ "auto" is CUDA, then MPS, then CPU; an explicit device that is not there is a startup error."""
    setting = env_var("model", "device")
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(setting, f"{requested!r} asked for, but torch {torch.__version__} sees no CUDA")
        index = torch.device(requested).index
        index = torch.cuda.current_device() if index is None else index
        if index >= torch.cuda.device_count():
            raise ConfigError(setting, f"{requested!r} asked for, but only {torch.cuda.device_count()} CUDA devices")
        return torch.device("cuda", index)
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(setting, "'mps' asked for, but MPS is not available")
        return torch.device("mps")
    if requested == "cpu":
        return torch.device("cpu")
    raise ConfigError(setting, f"unknown device {requested!r}")


def resolve_dtype(settings: ModelSettings, device: torch.device) -> torch.dtype:
    """Half precision on any CUDA device ("cuda:N" too, unlike the original); fp32 on CPU and MPS."""
    if device.type == "cuda" and settings.use_fp16:
        return torch.bfloat16 if settings.half_dtype == "bfloat16" else torch.float16
    return torch.float32


def register_model_configs(path: Path) -> None:
    """open_clip.add_model_config, once per path (it appends and rescans on every call). The path is
    a folder that exists: the settings (model.model_config_dir) refuse any other."""
    resolved = path.resolve()
    with _register_lock:
        if resolved not in _registered_config_paths:
            open_clip.add_model_config(resolved)
            _registered_config_paths.add(resolved)


def resolve_pretrained(model_name: str, pretrained: str) -> tuple[str | None, bool]:
    """(what to pass open_clip as ``pretrained``, whether to force QuickGELU), or a ConfigError."""
    setting = env_var("model", "pretrained")
    if model_name.startswith(_SCHEMAS):
        return None, False  # the name carries its weights; open_clip ignores `pretrained` for it
    value = pretrained.strip()
    if value.lower() in ("", "none"):
        # A log line, not warnings.warn: it is a deliberate setting (tests, demos), not a code smell.
        logger.warning("pretrained=none: %s gets random weights; its embeddings mean nothing", model_name)
        return None, False
    if value.lower().startswith("s3://"):
        raise ConfigError(setting, f"{value} must be fetched first (worker.weights.fetch_weights), then loaded by path")
    path = rules.expanded(value)
    if path.is_file():
        return str(path), False
    config_name = model_name.replace("/", "-")  # as open_clip looks it up
    tag_cfg = open_clip.get_pretrained_cfg(config_name, value)
    if tag_cfg:
        # OpenAI-trained tags (and some LAION ones) were trained with QuickGELU, which the plain config
        # (e.g. ViT-B-32) lacks; open_clip then only warns and runs nn.GELU. Follow the tag instead.
        model_quick = bool((open_clip.get_model_config(config_name) or {}).get("quick_gelu", False))
        return value, bool(tag_cfg.get("quick_gelu", False)) and not model_quick
    try:
        rules.checkpoint_file(value)
    except ValueError as exc:
        raise ConfigError(setting, str(exc)) from None
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(config_name)) or "none known"
    raise ConfigError(setting, f"{value!r} is neither a checkpoint file nor a pretrained tag of {model_name} ({tags})")


def forward(module: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The tower's pooled embedding; towers built with output_tokens also return the tokens."""
    out = module(images)
    pooled: torch.Tensor = out[0] if isinstance(out, tuple) else out
    return pooled


def load_vision_tower(settings: ModelSettings) -> VisionTower:
    if settings.model_config_dir is not None:
        register_model_configs(settings.model_config_dir)
    name = settings.model_name
    if not name.startswith(_SCHEMAS) and open_clip.get_model_config(name.replace("/", "-")) is None:
        known = ", ".join(open_clip.list_models()[:12])
        raise ConfigError(env_var("model", "model_name"), f"unknown OpenCLIP model {name!r} (known: {known}, ...)")
    pretrained, quick_gelu = resolve_pretrained(name, settings.pretrained)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings, device)
    if quick_gelu:
        logger.info("pretrained tag %s was trained with QuickGELU: building %s with it", pretrained, name)

    try:
        # Always on the CPU in fp32: the checkpoint is loaded here, and the text tower never moves.
        model = open_clip.create_model(
            name,
            pretrained=pretrained,
            precision="fp32",
            device="cpu",
            force_quick_gelu=quick_gelu,
            cache_dir=str(settings.cache_dir) if settings.cache_dir is not None else None,
        )
    except MemoryError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError, OSError, ValueError, pickle errors...
        if str(exc).startswith("Failed to download"):  # open_clip's words for a tag the hub did not give
            raise WeightsUnavailable(f"could not download {name} weights {pretrained!r}: {exc}") from exc
        setting = "pretrained" if pretrained is not None else "model_name"
        reason = f"could not build {name} (pretrained={pretrained}): {exc}"
        raise ConfigError(env_var("model", setting), reason) from exc

    try:
        preprocess_cfg = preprocess_cfg_from(dict(open_clip.get_model_preprocess_cfg(model)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(env_var("model", "model_name"), f"{name} has an unusable preprocess config: {exc}") from exc
    module: torch.nn.Module = model.visual
    del model  # the last reference to the text tower: its tensors are freed here
    gc.collect()

    module.eval()
    module.requires_grad_(False)
    module.to(dtype=dtype)  # cast on the CPU first, so the device never holds an fp32 copy
    module.to(device)
    param_count = sum(p.numel() for p in module.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())

    # One forward on random input: proves the tower runs on this device in this dtype, initialises the
    # device's libraries now rather than on the first record, and tells the embedding size.
    size = (preprocess_cfg.size, preprocess_cfg.size) if isinstance(preprocess_cfg.size, int) else preprocess_cfg.size
    probe = torch.randn((1, 3, *size), generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            out = forward(module, probe.to(device=device, dtype=dtype))
    except RuntimeError as exc:  # no room on the device, or this dtype is not supported there
        raise ConfigError(env_var("model", "device"), f"{name} cannot run on {device} in {dtype}: {exc}") from exc
    if out.ndim != 2:
        raise ConfigError(env_var("model", "model_name"), f"{name}'s vision tower returns shape {tuple(out.shape)}")
    dim = int(out.shape[-1])
    logger.info(
        "loaded %s vision tower (pretrained=%s): %d parameters, %.1f MB, dim %d, on %s in %s",
        name, pretrained, param_count, param_bytes / 1e6, dim, device, dtype,
    )
    return VisionTower(module, preprocess_cfg, device, dtype, dim, param_count, param_bytes)
