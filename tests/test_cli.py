"""The console entry point, as a process: settings errors, check, and the batch embed mode."""

import json
import subprocess
import sys
from pathlib import Path

from harness.models import model_config_dir
from harness.photos import photo_corpus


def clip_worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True,
                          timeout=240, check=False)


def tiny_env(checkpoint: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "CLIP_WORKER_MODEL__MODEL_NAME": "tiny-vit",
        "CLIP_WORKER_MODEL__PRETRAINED": str(checkpoint),
        "CLIP_WORKER_MODEL__MODEL_CONFIG_DIR": str(model_config_dir()),
        "CLIP_WORKER_MODEL__DEVICE": "cpu",
    }


def test_an_invalid_setting_exits_2_naming_the_variable(tiny_checkpoint: Path) -> None:
    done = clip_worker("check", env=tiny_env(tiny_checkpoint) | {"CLIP_WORKER_MODEL__INFERENCE_BATCH_SIZE": "0"})
    assert done.returncode == 2
    assert "CLIP_WORKER_MODEL__INFERENCE_BATCH_SIZE" in done.stderr


def test_embed_writes_one_line_per_file_and_an_error_line_for_a_bad_one(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    (name, data), *_ = photo_corpus(long_sides=(640,), qualities=(85,))
    good, bad = tmp_path / name, tmp_path / "notes.txt"
    good.write_bytes(data)
    bad.write_bytes(b"not an image")
    done = clip_worker("embed", str(good), str(bad), env=tiny_env(tiny_checkpoint))
    assert done.returncode == 1, "a failed file makes the exit code say so"
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(good), str(bad)]
    assert len(lines[0]["image_clip_emb_tiny_vit"]) == 32
    assert "NotAnImage" in lines[1]["error"] and "image_clip_emb_tiny_vit" not in lines[1]
