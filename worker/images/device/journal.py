"""Which records the device is decoding, kept on disk, so that a crash inside the device's JPEG decoder
costs one restart instead of a crash loop.

Why: nvJPEG runs inside the worker's process and CUDA context, where no crash can be contained. A
hostile JPEG can segfault its parser (NVIDIA/CUDALibrarySamples#116, fixed in CUDA 12.2u2), or leave
an illegal address that poisons the context for every later call (NVIDIA/nvImageCodec#25). Either way
the worker stops before any record of the batch is committed. After the restart the same records come
back, and they would stop it again, forever. The CPU path contains its decoder's crashes in decoder
processes (DecoderCrashed). The device path cannot, so it remembers which records were in its hands.

How:
1. Before the device thread hands a batch's JPEGs to the decoder, it writes their positions (a Kafka
   record's topic, partition and offset; a batch input's input and index) to its journal file (`hold`).
2. Once the batch's embeddings are back on the host, every kernel of the batch has run: the file is
   emptied again (`release`). A batch that raises is not released; the worker stops on it.
3. A worker that starts and finds positions in the journal decodes those records on the CPU
   (route.py's DecodeRouter). A bad image gets its ImageError and a dead letter, a good one its
   embedding. The positions found are written again with every later batch (the newest KEEP), so that a
   second crash before they come back does not forget them.

The file holds one JSON array per line: [topic, partition, offset], or [input, index] in batch mode.
Lines that do not parse are skipped:
a write cut short, or a file from elsewhere. There is no fsync, because the file must outlive the
process, not the machine. A pod that moves starts with a fresh journal, so it may crash once on such a
batch. The directory must outlive a restart of the worker's container (the chart's /tmp is an
emptyDir). Several workers may share it. Each claims the first slot file that no live process holds
(flock, released by the kernel when a process dies), and reads the suspects of every slot free at the
time: so a restarted worker finds what its predecessor held, whichever slot that was.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from worker.formats.positions import BatchPosition, KafkaPosition, Position

logger = logging.getLogger(__name__)

KEEP = 4096  # suspects carried from earlier crashes (the last read are kept): a few batches' worth
_SLOT = "slot-{}.journal"


class DeviceJournal:
    """One worker's journal. Open it with ``DeviceJournal.open(directory)``; `hold` and `release` from
    one thread (the device thread); `is_suspect` from any."""

    def __init__(self, fd: int, path: Path, suspects: frozenset[Position], carried: list[Position]) -> None:
        self.path = path
        self.suspects = suspects  # read at open: records to decode on the CPU
        self._fd = fd  # -1 once closed
        self._lock = threading.Lock()  # close() may come from another thread than hold() and release()
        self._topics: dict[str, str] = {}  # topic (or batch input) -> its JSON string, encoded once
        self._carried = self._encode(carried)
        self._held = False

    @classmethod
    def open(cls, directory: Path) -> DeviceJournal:
        """Claim a slot in `directory` (created if missing) and read the suspects that free slots hold.
        Raises OSError when the directory cannot be written."""
        directory.mkdir(parents=True, exist_ok=True)
        found: list[Position] = []
        mine: tuple[int, Path] | None = None
        slots = sum(1 for _ in directory.glob(_SLOT.format("*")))
        for index in range(slots + 1):  # one more than there are: a free one at least
            path = directory / _SLOT.format(index)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live worker's
                os.close(fd)
                continue
            found.extend(_read(path))
            if mine is None:
                mine = (fd, path)
            else:
                os.close(fd)  # its lock goes with it
        assert mine is not None, "the last slot did not exist before, so no one held it"
        carried = list(dict.fromkeys(found))[-KEEP:]
        if carried:
            logger.info("the device journal in %s lists %d records that were on the device when a worker "
                        "stopped: any of them that comes again is decoded on the CPU", directory, len(carried))
        journal = cls(mine[0], mine[1], frozenset(carried), carried)
        journal._write(journal._carried)  # what this slot held is among the suspects read: one copy, here
        return journal

    def is_suspect(self, position: Position) -> bool:
        return position in self.suspects

    def hold(self, positions: Iterable[Position]) -> None:
        """Note the records whose JPEGs go to the device decoder now (the device thread, before it calls it)."""
        data = self._carried + self._encode(positions)
        with self._lock:
            self._write(data)
            self._held = True

    def release(self) -> None:
        """Their batch is done on the device; forget them (the suspects carried stay)."""
        with self._lock:
            if self._held and self._fd >= 0:
                os.ftruncate(self._fd, len(self._carried))
            self._held = False

    def close(self) -> None:
        """Let the slot go, keeping what it holds: a batch still held is the next worker's to distrust.
        A device thread still running after this writes nothing (its descriptor's number may be reused)."""
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)

    def _write(self, data: bytes) -> None:
        if self._fd >= 0:
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))

    def _encode(self, positions: Iterable[Position]) -> bytes:
        names = self._topics
        lines = []
        for position in positions:
            name_of, numbers = ((position.topic, f"{position.partition},{position.offset}")
                                if isinstance(position, KafkaPosition) else (position.input, str(position.index)))
            name = names.get(name_of)
            if name is None:
                name = names[name_of] = json.dumps(name_of)
            lines.append(f"[{name},{numbers}]\n")
        return "".join(lines).encode()


def _read(path: Path) -> Iterator[Position]:
    """The positions a journal file holds; whatever does not parse as one is skipped."""
    with path.open("rb") as file:
        for line in file:
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):  # not a line this module wrote (RecursionError: "[[[[...")
                continue
            if not (isinstance(value, list) and len(value) in (2, 3) and isinstance(value[0], str)
                    and all(type(number) is int for number in value[1:])):
                continue
            yield (KafkaPosition(topic=value[0], partition=value[1], offset=value[2]) if len(value) == 3
                   else BatchPosition(input=value[0], index=value[1]))
