"""The bench scripts stay runnable: the GPU check's CPU dry run, a one-repeat preprocessing bench, and
cpu_bench's decode floor and /proc counters (its full run needs a broker and minutes)."""

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


def test_cpu_bench_floor_and_counters() -> None:
    """cpu_bench's own pieces, without its broker and s3proxy run (that takes minutes): the bare decode gives
    the model's square, and the /proc counters read this process."""
    import os

    from bench.cpu_bench import bare_decode, box_busy_cpu, thread_cpu, tree_cpu
    from harness.photos import photo_corpus

    _, jpeg = photo_corpus(long_sides=(1024,), qualities=(85,))[0]
    assert bare_decode(jpeg, 224).size == (224, 224)
    pid = os.getpid()
    assert tree_cpu(pid) > 0 and thread_cpu(pid, pid) > 0 and box_busy_cpu() > 0
