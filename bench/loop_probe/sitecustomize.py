"""Thread-CPU accounting of the main loop's steps, for `bench/cpu_bench.py --loop-profile`: imported
at start-up by every Python process that has this folder on PYTHONPATH, and active only where
CLIP_LOOP_PROFILE names a file to write.

Why not a sampling profiler: py-spy's samples of the main thread count time it is runnable but off
the CPU (two cores shared with decoders) and time it waits for the GIL after a syscall; on this box
they put 26% of the loop in a pipe write that costs 4 µs. time.thread_time_ns() counts only the
CPU the thread used, the kernel's part included. Each wrapped call costs ~1 µs more, so the figures
read high by about that per call.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

# (module, class, method): what the loop does every turn, and per record.
STEPS = (
    ("worker.stream.loop", "Runtime", "step"),
    ("worker.images.wake", "Wake", "wait"),
    ("worker.stream.loop", "Runtime", "_take"),
    ("worker.stream.loop", "Runtime", "_advance"),
    ("worker.images.stages", "ThreadStage", "poll"),
    ("worker.images.processes.stage", "DecoderProcesses", "poll"),
    ("worker.images.processes.stage", "DecoderProcesses", "_receive"),
    ("worker.images.processes.stage", "DecoderProcesses", "_finish"),
    ("worker.images.processes.stage", "DecoderProcesses", "_admit"),
    ("worker.images.processes.stage", "DecoderProcesses", "_expire"),
    ("worker.images.processes.slots", "SharedSlots", "view"),
    ("worker.images.batching", "Batcher", "poll"),
    ("worker.images.inference", "InferenceStage", "poll"),
    ("worker.stream.outage", "OutageGate", "poll"),
    ("worker.stream.produce", "Outbox", "poll"),
    ("worker.stream.produce", "Outbox", "send"),
    ("worker.stream.delivery.acked", "StoredOffsetsCommitter", "commit"),
    ("worker.stream.delivery.transactional", "TransactionalCommitter", "commit"),
    ("worker.stream.backpressure", "Backpressure", "update"),
)


def _counted(name: str, fn: Callable[..., Any], totals: dict[str, list[int]]) -> Callable[..., Any]:
    total = totals.setdefault(name, [0, 0])  # calls, thread-CPU ns

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            total[0] += 1
            total[1] += time.thread_time_ns() - began

    return wrapper


def _gc_counter(totals: dict[str, list[int]]) -> Callable[[str, dict[str, int]], None]:
    """Collections the main thread ran once the loop had begun (a collection runs on the thread whose
    allocation set it off), per generation, in thread CPU: the loop's steps include them wherever one
    happens to start. Those of the start-up (imports, the model's load) are left out."""
    main, began, loop = threading.main_thread(), [0], totals.setdefault("Runtime.step", [0, 0])

    def counted(phase: str, info: dict[str, int]) -> None:
        if threading.current_thread() is not main or not loop[0]:
            return
        if phase == "start":
            began[0] = time.thread_time_ns()
            return
        total = totals.setdefault(f"gc, generation {info['generation']}", [0, 0])
        total[0] += 1
        total[1] += time.thread_time_ns() - began[0]

    return counted


def _install(path: str) -> None:
    totals: dict[str, list[int]] = {}
    for module_name, class_name, method in STEPS:
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if cls is not None and hasattr(cls, method):  # a tree from before a step existed lacks it
            setattr(cls, method, _counted(f"{class_name}.{method}", getattr(cls, method), totals))

    collections = _gc_counter(totals)
    gc.callbacks.append(collections)

    def write() -> None:
        gc.callbacks.remove(collections)  # a collection while the counts are written would add a key
        if totals.get("Runtime.step", [0])[0]:  # only the process that ran the loop
            with open(path, "w") as file:
                json.dump(totals, file)

    atexit.register(write)


if os.environ.get("CLIP_LOOP_PROFILE"):
    _install(os.environ["CLIP_LOOP_PROFILE"])
