"""`clip-worker fetch-model` in-process through main(): 0 with the file in the cache and its path on stdout,
1 when the weights fail their checksum (nothing left behind), 2 for a value that names no weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.models import model_config_dir
from harness.s3_server import S3Server
from tests.conftest import Credentials
from tests.weights.conftest import StoredCheckpoint, cached_files
from worker import cli


@pytest.fixture
def environment(
    monkeypatch: pytest.MonkeyPatch, s3_server: S3Server, aws_credentials: Credentials, tmp_path: Path,
) -> Iterator[None]:
    """The tiny model's settings with the test's cache and S3 endpoint; logging left as pytest set it."""
    for name in [name for name in os.environ if name.startswith("CLIP_WORKER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    values = {"MODEL__MODEL_NAME": "tiny-vit", "MODEL__MODEL_CONFIG_DIR": str(model_config_dir()),
              "MODEL__CACHE_DIR": str(tmp_path / "cache"), "S3__ENDPOINT_URL": s3_server.endpoint_url}
    for name, value in values.items():
        monkeypatch.setenv(f"CLIP_WORKER_{name}", value)
    yield


@pytest.mark.usefixtures("environment")
def test_fetch_model_exits_0_leaving_the_checked_file_in_the_cache_and_printing_its_path(
    stored_checkpoint: StoredCheckpoint, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("CLIP_WORKER_MODEL__PRETRAINED", stored_checkpoint.uri)
    monkeypatch.setenv("CLIP_WORKER_MODEL__WEIGHTS_SHA256", stored_checkpoint.sha256)
    assert cli.main(["fetch-model"]) == 0
    [path] = cached_files(tmp_path / "cache")
    assert capsys.readouterr().out == f"{path}\n" and path.read_bytes() == stored_checkpoint.data


@pytest.mark.usefixtures("environment")
def test_fetch_model_exits_1_on_a_wrong_checksum_leaving_nothing_in_the_cache(
    stored_checkpoint: StoredCheckpoint, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    monkeypatch.setenv("CLIP_WORKER_MODEL__PRETRAINED", stored_checkpoint.uri)
    monkeypatch.setenv("CLIP_WORKER_MODEL__WEIGHTS_SHA256", "a" * 64)
    assert cli.main(["fetch-model"]) == 1
    assert capsys.readouterr().out == ""
    assert cached_files(tmp_path / "cache") == []
    [stopping] = [record.getMessage() for record in caplog.records if record.getMessage().startswith("stopping:")]
    assert stored_checkpoint.uri in stopping and "a" * 64 in stopping


@pytest.mark.usefixtures("environment")
def test_fetch_model_exits_2_naming_the_setting_when_pretrained_names_no_weights(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLIP_WORKER_MODEL__PRETRAINED", "no-such-tag")
    assert cli.main(["fetch-model"]) == 2
    assert "invalid setting CLIP_WORKER_MODEL__PRETRAINED: 'no-such-tag' is neither" in capsys.readouterr().err
