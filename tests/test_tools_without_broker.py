"""The one-shot commands against a port no broker listens on: one line saying so, exit code 1, no
traceback and none of librdkafka's lines, within their bound (replay and enqueue: the first request's
10 s, worker/kafka/health.py's probe; check: its 5 s per dependency). A property librdkafka refuses is
an invalid setting instead: exit code 2, naming it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.test_cli import clip_worker, tiny_env
from tests.test_logs import closed_port


@pytest.fixture
def no_broker(tiny_checkpoint: Path) -> dict[str, str]:
    return tiny_env(tiny_checkpoint) | {"CLIP_WORKER_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}


def run_timed(*args: str, env: dict[str, str]) -> tuple[int, list[str], float]:
    started = time.monotonic()
    done = clip_worker(*args, env=env)
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip()], time.monotonic() - started


@pytest.mark.parametrize("command", [("replay",), ("enqueue", "MANIFEST")])
def test_replay_and_enqueue_without_a_broker_say_so_in_one_line_and_exit_1_within_the_bound(
    command: tuple[str, ...], no_broker: dict[str, str], tmp_path: Path
) -> None:
    manifest = tmp_path / "inputs.jsonl"
    manifest.write_text('{"id": "a", "uri": "s3://bucket/a.jpg"}\n')
    code, lines, seconds = run_timed(*(str(manifest) if arg == "MANIFEST" else arg for arg in command), env=no_broker)
    assert code == 1 and seconds < 20, (code, seconds, lines)
    assert len(lines) == 1, lines
    assert "stopping: Kafka unreachable: no broker of 127.0.0.1:" in lines[0] and "within 10 s" in lines[0]


def test_check_without_a_broker_fails_its_kafka_rows_in_one_line_of_stderr_and_exits_1(
    no_broker: dict[str, str],
) -> None:
    code, lines, seconds = run_timed("check", env=no_broker)
    assert code == 1 and seconds < 60, (code, seconds, lines)
    assert not [line for line in lines if "Traceback" in line or "librdkafka" in line or "Connect to" in line], lines
    assert [line for line in lines if line.startswith("clip-worker check: failed: kafka 127.0.0.1:")] == lines[-1:]


def test_a_property_librdkafka_refuses_exits_2_naming_the_setting(no_broker: dict[str, str]) -> None:
    env = no_broker | {"CLIP_WORKER_KAFKA__CLIENT_CONFIG": '{"socket.keepalive.enable": "maybe"}'}
    code, lines, _ = run_timed("replay", env=env)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("clip-worker: invalid setting CLIP_WORKER_KAFKA__CLIENT_CONFIG: ")
    assert "socket.keepalive.enable" in lines[0]
