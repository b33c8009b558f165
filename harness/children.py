"""How the harness starts its servers (the Kafka broker, the benchmarks' S3 servers) as child processes.

Each listens on a free port of 127.0.0.1 and runs in a session of its own, so that a Ctrl-C goes to
Python, which stops it. Where util-linux ``setpriv`` exists it gets PDEATHSIG=KILL: if the Python process
that started it dies (even by SIGKILL), the server dies too instead of lingering. PDEATHSIG follows the
starting thread, so start servers from a long-lived one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path


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
