"""Running the worker for tests and benchmarks: in this process (a thread) or as its own process.

In-process workers let a test wrap the embedder (a slow device, say) and read the runtime's
metrics; worker processes are what a pod runs, and can be killed with SIGKILL or stopped with
SIGTERM like one.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from worker.config import Settings, env_var
from worker.engine import Embedder
from worker.metrics import Metrics
from worker.stream.build import build_runtime
from worker.stream.loop import Runtime


class InProcessWorker:
    """The runtime on a thread of this process. Use as a context manager; stop() drains it."""

    def __init__(self, settings: Settings, *, embedder: Embedder | Any, s3_client: Any | None = None) -> None:
        self.metrics = Metrics()
        self.runtime: Runtime = build_runtime(settings, embedder=embedder, metrics=self.metrics, s3_client=s3_client)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="worker-main", daemon=True)

    def _run(self) -> None:
        try:
            self.runtime.run()
        except BaseException as exc:  # handed to the test through stop()
            self.error = exc

    def start(self) -> InProcessWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.runtime.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("worker did not stop within its timeout")
        self._release()
        if self.error is not None:
            raise self.error

    def _release(self) -> None:
        """Let its Kafka clients go now, not at some later garbage collection that finds the broker gone."""
        if hasattr(self, "runtime"):
            del self.runtime
            gc.collect()

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0

    def __enter__(self) -> InProcessWorker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread.is_alive():
            self.stop()
        else:  # it stopped by itself (a fatal error): its clients must go all the same
            self._release()


class WorkerProcess:
    """`python -m worker` with the given environment; its output goes to `log_path`."""

    def __init__(self, env: dict[str, str], *, log_path: Path) -> None:
        self._env = os.environ | env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "worker"], env=self._env, stdout=log, stderr=log)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then the exit code; raises TimeoutExpired if it does not exit in time."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def settings_env(settings: Settings) -> dict[str, str]:
    """The CLIP_WORKER_* environment that makes a worker process load exactly these settings. Values at
    their default are left out, so that a worker of an older tree (cpu_bench --trees) is not handed a
    setting it does not know."""
    env: dict[str, str] = {}
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        for field_name, field in type(section).model_fields.items():
            value = getattr(section, field_name)
            if value is None or value == field.get_default(call_default_factory=True):
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            text = json.dumps(list(value) if isinstance(value, tuple) else value) if isinstance(
                value, (tuple, dict, bool)) else str(value)
            env[env_var(section_name, field_name)] = text
    return env


def tree_env(tree: Path | None) -> dict[str, str]:
    """The environment that makes ``python -m worker`` import the worker from ``tree``. PYTHONPATH alone
    is not enough: ``-m`` puts the working directory first on sys.path, so a run started from this
    checkout ran this checkout's code whatever the tree (every --trees A/B before 2026-11-30 did)."""
    return {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"} if tree else {}
