"""CPU time from /proc, for the benchmarks: a process tree's, one thread's, the whole machine's, and a
worker's threads grouped by what they are (their kernel names)."""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: str) -> list[str]:
    with open(path) as file:
        return file.read().rpartition(")")[2].split()  # the fields after "(comm)"; comm may hold spaces


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process (all its threads, its reaped children) and of its live descendants."""
    try:
        fields = _stat_fields(f"/proc/{pid}/stat")  # fields[11:15]: utime stime cutime cstime
        total = sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                total += sum(tree_cpu(int(child)) for child in file.read().split())
        return total
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def thread_cpu(pid: int, tid: int) -> float:
    """On-CPU seconds of one thread: schedstat's nanoseconds where the kernel has it, else stat's ticks."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as file:
            return int(file.read().split()[0]) / 1e9
    except FileNotFoundError:
        fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def box_busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as file:
        ticks = [int(v) for v in file.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS  # user..steal, less idle and iowait


def thread_groups(pid: int, prefix: str = "") -> dict[str, float]:
    """CPU seconds of the worker's threads by what they are (their kernel names, pool.name_os_thread):
    the main thread, each stage's pool, librdkafka's threads, the rest (torch's, Python's); and the
    same for its child processes' threads (decoders, forkserver), prefixed "child ". Keys start with
    "thread:"."""
    groups: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return groups
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as file:
                comm = file.read().strip()
            seconds = thread_cpu(pid, int(task))
            with open(f"/proc/{pid}/task/{task}/children") as file:
                children = [int(child) for child in file.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(task) == pid:
            group = "main"
        elif comm.startswith("rdk:"):
            group = "librdkafka"
        else:
            group = comm.rstrip("0123456789").rstrip("_-") or "other"
        key = f"thread:{prefix}{group}"
        groups[key] = groups.get(key, 0.0) + seconds
        for child in children:
            for name, child_seconds in thread_groups(child, "child ").items():
                groups[name] = groups.get(name, 0.0) + child_seconds
    return groups
