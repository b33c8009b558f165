"""How the harness starts its servers (the Kafka broker, the benchmarks' S3 servers) as child processes.

Each listens on a free port of 127.0.0.1 and runs in a session of its own, so that a Ctrl-C goes to
Python, which stops it. Where util-linux ``setpriv`` exists it gets PDEATHSIG=KILL: if the Python process
that started it dies (even by SIGKILL), the server dies too instead of lingering. PDEATHSIG follows the
starting thread, so start servers from a long-lived one.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `cmd` with its output appended to `log`, tied to this process as above."""
    argv = ["setpriv", "--pdeathsig", "KILL", *cmd] if shutil.which("setpriv") else list(cmd)
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def end(process: subprocess.Popen[bytes], timeout: float | None) -> bool:
    """Stop `process` and reap it: SIGTERM and up to `timeout` seconds to exit (None: SIGKILL at once),
    then SIGKILL. True when it exited on the SIGTERM. The owner lets go of the Popen only after this
    returns, so that a test interrupted here (a timeout) leaves the process to the next stop, not to the
    garbage collector."""
    clean = False
    if timeout is not None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            clean = process.wait(timeout) is not None
    process.kill()  # no-op when it has exited
    process.wait()
    return clean


class LoggedServer:
    """close() and the with-statement of a server that keeps its logs in a temp dir of its own: the
    dir is deleted unless ``keep_logs`` (or the attribute); a block that raised keeps it and says where."""

    label = "server"  # how the kept-logs line names it
    keep_logs: bool
    _log_dir: Path | None

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self, *, keep_logs: bool = False) -> None:
        """Stop the server and delete its temp dir unless ``keep_logs`` (or the ``keep_logs`` attribute)."""
        self.stop()
        if self._log_dir is not None and not (keep_logs or self.keep_logs):
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        failed = exc_type is not None and issubclass(exc_type, Exception)
        self.close(keep_logs=failed)
        if (failed or self.keep_logs) and self._log_dir is not None:
            print(f"{self.label} logs kept in {self._log_dir}", file=sys.stderr)
