"""The decoder process: fetch, decode and preprocess records away from the main process's GIL.

Why processes: in one process the data path's rate is capped by the GIL however many cores it has
(measured in BENCHMARKS.md): boto3 and Pillow's bookkeeping hold the GIL for part of every record,
and a thread busy in Python slows every thread that wants the GIL back (lock convoys). Each decoder
process has its own GIL, its own S3 client and a few threads, so that S3's latency overlaps decoding.

What crosses the pipe is small: lists of Tasks (record number, URI, slot) in, lists of Done or
Failed out, so that one pipe write carries many records when they come quickly. They are NamedTuples
because the main thread pickles or unpickles one per record: a tuple is pickled in C, a slots
dataclass field by field in Python, which is slower. The pixels
go straight into a shared-memory slot (slots.py). Errors cross as pickled worker.errors classes;
anything else a step raises becomes UnexpectedError here, its traceback carried as text.

The process ignores SIGINT and SIGTERM: the parent decides when it stops (a None task, or the pipe
closing when the parent dies), so a Ctrl-C to the process group cannot kill records mid-decode.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import torch
from open_clip.transform import PreprocessCfg

from worker.config import LogSettings, S3Settings
from worker.engine.decode import raise_pillow_limit
from worker.engine.loading import frozen_heap
from worker.engine.preprocess import PreprocessMode, Preprocessor
from worker.errors import UnexpectedError, WorkerError
from worker.formats.messages import S3Uri
from worker.images.pool import name_os_thread
from worker.images.processes.slots import SlotLayout, SlotWriter
from worker.logs import configure_logging
from worker.s3.reader import S3Reader, make_s3_client

_MAX_BATCH = 64  # outcomes per message back to the parent
# Decoders fork from a server process started clean (no CUDA context, no librdkafka threads to copy).
CONTEXT = multiprocessing.get_context("forkserver")


def last_success() -> Any:
    """The value every decoder's S3Reader shares as `served`: when any of them last fetched an object."""
    return CONTEXT.Value("d", float("-inf"))


@dataclass(frozen=True, slots=True)
class DecoderSpec:
    """Everything a decoder process needs, pickled once when it starts."""

    s3: S3Settings
    cfg: PreprocessCfg
    mode: PreprocessMode
    max_pixels: int
    exif_orientation: bool
    slots: str  # the shared block's name
    layout: SlotLayout
    threads: int
    fetch_timeout: float
    log: LogSettings
    served: Any  # multiprocessing.Value("d"): when any decoder's fetch last succeeded (S3Reader)
    environ: dict[str, str]  # the worker's environment when it built the stage (AWS_* credentials, ...)


class Task(NamedTuple):
    id: int
    uri: S3Uri
    slot: int


class Done(NamedTuple):
    id: int
    sha256: str
    attempts: int
    fetched_bytes: int
    width: int
    height: int
    format: str
    scale: int
    fetch_seconds: float
    preprocess_seconds: float


class Failed(NamedTuple):
    id: int
    error: WorkerError
    stage: str  # "fetch" or "preprocess"
    attempts: int
    seconds: float


def serve(spec: DecoderSpec, conn: Connection, decoding: Any) -> None:
    """The process's main: take lists of tasks until told to stop, fetch them on `spec.threads`
    threads and decode them on one. `decoding` (a shared multiprocessing.Value("q")) holds the id of the task
    being decoded, -1 between tasks: if this process has to be killed for a stuck task, the
    parent knows which one it was, and that the tasks queued behind it are not at fault."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A forkserver child inherits the environment of the forkserver's first use, not the worker's now.
    os.environ.clear()
    os.environ.update(spec.environ)
    configure_logging(spec.log)
    torch.set_num_threads(1)  # exact mode's transform; the parallelism is the processes
    raise_pillow_limit(spec.max_pixels)
    decoder = _Decoder(spec)
    sending = threading.Lock()
    decodes: queue.SimpleQueue[tuple[Task, _Fetched] | None] = queue.SimpleQueue()

    def send(outcomes: list[Done | Failed]) -> None:
        with sending:
            conn.send(outcomes)

    def fetch(task: Task) -> None:
        fetched = decoder.fetch(task)
        if isinstance(fetched, Failed):
            send([fetched])
        else:
            decodes.put((task, fetched))

    def decode_all() -> None:
        """One image at a time (the process is one core's worth); results go back in batches, sent
        whenever no decode is waiting: one pipe write for many records when they come quickly."""
        name_os_thread()
        done: list[Done | Failed] = []
        while (item := decodes.get()) is not None:
            task, fetched = item
            decoding.value = task.id
            done.append(decoder.decode(task, fetched))
            decoding.value = -1
            if decodes.empty() or len(done) >= _MAX_BATCH:
                send(done)
                done = []

    decoder_thread = threading.Thread(target=decode_all, name="decode", daemon=True)
    decoder_thread.start()
    fetching = ThreadPoolExecutor(spec.threads, thread_name_prefix="fetch", initializer=name_os_thread)
    with frozen_heap(), fetching:  # frozen_heap: as the worker's own process (cli.py)
        send([])  # ready: the parent sends tasks, and starts their deadlines, only from now on
        while True:  # fetches wait on S3 side by side
            try:
                tasks = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            if tasks is None:
                break
            for task in tasks:
                fetching.submit(fetch, task)
    decodes.put(None)
    decoder_thread.join()


class _Decoder:
    def __init__(self, spec: DecoderSpec) -> None:
        self._spec = spec
        self._source = S3Reader(client=make_s3_client(spec.s3), settings=spec.s3, served=spec.served)
        self._preprocessor = Preprocessor(
            spec.cfg, mode=spec.mode, max_pixels=spec.max_pixels, exif_orientation=spec.exif_orientation
        )
        self._slots = SlotWriter(spec.slots, spec.layout)

    def fetch(self, task: Task) -> _Fetched | Failed:
        started = time.perf_counter()
        try:
            data, attempts = self._source.fetch(task.uri, deadline=time.monotonic() + self._spec.fetch_timeout)
        except Exception as exc:
            return Failed(task.id, _worker_error(exc, "fetch"), "fetch", getattr(exc, "attempts", 1),
                          time.perf_counter() - started)
        return _Fetched(data, attempts, time.perf_counter() - started)

    def decode(self, task: Task, fetched: _Fetched) -> Done | Failed:
        started = time.perf_counter()
        data = fetched.data
        try:
            prepared = self._preprocessor.prepare(data)
            self._slots.write(task.slot, prepared.pixels.numpy())
        except Exception as exc:
            return Failed(task.id, _worker_error(exc, "preprocess"), "preprocess", fetched.attempts,
                          time.perf_counter() - started)
        return Done(
            id=task.id, sha256=hashlib.sha256(data).hexdigest(), attempts=fetched.attempts, fetched_bytes=len(data),
            width=prepared.width, height=prepared.height, format=prepared.format, scale=prepared.scale,
            fetch_seconds=fetched.seconds, preprocess_seconds=time.perf_counter() - started,
        )


@dataclass(frozen=True, slots=True)
class _Fetched:
    data: bytes
    attempts: int
    seconds: float


def _worker_error(error: Exception, stage: str) -> WorkerError:
    return error if isinstance(error, WorkerError) else UnexpectedError(error, stage=stage)
