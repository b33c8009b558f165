"""The console entry point: its commands, each with its own options and help, in-process; and as a
process, settings errors, check (against the real broker and S3), and the batch embed mode."""

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.kafka_broker import KafkaBroker
from harness.models import model_config_dir
from harness.photos import photo_corpus
from harness.s3_server import S3Server
from tests.test_logs import closed_port
from worker import __version__, cli
from worker.cli import run as run_command
from worker.config import Settings

# Each command's own options, and no other command's.
OPTIONS = {
    "run": set(),
    "check": {"--verbose"},
    "embed": {"--output", "--format", "--part-size", "--overwrite"},
    "enqueue": {"--dry-run"},
    "replay": {"--stage", "--exception", "--since", "--until", "--to", "--dry-run"},
    "fetch-model": set(),
}


@pytest.fixture(autouse=True)
def _settings_from_a_clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """main() in-process reads the settings from the environment and sets up logging on stderr: keep the
    caller's CLIP_WORKER_* out, and the root logger as it was (capsys's stderr is gone after the test)."""
    import os

    for name in [name for name in os.environ if name.startswith("CLIP_WORKER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    yield


def exits(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[Any, str, str]:
    """main(argv)'s exit code where argparse exits (--help, --version, a refused option), and its output."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def options_listed(help_text: str) -> set[str]:
    return set(re.findall(r"^  (--[a-z-]+)", help_text, re.MULTILINE)) - {"--help"}


def test_the_commands_are_run_check_embed_enqueue_replay_and_fetch_model() -> None:
    assert [command.NAME for command in cli.COMMANDS] == list(OPTIONS)


def test_embed_help_shows_embeds_options_and_an_example_and_no_other_commands_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = exits(["embed", "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: clip-worker embed ")
    assert options_listed(out) == {"--output", "--format", "--part-size", "--overwrite"}
    for other in ("--stage", "--exception", "--since", "--to", "--dry-run"):
        assert other not in out
    assert "\nexample:\n  clip-worker embed photos/ " in out


@pytest.mark.parametrize("command", list(OPTIONS))
def test_each_commands_help_exits_0_listing_its_own_options_and_one_example(
    command: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = exits([command, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: clip-worker {command} ")
    assert options_listed(out) == OPTIONS[command]
    example = out.split("\nexample:\n", 1)[1].strip().splitlines()
    assert len(example) == 1 and re.search(rf"(^|\s)clip-worker {command}(\s|$)", example[0]), out


@pytest.mark.parametrize(("argv", "refused"), [
    (["replay", "--format", "parquet"], "--format parquet"),
    (["run", "--output", "x"], "--output x"),
    (["enqueue", "--overwrite", "s3://bucket/in"], "--overwrite"),
    (["check", "--dry-run"], "--dry-run"),
    (["embed", "photos", "--stage", "fetch"], "--stage fetch"),
    (["--overwrite"], "--overwrite"),
])
def test_another_commands_option_exits_2_with_argparses_message_and_the_commands_usage(
    argv: list[str], refused: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = exits(argv, capsys)
    command = " ".join(argv[:1]) if not argv[0].startswith("-") else ""
    prog = f"clip-worker {command}".strip()
    assert code == 2 and out == ""
    assert err.startswith(f"usage: {prog} ")
    assert err.splitlines()[-1] == f"{prog}: error: unrecognized arguments: {refused}"


def test_an_unknown_command_exits_2_naming_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = exits(["serve"], capsys)
    assert code == 2
    assert "invalid choice: 'serve' (choose from 'run', 'check', 'embed', 'enqueue', 'replay', 'fetch-model')" in err


def test_options_may_come_between_a_commands_sources() -> None:
    args = cli.build_parser().parse_args(["embed", "a.jpg", "--format", "avro", "b/", "--output", "out", "c.jsonl"])
    assert (args.command, args.sources, args.format, str(args.output)) == (
        "embed", ["a.jpg", "b/", "c.jsonl"], "avro", "out")
    args = cli.build_parser().parse_args(["enqueue", "s3://b/1", "--dry-run", "s3://b/2"])
    assert (args.sources, args.dry_run) == (["s3://b/1", "s3://b/2"], True)


def test_replay_options_become_its_filters() -> None:
    args = cli.build_parser().parse_args(["replay", "--stage", "fetch", "--stage", "decode", "--exception",
                                          "SourceNotFound", "--since", "1970-01-01T00:00:01", "--to", "again"])
    options = cli.replay.options(args)
    assert (options.stages, options.exceptions, options.since_ms, options.until_ms, options.to_topic,
            options.dry_run) == (frozenset({"fetch", "decode"}), frozenset({"SourceNotFound"}), 1000, None, "again",
                                 False)


def test_a_time_that_is_not_iso_8601_exits_2_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = exits(["replay", "--since", "yesterday"], capsys)
    assert code == 2
    assert "argument --since: not an ISO 8601 time: 'yesterday'" in err


@pytest.mark.parametrize("argv", [[], ["run"]])
def test_clip_worker_alone_runs_the_worker_as_run_does(
    argv: list[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[Settings] = []
    monkeypatch.setattr(run_command, "run", lambda settings: ran.append(settings) or 0)
    assert cli.main(argv) == 0
    assert len(ran) == 1 and ran[0].kafka.input_topic


@pytest.mark.parametrize("argv", [[], ["run"]])
def test_clip_worker_alone_exits_2_on_an_invalid_setting_naming_the_variable_as_run_does(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLIP_WORKER_MODEL__INFERENCE_BATCH_SIZE", "0")
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith("clip-worker: invalid setting CLIP_WORKER_MODEL__INFERENCE_BATCH_SIZE: ")


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exits(["--version"], capsys)
    assert code == 0
    assert out.strip() == __version__


def test_help_lists_the_commands_and_says_none_runs_the_worker(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exits(["--help"], capsys)
    assert code == 0
    assert re.findall(r"^    ([a-z-]+)(?: |$)", out, re.MULTILINE) == list(OPTIONS)  # a long name stands alone
    assert "With no command, clip-worker runs the worker." in out


def test_an_option_the_command_checks_itself_exits_2_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    monkeypatch.setattr("worker.cli.embed.embed", lambda *a, **k: pytest.fail("embed ran"))
    assert cli.main(["embed", str(tmp_path), "--part-size", "0", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "clip-worker: invalid setting --part-size: must be at least 1"


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
    # torch and friends take seconds to import: --version, a bad setting, replay and enqueue answer without them.
    modules = ", ".join(f"worker.cli.{name.replace('-', '_')}" for name in OPTIONS)
    probe = (f"import sys, worker.cli, {modules}, worker.stream.replay, worker.batch.commands; "
             "worker.cli.build_parser(); "
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


def test_check_with_an_unreachable_hub_prints_the_table_alone_within_its_budget_and_fails_the_model_row(
    tiny_checkpoint: Path, kafka_broker: KafkaBroker, s3_server: S3Server, s3_bucket: str,
    topic_factory: Callable[..., str], tmp_path: Path,
) -> None:
    hub = f"http://127.0.0.1:{closed_port()}"
    env = check_env(tiny_checkpoint, kafka_broker, s3_server, topics=[topic_factory() for _ in range(3)],
                    bucket=s3_bucket) | {
        "CLIP_WORKER_MODEL__MODEL_NAME": "ViT-B-32", "CLIP_WORKER_MODEL__PRETRAINED": "openai",
        "CLIP_WORKER_MODEL__CACHE_DIR": str(tmp_path), "HF_ENDPOINT": hub}
    started = time.monotonic()
    done = clip_worker("check", env=env)
    assert time.monotonic() - started < 30, "the hub client alone retried for about a minute"
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["clip-worker check: failed: model ViT-B-32"], "no log lines"
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["CHECK", "RESULT", "DETAIL"]
    [model] = [row for row in rows if "FAILED" in row]
    assert model.startswith("model ViT-B-32") and hub in model and "unreachable" in model
    verbose = clip_worker("check", "--verbose", env=env)
    assert "trying again in" in verbose.stderr, "--verbose logs at log.level"
