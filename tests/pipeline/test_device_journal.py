"""The device journal (worker/images/device/journal.py): the records on the device when a worker dies
are the next worker's suspects, wherever in a shared directory its slot was, and whatever the file holds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.models import tiny_model_settings
from tests.pipeline.conftest import Sink
from worker.config import Settings
from worker.engine.gpu_decode import JpegHeader
from worker.errors import ConfigError
from worker.formats.positions import BatchPosition, KafkaPosition
from worker.images.device import journal as device_journal
from worker.images.device.journal import DeviceJournal
from worker.images.device.route import DecodeRouter
from worker.images.device.route import open_journal as open_device_journal
from worker.images.work import Work
from worker.metrics import Metrics

sources = st.one_of(
    st.builds(KafkaPosition, topic=st.text(max_size=40), partition=st.integers(-(2**31), 2**31 - 1),
              offset=st.integers(-(2**63), 2**63 - 1)),
    st.builds(BatchPosition, input=st.text(max_size=40), index=st.integers(0, 2**63 - 1)),  # batch mode's
)


def test_a_batch_held_when_its_worker_stops_is_the_next_workers_suspect_and_a_released_one_is_not(
    tmp_path: Path,
) -> None:
    first = DeviceJournal.open(tmp_path)
    assert first.suspects == frozenset()
    first.hold([KafkaPosition("in", 0, 1), KafkaPosition("in", 1, 7)])
    first.release()
    first.hold([KafkaPosition("in", 2, 9)])
    first.close()  # stopped with the second batch on the device
    second = DeviceJournal.open(tmp_path)
    assert second.suspects == {KafkaPosition("in", 2, 9)}
    assert second.is_suspect(KafkaPosition("in", 2, 9)) and not second.is_suspect(KafkaPosition("in", 0, 1))
    second.close()


def test_suspects_are_written_again_with_every_batch_so_a_second_crash_does_not_forget_them(tmp_path: Path) -> None:
    first = DeviceJournal.open(tmp_path)
    first.hold([KafkaPosition("in", 0, 1)])
    first.close()
    second = DeviceJournal.open(tmp_path)
    second.hold([KafkaPosition("in", 0, 2)])
    second.release()
    second.hold([KafkaPosition("in", 0, 3)])
    second.close()  # crashed again, on another batch, before the first suspect came back
    third = DeviceJournal.open(tmp_path)
    assert third.suspects == {KafkaPosition("in", 0, 1), KafkaPosition("in", 0, 3)}
    third.release()
    third.close()


def test_only_the_newest_suspects_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_journal, "KEEP", 3)
    first = DeviceJournal.open(tmp_path)
    first.hold([KafkaPosition("in", 0, n) for n in range(5)])
    first.close()
    second = DeviceJournal.open(tmp_path)
    assert second.suspects == {KafkaPosition("in", 0, n) for n in (2, 3, 4)}
    second.close()


def test_live_workers_sharing_a_directory_claim_their_own_slots_and_a_restart_reads_every_free_one(
    tmp_path: Path,
) -> None:
    a, b = DeviceJournal.open(tmp_path), DeviceJournal.open(tmp_path)
    assert a.path != b.path
    a.hold([KafkaPosition("in", 0, 1)])
    b.hold([KafkaPosition("in", 1, 1)])
    a.close()  # a crashes; b lives on, its batch in its own slot
    restarted = DeviceJournal.open(tmp_path)
    assert restarted.suspects == {KafkaPosition("in", 0, 1)}
    b.close()
    restarted.close()


def test_a_worker_killed_while_holding_a_batch_leaves_it_to_the_next(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from worker.formats.positions import BatchPosition, KafkaPosition
        from worker.images.device.journal import DeviceJournal
        DeviceJournal.open(Path({str(tmp_path)!r})).hold([KafkaPosition("in", 4, 44)])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == -9
    journal = DeviceJournal.open(tmp_path)
    assert journal.suspects == {KafkaPosition("in", 4, 44)}
    assert journal.path.name == "slot-0.journal"  # the dead worker's lock went with it
    journal.close()


def test_a_closed_journal_writes_nothing_even_where_its_descriptor_number_is_reused(tmp_path: Path) -> None:
    journal = DeviceJournal.open(tmp_path)
    journal.hold([KafkaPosition("in", 0, 1)])
    journal.close()
    other = tmp_path / "other"
    other.write_bytes(b"someone else's")
    fd = os.open(other, os.O_RDWR)  # most likely the journal's old number
    try:
        journal.release()
        journal.hold([KafkaPosition("in", 0, 2)])
    finally:
        os.close(fd)
    assert other.read_bytes() == b"someone else's"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(sources, max_size=6), min_size=1, max_size=4))
def test_any_sources_held_come_back_as_they_were(tmp_path_factory: pytest.TempPathFactory,
                                                 batches: list[list[KafkaPosition | BatchPosition]]) -> None:
    directory = tmp_path_factory.mktemp("journal")
    journal = DeviceJournal.open(directory)
    for batch in batches:
        journal.release()
        journal.hold(batch)
    journal.close()
    again = DeviceJournal.open(directory)
    assert again.suspects == set(batches[-1])
    again.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.from_regex(r"\[.*\]", fullmatch=True), st.just("[" * 5000), st.just('["t",1,2]')),
             max_size=5).map(lambda lines: "\n".join(lines).encode()),
))
def test_whatever_a_slot_file_holds_a_worker_starts_and_keeps_only_what_parses_as_a_source(
    tmp_path_factory: pytest.TempPathFactory, garbage: bytes,
) -> None:
    directory = tmp_path_factory.mktemp("journal")
    (directory / "slot-0.journal").write_bytes(garbage)
    journal = DeviceJournal.open(directory)
    assert journal.suspects <= {KafkaPosition("t", 1, 2)}
    if b'\n["t",1,2]\n' in b"\n" + garbage + b"\n":
        assert journal.suspects == {KafkaPosition("t", 1, 2)}
    journal.close()


def _work(offset: int, *, jpeg: bool) -> Work:
    work = Work(position=KafkaPosition("in", 0, offset))
    work.jpeg = JpegHeader(64, 48, 3) if jpeg else None
    return work


def test_the_router_sends_a_suspect_jpeg_to_the_cpu_and_counts_it(tmp_path: Path) -> None:
    first = DeviceJournal.open(tmp_path)
    first.hold([KafkaPosition("in", 0, 1)])
    first.close()
    journal, metrics, device, cpu = DeviceJournal.open(tmp_path), Metrics(), Sink(), Sink()
    router = DecodeRouter(device=device, cpu=cpu, journal=journal, metrics=metrics)
    suspect, good, not_jpeg = _work(1, jpeg=True), _work(2, jpeg=True), _work(3, jpeg=False)
    for work in (suspect, good, not_jpeg):
        router.submit(work)
    assert (device.done, cpu.done) == ([good], [suspect, not_jpeg])
    assert metrics.device_decode_suspects._value.get() == 1
    journal.close()


def _settings(directory: Path, tiny_checkpoint: Path, **model: Any) -> Settings:
    return Settings(model=tiny_model_settings(tiny_checkpoint, decode_journal_dir=directory, **model),
                    kafka={"bootstrap_servers": "localhost:9092", "group_id": "g", "input_topic": "in",
                           "output_topic": "out"})


class _Embedder:
    def __init__(self, on_device: bool) -> None:
        self.decodes_on_device = on_device


def test_a_journal_is_kept_only_while_the_device_decodes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    settings = _settings(tmp_path / "journal", tiny_checkpoint)
    assert open_device_journal(settings, _Embedder(False)) is None  # type: ignore[arg-type]
    assert not (tmp_path / "journal").exists()
    journal = open_device_journal(settings, _Embedder(True))  # type: ignore[arg-type]
    assert journal is not None and journal.path.parent == tmp_path / "journal"
    journal.close()


def test_a_journal_directory_that_cannot_be_made_is_a_config_error_naming_its_variable(
    tmp_path: Path, tiny_checkpoint: Path,
) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    settings = _settings(tmp_path / "a-file" / "journal", tiny_checkpoint)
    with pytest.raises(ConfigError, match="CLIP_WORKER_MODEL__DECODE_JOURNAL_DIR"):
        open_device_journal(settings, _Embedder(True))  # type: ignore[arg-type]
