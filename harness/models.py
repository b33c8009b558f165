"""Models for tests and demos: a tiny OpenCLIP config, and random-weight checkpoints in open_clip's format.

No test may download weights, so every test builds its own: the real architecture (or a tiny one
registered from ``model_configs/``) with random weights from a fixed seed, saved as a plain
``state_dict`` - the format ``open_clip.create_model(name, pretrained=<path>)`` loads - and loaded by
path through the same code production uses.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from worker.config import ModelSettings

# A full CLIP config (open_clip needs both towers): 2-layer, width-64 ViT with 32-px patches at 224 px,
# so preprocessing is the real models'. Its forward is small, not free: ~15M multiply-adds, ~0.27 ms
# per image on one CPU core, a tenth of a 1024-px photo's decode (BENCHMARKS.md).
TINY_MODEL_NAME = "tiny-vit"


def model_config_dir() -> Path:
    """The folder of this harness's model configs, for ModelSettings.model_config_dir."""
    return Path(__file__).resolve().parent / "model_configs"


def register_model_configs() -> None:
    """Make TINY_MODEL_NAME known to open_clip in this process (the engine does it from settings)."""
    if TINY_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(model_config_dir())


def write_random_checkpoint(model_name: str, path: Path, *, seed: int) -> Path:
    """Build the full model with random weights from ``seed`` and save its state_dict to ``path``."""
    register_model_configs()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        torch.manual_seed(seed)
        model = open_clip.create_model(model_name, pretrained=None, precision="fp32", device="cpu")
    torch.save(model.state_dict(), path)
    return path


def tiny_model_settings(checkpoint: Path, **overrides: object) -> ModelSettings:
    """ModelSettings for the tiny model on the CPU, loading ``checkpoint`` (see write_random_checkpoint)."""
    values: dict[str, object] = {
        "model_name": TINY_MODEL_NAME,
        "pretrained": str(checkpoint),
        "model_config_dir": model_config_dir(),
        "device": "cpu",
    }
    values.update(overrides)
    return ModelSettings(**values)  # type: ignore[arg-type,unused-ignore]  # pydantic validates at runtime
