"""The console entry point, as a process: settings errors, check (against the real broker and S3), and
the batch embed mode."""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from harness.kafka_broker import KafkaBroker
from harness.models import model_config_dir
from harness.photos import photo_corpus
from harness.s3_server import S3Server


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


def test_the_commands_that_need_no_model_do_not_import_torch() -> None:
    # ~3 s of imports on a 2-core machine: --version, a bad setting, replay and enqueue answer without them.
    probe = ("import sys, worker.cli, worker.replay, worker.batch.commands; "
             "print(sorted({'torch', 'torchvision', 'open_clip'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_embed_writes_one_line_per_file_and_an_error_line_for_a_bad_one(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    (name, data), *_ = photo_corpus(long_sides=(640,), qualities=(85,))
    good, bad = tmp_path / name, tmp_path / "notes.txt"
    good.write_bytes(data)
    bad.write_bytes(b"not an image")
    done = clip_worker("embed", str(good), str(bad), env=tiny_env(tiny_checkpoint))
    assert done.returncode == 1, "a failed file makes the exit code say so"
    lines = {line["id"]: line for line in map(json.loads, done.stdout.splitlines())}
    assert lines.keys() == {str(good), str(bad)}
    assert len(lines[str(good)]["image_clip_emb_tiny_vit"]) == 32
    assert lines[str(bad)]["error_class"] == "NotAnImage" and "image_clip_emb_tiny_vit" not in lines[str(bad)]
    assert done.stderr.splitlines()[-1].startswith("embedded 1, failed 1 (NotAnImage 1), skipped 0")


def test_embed_refuses_a_binary_format_without_an_output_folder_before_loading_anything(tiny_checkpoint: Path) -> None:
    done = clip_worker("embed", "--format", "avro", "/tmp", env=tiny_env(tiny_checkpoint))
    assert done.returncode == 2
    assert done.stderr.strip() == "clip-worker: invalid setting --output: avro is written to files: name a folder"


def check_env(checkpoint: Path, broker: KafkaBroker, s3: S3Server, *, topics: list[str], bucket: str) -> dict[str, str]:
    return tiny_env(checkpoint) | s3.env() | {
        "CLIP_WORKER_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "CLIP_WORKER_KAFKA__INPUT_TOPIC": topics[0],
        "CLIP_WORKER_KAFKA__OUTPUT_TOPIC": topics[1],
        "CLIP_WORKER_KAFKA__DEAD_LETTER_TOPIC": topics[2],
        "CLIP_WORKER_S3__ENDPOINT_URL": s3.endpoint_url,
        "CLIP_WORKER_S3__ALLOWED_SOURCES": json.dumps([bucket]),
    }


def test_check_prints_a_table_of_what_answered_and_exits_0_when_everything_did(
    tiny_checkpoint: Path, kafka_broker: KafkaBroker, s3_server: S3Server, s3_bucket: str,
    topic_factory: Callable[..., str],
) -> None:
    topics = [topic_factory() for _ in range(3)]
    done = clip_worker("check", env=check_env(tiny_checkpoint, kafka_broker, s3_server, topics=topics,
                                              bucket=s3_bucket))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert [row.split()[:2] for row in rows[1:] if row.startswith(("topic", "s3", "model"))] == [
        ["topic", topics[0]], ["topic", topics[1]], ["topic", topics[2]], ["s3", s3_bucket], ["model", "tiny-vit"]]
    assert all("  OK  " in row for row in rows[1:])
    assert "dim 32, field image_clip_emb_tiny_vit" in rows[-1]


def test_check_exits_1_naming_each_check_that_failed(
    tiny_checkpoint: Path, kafka_broker: KafkaBroker, s3_server: S3Server, s3_bucket: str,
    topic_factory: Callable[..., str],
) -> None:
    topics = [topic_factory(), "no-such-output", topic_factory()]
    done = clip_worker("check", env=check_env(tiny_checkpoint, kafka_broker, s3_server, topics=topics,
                                              bucket="no-such-bucket"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "clip-worker check: failed: topic no-such-output (output), s3 no-such-bucket")
    assert sum("FAILED" in row for row in done.stdout.splitlines()) == 2
