"""DecoderProcesses: the stage that fetches, decodes and preprocesses images in decoder processes
(decoders.py), as the main process sees it.

It honours the Stage contract: submit() queues, poll() never blocks (a zero-timeout epoll on the
pipes and process sentinels, kept as decoders start and stop), close(deadline) waits no longer than
the deadline. Per record the main thread sends one small Task and receives one small Done: the pixels
are already in a shared-memory slot (slots.py), wrapped as a tensor without a copy.

Processes can do what threads cannot: a record stuck in a decoder past its deadline fails
(RecordTimeout), and the process is killed and replaced (its other records are handed to another); a
decoder that dies (a codec's segfault, the OOM killer) takes only itself down: each record it held is
handed out again alone, and one that kills that decoder too fails as DecoderCrashed. Decoders that
keep dying without finishing any record stop the worker (FatalError). Admission is ThreadStage's: a
record starts, and its deadline runs, only while a decoder thread, a slot and the in-flight byte budget
have room, on a decoder that has started (sent its first message): a start-up is not charged to records.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from worker.engine import PreparedImage
from worker.errors import DecoderCrashed, FatalError, RecordTimeout
from worker.images.budget import InFlightBytes
from worker.images.processes.decoders import CONTEXT, DecoderSpec, Done, Failed, Task, serve
from worker.images.processes.slots import SharedSlots
from worker.images.stages import FailureSink, Sink
from worker.images.wake import Wake
from worker.images.work import Work
from worker.metrics import Metrics

log = logging.getLogger(__name__)
_CRASHES_TO_BLAME = 2  # a record inside this many dead decoders fails as DecoderCrashed
_DEATHS_TO_STOP = 5  # decoders dying in a row with no record finished in between: the worker stops


@dataclass(slots=True)
class _Running:
    work: Work
    slot: int
    started: float
    crashes: int  # dead decoders this record was inside before


@dataclass(slots=True, eq=False)  # hashed by identity: the selector hands children back
class _Child:
    process: BaseProcess
    conn: Connection
    decoding: Any  # multiprocessing.Value("q"): the task its decode thread is on, -1 for none
    tasks: dict[int, _Running] = field(default_factory=dict)
    suspects: int = 0  # records it holds that were inside a dead decoder: nothing else goes to it meanwhile
    ready: bool = False  # its first message came: records wait for a decoder here, not in its pipe


class DecoderProcesses:
    """Fetch + decode + preprocess on decoder processes. Its stage label stays "fetch", the label of the
    thread stage it replaces: dead-letter headers and metrics name the stage by it."""

    name = "fetch"

    def __init__(
        self, *, processes: int, spec: DecoderSpec, slots: SharedSlots, next_step: Sink[Work],
        failures: FailureSink, metrics: Metrics, timeout: float, budget: InFlightBytes, reserve_bytes: int,
        clock: Callable[[], float] = time.monotonic, target: Callable[[DecoderSpec, Connection, Any], None] = serve,
        wake: Wake | None = None,
    ) -> None:
        """`target` is the decoder process's main (decoders.serve; tests wrap it to crash or hang).
        `wake`, when given, watches the decoders' pipes and sentinels: a result or a death ends the
        loop's wait (wake.py)."""
        self._spec = spec
        self._slots = slots
        self._next = next_step
        self._failures = failures
        self._metrics = metrics
        self._timeout = timeout
        self._budget = budget
        self._reserve = reserve_bytes
        self._clock = clock
        self._target = target
        CONTEXT.set_forkserver_preload(["worker.images.processes.decoders"])
        self._ids = count()
        self._waiting: deque[tuple[Work, int]] = deque()  # (work, crashes)
        self._deaths = 0  # in a row, without a record finished
        self._ready = selectors.DefaultSelector()  # every child's pipe and sentinel, data: the child
        self._children = [self._start(i) for i in range(processes)]
        if wake is not None:
            wake.watch(self._ready)

    # -- the Stage contract ------------------------------------------------------------------------

    def submit(self, item: Work) -> None:
        self._waiting.append((item, 0))

    def poll(self) -> None:
        for key, _ in self._ready.select(0):  # a result to read, or a sentinel: it died
            child = key.data
            if not child.conn.closed:  # else replaced already, its pipe and sentinel both ready
                self._receive(child, died=key.fileobj is not child.conn)
        self._expire()
        if self._waiting:
            self._admit()

    def close(self, deadline: float) -> None:
        self._waiting.clear()
        for child in self._children:
            with contextlib.suppress(OSError):
                child.conn.send(None)  # finish what you hold, then exit
        for child in self._children:
            child.process.join(max(0.0, deadline - self._clock()))
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join(1.0)
            child.conn.close()
        self._ready.close()
        self._slots.close()

    # -- results -----------------------------------------------------------------------------------

    def _receive(self, child: _Child, *, died: bool) -> None:
        """Everything in the pipe; a decoder that `died` (its sentinel was ready) is replaced after. Its
        exit status is read only then, or when the pipe breaks: it is a syscall, not for every result."""
        try:
            ready = not died or child.conn.poll()  # its pipe was ready: a message at least
            while ready:
                for outcome in child.conn.recv():  # the first message, empty, says it has started
                    self._finish(child, outcome)
                child.ready = True
                ready = child.conn.poll()
        except (EOFError, OSError):
            died = died or child.process.exitcode is not None  # else its sentinel says so on a later turn
        if died:
            self._replace(child, killed=False)

    def _finish(self, child: _Child, outcome: Done | Failed) -> None:
        running = child.tasks.pop(outcome.id, None)
        if running is None:
            return  # a task given up (expired) before its result came
        child.suspects -= running.crashes > 0
        work = running.work
        metrics = self._metrics
        if isinstance(outcome, Failed):
            self._budget.settle(work, self._reserve)
            self._slots.give_back(running.slot)
            work.fetch_attempts = outcome.attempts
            if outcome.stage == "fetch":
                metrics.fetch_seconds.observe(outcome.seconds)
                metrics.fetch_retries.inc(max(0, outcome.attempts - 1))
            else:
                metrics.preprocess_seconds.observe(outcome.seconds)
            self._failures.fail(work, outcome.error, stage=outcome.stage)
            return
        self._deaths = 0
        metrics.fetch_seconds.observe(outcome.fetch_seconds)
        metrics.preprocess_seconds.observe(outcome.preprocess_seconds)
        metrics.fetched_bytes.inc(outcome.fetched_bytes)
        if outcome.attempts > 1:
            metrics.fetch_retries.inc(outcome.attempts - 1)
        work.fetch_attempts, work.sha256 = outcome.attempts, outcome.sha256
        work.width, work.height = outcome.width, outcome.height
        work.prepared = PreparedImage(
            self._slots.view(running.slot), outcome.width, outcome.height, outcome.format, outcome.scale
        )
        self._budget.settle(work, self._reserve)
        self._next.submit(work)

    def _expire(self) -> None:
        """A decoder holding a task past the deadline is stuck: the task its decode thread is on, if that
        one is late (else the oldest late one) fails; the process is killed and replaced; its other
        tasks go again. A decode that began just now is not the one that held the others up."""
        cutoff = self._clock() - self._timeout
        for child in list(self._children):
            # Tasks are kept in the order they started: while the oldest is in time, they all are.
            if not child.tasks or next(iter(child.tasks.values())).started >= cutoff:
                continue
            late = [task for task, running in child.tasks.items() if running.started < cutoff]
            stuck = child.decoding.value if child.decoding.value in late else late[0]
            running = child.tasks.pop(stuck)
            self._slots.give_back(running.slot)
            self._budget.settle(running.work, self._reserve)
            self._failures.fail(running.work, RecordTimeout(
                f"fetch + preprocess took longer than {self._timeout:.0f} s", stage="preprocess"), stage="preprocess")
            log.warning("decoder %s was stuck on a record past its deadline: replacing it", child.process.name)
            child.process.kill()
            child.process.join(5.0)
            self._replace(child, killed=True)

    # -- decoder processes -------------------------------------------------------------------------

    def _start(self, number: int) -> _Child:
        here, there = CONTEXT.Pipe(duplex=True)
        decoding = CONTEXT.Value("q", -1, lock=False)
        process = CONTEXT.Process(
            target=self._target, args=(self._spec, there, decoding), name=f"decoder-{number}", daemon=True
        )
        process.start()
        there.close()
        child = _Child(process, here, decoding)
        self._ready.register(here, selectors.EVENT_READ, child)
        self._ready.register(process.sentinel, selectors.EVENT_READ, child)
        return child

    def _replace(self, child: _Child, *, killed: bool) -> None:
        """Hand the dead decoder's records out again (counting the crash unless we killed it), start another."""
        child.process.join(1.0)
        if not killed:
            self._deaths += 1
            log.warning("decoder %s died (exit code %s) holding %d records",
                        child.process.name, child.process.exitcode, len(child.tasks))
        for running in child.tasks.values():
            self._slots.give_back(running.slot)
            self._budget.settle(running.work, self._reserve)
            crashes = running.crashes + (0 if killed else 1)
            if crashes >= _CRASHES_TO_BLAME:
                self._failures.fail(running.work, DecoderCrashed(
                    f"the decoder process died {crashes} times while decoding this image "
                    f"(last exit code {child.process.exitcode})"), stage="preprocess")
            else:
                self._waiting.appendleft((running.work, crashes))
        self._ready.unregister(child.conn)
        self._ready.unregister(child.process.sentinel)
        child.conn.close()
        if self._deaths >= _DEATHS_TO_STOP:
            raise FatalError(f"{self._deaths} decoder processes died in a row without finishing a record")
        index = self._children.index(child)
        self._children[index] = self._start(index)

    def _admit(self) -> None:
        budget, threads = self._budget, self._spec.threads
        sends: dict[int, list[Task]] = {}  # child index -> its new tasks, sent in one message
        while self._waiting and self._slots.free() and budget.admits(self._reserve):
            work, crashes = self._waiting[0]
            # A record that was inside a dead decoder runs alone, so that a second death names it for sure.
            open_ = [i for i, c in enumerate(self._children)
                     if c.ready and not c.suspects and (not c.tasks if crashes else len(c.tasks) < threads)]
            if not open_:
                break
            index = min(open_, key=lambda i: len(self._children[i].tasks))
            child = self._children[index]
            self._waiting.popleft()
            assert work.request is not None, "the decoder processes only take decoded requests"
            task = Task(next(self._ids), work.request.uri, self._slots.take())
            budget.reserve(work, self._reserve)  # from here on it holds bytes (tracked twice is harmless: a set)
            child.tasks[task.id] = _Running(work, task.slot, self._clock(), crashes)
            child.suspects += crashes > 0
            sends.setdefault(index, []).append(task)
        for index, tasks in sends.items():
            with contextlib.suppress(OSError):  # it died since the last poll: the next one hands them out again
                self._children[index].conn.send(tasks)
