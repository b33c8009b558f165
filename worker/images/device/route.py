"""Which records the device decodes (model.decode): baseline JPEGs go to it as bytes, the rest, and
any the device journal suspects, to the CPU. The fetch reads the header; the router sends the record."""

from __future__ import annotations

import logging

from worker.config import Settings, env_var
from worker.engine import Embedder
from worker.engine.gpu_decode import ReadHeader
from worker.errors import ConfigError
from worker.images.device.journal import DeviceJournal
from worker.images.stages import Sink
from worker.images.work import Work
from worker.metrics import Metrics

logger = logging.getLogger(__name__)


class DecodeRouter:
    """Where a fetched record goes while the device decodes JPEGs: one whose bytes the fetch thread found
    to be a baseline JPEG (Work.jpeg) straight to the batcher, as bytes, any other to the preprocess
    threads. Inline on the main thread: the header was read on the fetch thread, this is one branch.
    A record the device journal lists was on the device when a worker stopped: the CPU decodes it.
    A plain Sink, not a stage: it holds nothing, so it has nothing to poll or close."""

    def __init__(self, *, device: Sink[Work], cpu: Sink[Work], journal: DeviceJournal, metrics: Metrics) -> None:
        self._device = device
        self._cpu = cpu
        self._journal = journal
        self._suspects = metrics.device_decode_suspects

    def submit(self, item: Work) -> None:
        if item.jpeg is None:
            self._cpu.submit(item)
        elif self._journal.is_suspect(item.position):
            logger.warning("%s[%d]@%d was on the device when a worker stopped: decoding it on the CPU",
                           *item.position.coordinates())
            self._suspects.inc()
            self._cpu.submit(item)
        else:
            self._device.submit(item)


def open_journal(settings: Settings, embedder: Embedder) -> DeviceJournal | None:
    """The device thread's journal (journal.py) while the device decodes JPEGs, else None."""
    if not embedder.decodes_on_device:
        return None
    try:
        return DeviceJournal.open(settings.model.decode_journal_dir)
    except OSError as exc:
        setting = env_var("model", "decode_journal_dir")
        raise ConfigError(setting, f"the device journal cannot be kept there: {exc}") from exc


def after_fetch(
    journal: DeviceJournal | None, *, preprocess: Sink[Work], batcher: Sink[Work], metrics: Metrics
) -> Sink[Work]:
    """Where fetched records go: the preprocess threads, or a DecodeRouter while the device decodes JPEGs
    (which is when there is a journal)."""
    if journal is None:
        return preprocess
    return DecodeRouter(device=batcher, cpu=preprocess, journal=journal, metrics=metrics)


def device_route(embedder: Embedder) -> ReadHeader | None:
    """For the fetch steps, while the device decodes: the header of a JPEG that goes to it (else None)."""
    return embedder.device_header if embedder.decodes_on_device else None
