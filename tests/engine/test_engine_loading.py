"""Loading: the real OpenCLIP path, vision tower only, and every bad setting named at startup."""

from __future__ import annotations

import gc
import logging
import os
import weakref
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch

from harness.models import TINY_MODEL_NAME, model_config_dir, register_model_configs, tiny_model_settings
from worker.config import ModelSettings, env_var
from worker.engine import Embedder
from worker.engine.loading import frozen_heap, resolve_device, resolve_dtype, resolve_pretrained, share_cores
from worker.errors import ConfigError

NO_CUDA = not torch.cuda.is_available()


def test_the_loaded_module_is_the_vision_tower_and_nothing_else(
    vitb32_exact: Embedder, vitb32_checkpoint: Path
) -> None:
    reference = open_clip.create_model("ViT-B-32", pretrained=None)
    vision = sum(p.numel() for p in reference.visual.parameters())
    total = sum(p.numel() for p in reference.parameters())
    assert vitb32_exact.tower.param_count == vision == 87_849_216  # open_clip's model_profile: 87.85 M
    assert total - vision > 60_000_000  # the text tower that must not come along
    loaded = vitb32_exact.module.state_dict()
    checkpoint = torch.load(vitb32_checkpoint, map_location="cpu", weights_only=True)
    visual = {key.removeprefix("visual."): value for key, value in checkpoint.items() if key.startswith("visual.")}
    assert loaded.keys() == visual.keys()
    assert all(torch.equal(loaded[key], visual[key]) for key in visual)  # the checkpoint's weights, loaded
    assert vitb32_exact.dim == 512


def test_no_text_parameter_outlives_loading(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[torch.nn.Module] = []
    real_create_model = open_clip.create_model

    def spy(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = real_create_model(*args, **kwargs)
        created.append(model)
        return model

    monkeypatch.setattr(open_clip, "create_model", spy)
    embedder = Embedder.load(tiny_model_settings(tiny_checkpoint))
    (model,) = created
    created.clear()
    text = [weakref.ref(p) for name, p in model.named_parameters() if not name.startswith("visual.")]
    vision = [weakref.ref(p) for name, p in model.named_parameters() if name.startswith("visual.")]
    model_ref = weakref.ref(model)
    del model
    gc.collect()
    assert len(text) > 5 and model_ref() is None
    assert all(ref() is None for ref in text), "a text-tower parameter is still referenced"
    assert all(ref() is not None for ref in vision)  # the weakrefs do see live tensors
    assert embedder.tower.param_count == sum(p.numel() for p in embedder.module.parameters())


def test_fp16_never_applies_on_the_cpu(tiny_checkpoint: Path) -> None:
    embedder = Embedder.load(tiny_model_settings(tiny_checkpoint, use_fp16=True))
    assert embedder.device == torch.device("cpu") and embedder.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in embedder.module.parameters())


@pytest.mark.parametrize(
    ("device", "use_fp16", "half_dtype", "expected"),
    [
        (torch.device("cuda", 0), True, "float16", torch.float16),
        (torch.device("cuda", 3), True, "float16", torch.float16),  # the original ran "cuda:N" in fp32
        (torch.device("cuda", 0), True, "bfloat16", torch.bfloat16),
        (torch.device("cuda", 0), False, "float16", torch.float32),
        (torch.device("cpu"), True, "float16", torch.float32),
        (torch.device("mps"), True, "float16", torch.float32),
    ],
)
def test_half_precision_on_any_cuda_device_only(
    device: torch.device, use_fp16: bool, half_dtype: str, expected: torch.dtype
) -> None:
    settings = ModelSettings(use_fp16=use_fp16, half_dtype=half_dtype)  # type: ignore[arg-type]
    assert resolve_dtype(settings, device) == expected


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_missing_cuda_device_fails_at_startup(device: str, tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Embedder.load(tiny_model_settings(tiny_checkpoint, device=device))
    assert caught.value.setting == env_var("model", "device") == "CLIP_WORKER_MODEL__DEVICE"


def test_a_missing_mps_device_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="MPS") as caught:
        resolve_device("mps")
    assert caught.value.setting == "CLIP_WORKER_MODEL__DEVICE"


@pytest.mark.parametrize(
    ("overrides", "setting", "match"),
    [
        ({"model_name": "ViT-Q-99"}, "MODEL_NAME", "unknown OpenCLIP model"),
        ({"pretrained": "no-such-tag"}, "PRETRAINED", "neither a checkpoint file nor a pretrained tag"),
    ],
)
def test_bad_settings_fail_at_startup_naming_the_variable(
    overrides: dict[str, object], setting: str, match: str, tiny_checkpoint: Path
) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        Embedder.load(tiny_model_settings(tiny_checkpoint, **overrides))
    assert caught.value.setting == f"CLIP_WORKER_MODEL__{setting}"


def test_a_broken_checkpoint_is_a_pretrained_error(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """A missing file, a folder or a missing config folder are refused with the settings
    (tests/test_settings_refused_early.py); a file that is no checkpoint only when loading."""
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not build") as caught:
        Embedder.load(tiny_model_settings(tiny_checkpoint, pretrained=str(broken)))
    assert caught.value.setting == "CLIP_WORKER_MODEL__PRETRAINED"


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["visual.proj"] = torch.zeros(7, 7)
    wrong = tmp_path / "wrong.pt"
    torch.save(state, wrong)
    with pytest.raises(ConfigError, match="size mismatch") as caught:
        Embedder.load(tiny_model_settings(tiny_checkpoint, pretrained=str(wrong)))
    assert caught.value.setting == "CLIP_WORKER_MODEL__PRETRAINED"


def test_tags_resolve_without_a_download_and_follow_their_quickgelu() -> None:
    assert resolve_pretrained("ViT-B-32", "openai") == ("openai", True)  # trained with QuickGELU
    assert resolve_pretrained("ViT-B-32-quickgelu", "openai") == ("openai", False)  # already in the config
    assert resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k") == ("laion2b_s34b_b79k", False)
    assert resolve_pretrained("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "openai") == (None, False)


def test_random_weights_are_logged_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    register_model_configs()
    settings = ModelSettings(model_name=TINY_MODEL_NAME, pretrained="none", model_config_dir=model_config_dir())
    with caplog.at_level(logging.WARNING, logger="worker.engine"):
        embedder = Embedder.load(settings)
    assert embedder.dim == 32
    assert any("random weights" in record.getMessage() for record in caplog.records)  # and no warnings.warn:
    # pytest runs with filterwarnings=error, so one would have failed the load above


def test_field_name_is_derived_avro_safe_or_set(tiny_checkpoint: Path) -> None:
    embedder = Embedder.load(tiny_model_settings(tiny_checkpoint))
    assert embedder.field_name == "image_clip_emb_tiny_vit"
    assert ModelSettings(model_name="ViT-L-14").output_field == "image_clip_emb_vit_l_14"
    hub = ModelSettings(model_name="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert hub.output_field == "image_clip_emb_hf_hub_laion_clip_vit_b_32_laion2b_s34b_b79k"
    named = Embedder.load(tiny_model_settings(tiny_checkpoint, feature_field_name="emb"))
    assert named.field_name == "emb" and named.batch_size == 32


@pytest.mark.parametrize(("cores", "workers", "threads"), [(4, 1, 3), (4, 3, 1), (2, 2, 1), (2, 8, 1)])
def test_on_a_cpu_device_the_tower_gets_the_cores_the_preprocess_workers_leave(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, threads: int
) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    try:
        share_cores(torch.device("cpu"), preprocess_workers=workers)
        assert torch.get_num_threads() == threads
        torch.set_num_threads(7)
        share_cores(torch.device("cuda", 0), preprocess_workers=workers)
        assert torch.get_num_threads() == 7, "a CUDA device's host threads are left as they are"
    finally:
        torch.set_num_threads(before)


def test_the_heap_is_frozen_for_the_block_and_unfrozen_after_even_when_it_raises() -> None:
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError, match="inside"), frozen_heap():
        assert gc.get_freeze_count() > 0, "what was alive is out of the collections"
        raise RuntimeError("inside")
    assert gc.get_freeze_count() == 0, "exit collects as usual"
