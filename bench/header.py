"""The first lines every CPU benchmark prints: when, on what machine, under what load, and its command."""

from __future__ import annotations

import datetime
import os
import platform
import sys


def run_header(script: str, loads: tuple[float, float]) -> list[str]:
    """Date, host, cores, Python and the load average at the start and the end, then the command line
    exactly as given (BENCHMARKS.md quotes both)."""
    return [
        f"{datetime.date.today()}, {platform.node()}: nproc {os.cpu_count()}, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        f"load average {loads[0]:.2f} at the start, {loads[1]:.2f} at the end",
        "",
        f"    .venv/bin/python bench/{script} " + " ".join(sys.argv[1:]),
        "",
    ]
