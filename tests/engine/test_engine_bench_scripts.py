"""The bench scripts stay runnable: the GPU check's CPU dry run and a one-repeat preprocessing bench."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    out = run("bench/gpu_check.py", "--cpu-smoke", "--corpus", str(tmp_path / "none"), "--json", str(report))
    assert "PASS" in out and "FAIL" not in out
    assert report.is_file()


def test_preprocess_bench_prints_its_table() -> None:
    out = run("bench/preprocess_bench.py", "--repeats", "1")
    assert all(mode in out for mode in ("exact ", "fast-no-draft ", "fast "))
