"""The bench scripts stay runnable: the GPU check's CPU dry run (every part, checked figure by figure), a
one-repeat preprocessing bench, and cpu_bench's decode floor and /proc counters (its full run needs a
broker and minutes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.gpu_parts import hostile
from bench.gpu_parts.common import Budget, Context, Report
from harness.nvjpeg_crash.sitecustomize import crashing_decoder
from worker.engine import Embedder

pytestmark = pytest.mark.slow(minutes=1.5)

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def figures(part: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in part["figures"] if f.get("kind") == kind]


def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    """bench/gpu_check.sh --cpu-smoke: every part of the GPU run, here, with the tiny model; each part
    finishes and writes figures that make sense (a broken part fails this, not the device session)."""
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-smoke"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, check=False, env=os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failed_checks"] == [] and report["unfinished_parts"] == []
    parts = report["parts"]
    assert all(parts[name]["status"] == "done" for name in ("models", "attention", "compile", "decode", "e2e"))
    assert (tmp_path / "gpu_check.jsonl").is_file() and (tmp_path / "gpu_check.log").is_file()

    fidelity = figures(parts["models"], "fidelity")
    assert {f["dtype"] for f in fidelity} == {"fp16", "bf16"} and all(f["min_cosine"] >= 0.99 for f in fidelity)
    assert len(fidelity[0]["per_photo"]) >= 5
    assert all(f["img_per_s"] > 0 for f in figures(parts["models"], "model-only"))
    assert [f["img_per_s"] > 0 for f in figures(parts["models"], "model-only channels-last input")] == [True]
    assert figures(parts["models"], "embed() uint8 in, float32 out")[0]["img_per_s"] > 0

    assert "aten::_native_multi_head_attention" in figures(parts["attention"], "attention trace")[0]["operators"]
    backends = {f["backend"]: f for f in figures(parts["attention"], "sdpa backend")}
    assert backends["MATH"]["img_per_s"] > 0 and backends["MATH"]["min_cosine_vs_math"] == 1.0

    variants = {f["variant"]: f for f in figures(parts["compile"], "fixed bucket")}
    assert variants["eager"]["img_per_s"] > 0
    assert any(v.startswith("torch.compile") and f["min_cosine_padded_vs_eager"] >= 0.999 for v, f in variants.items())

    [hostile] = figures(parts["decode"], "hostile jpegs")
    done_with = sum(hostile["outcomes"].values())
    assert 0 < done_with <= hostile["to_device"] and len(hostile["by_kind"]) == 6
    out_of_time = any("hostile JPEGs: out of time" in note["note"] for note in parts["decode"]["notes"])
    assert done_with == hostile["to_device"] or out_of_time
    assert (hostile["crashed"], hostile["poisoned"]) == (None, None), "libjpeg-turbo on the CPU takes them all"

    cpu = {(f["mode"], f["processes"]): f["img_per_s"] for f in figures(parts["decode"], "cpu decode")}
    assert cpu.keys() == {("fast", 1), ("fast", 2), ("exact", 1)} and all(v > 0 for v in cpu.values())
    assert [f["batch"] for f in figures(parts["decode"], "device decode") if f["img_per_s"] > 0] == [4, 8]
    assert figures(parts["decode"], "device decode quality")[0]["min_psnr_db"] >= 30

    [e2e] = figures(parts["e2e"], "end to end")
    assert e2e["outputs"] == 64 and e2e["dead_letters"] == 0 and e2e["img_per_s"] > 0 and e2e["exit"] == 0
    assert e2e["decode"] == "gpu" and e2e["jpeg_decode"] == "device", "the smoke run takes the device decode's path"
    assert e2e["pods"] == 2 and e2e["main_us_per_image"] > 0
    assert e2e["main_cores"] <= 1.05 * e2e["pods"], "each pod's loop is one thread: a core at most"


def test_the_hostile_jpeg_check_names_the_jpeg_that_took_the_decoder_down(
    tiny_fast: Embedder, corpus: list[tuple[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    blobs = [data for _, data in corpus]
    victim = hostile.hostile_jpegs(blobs, per_kind=6)[9]  # the run makes the same, from the same seed
    # What nvJPEG did on broken Exif (CUDALibrarySamples#116), on that JPEG; the forked child inherits it.
    monkeypatch.setattr(torch.ops.image, "decode_jpeg", crashing_decoder(victim[1]))
    report = Report(None)
    ctx = Context(device=torch.device("cpu"), smoke=True, corpus=corpus, wheels=tmp_path)
    hostile.run(ctx, report, Budget(60), tiny_fast.tower.preprocess_cfg, blobs)
    [row] = [r for r in report.rows if r["kind"] == "hostile jpegs"]
    assert row["crashed"] == {"index": 9, "kind": victim[0], "exit_code": -signal.SIGSEGV}
    assert sum(row["outcomes"].values()) == 9, "the nine before it were each decoded or refused"


def test_preprocess_bench_prints_its_table() -> None:
    out = run("bench/preprocess_bench.py", "--repeats", "1")
    assert all(mode in out for mode in ("exact ", "fast-no-draft ", "fast "))


def test_cpu_bench_floor_and_counters() -> None:
    """cpu_bench's own pieces, without its broker and S3 server run (that takes minutes): the bare decode gives
    the model's square, and the /proc counters read this process."""
    import os

    from bench.cpu_bench import bare_decode
    from harness.cpu_time import box_busy_cpu, thread_cpu, thread_groups, tree_cpu
    from harness.photos import photo_corpus

    _, jpeg = photo_corpus(long_sides=(1024,), qualities=(85,))[0]
    assert bare_decode(jpeg, 224).size == (224, 224)
    pid = os.getpid()
    assert tree_cpu(pid) > 0 and thread_cpu(pid, pid) > 0 and box_busy_cpu() > 0
    assert thread_groups(pid)["thread:main"] == pytest.approx(thread_cpu(pid, pid), rel=0.5)


def test_encode_bench_prints_a_row_per_embedding_size() -> None:
    out = run("bench/encode_bench.py", "--dims", "8,512", "--calls", "20", "--repeats", "1")
    assert "| 8 |" in out and "| 512 |" in out


def test_decode_bench_prints_a_row_per_message_with_the_stdlib_parser() -> None:
    out = run("bench/decode_bench.py", "--calls", "20", "--repeats", "1")
    assert "json.loads µs" in out and "| plain |" in out and "| with metadata |" in out


def test_a_worker_started_for_another_tree_imports_that_trees_code(tmp_path: Path) -> None:
    """cpu_bench --trees: run from this checkout, `python -m` must still take the worker from the tree."""
    from harness.workers import tree_env

    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__main__.py").write_text("import worker, sys; print(worker.__file__)\n")
    (tmp_path / "worker" / "__init__.py").write_text("")
    done = subprocess.run([sys.executable, "-m", "worker"], cwd=ROOT, env=os.environ | tree_env(tmp_path),
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == str(tmp_path / "worker" / "__init__.py")


def test_cpu_bench_judges_the_targets_on_the_median_of_each_settings_turns() -> None:
    import argparse

    from bench.cpu_bench import RunFigures, report

    def run_of(main_us: float, ratio: float, img_per_s: float, workers: int = 1) -> RunFigures:
        return RunFigures(preprocess_in="threads", preprocess_workers=workers, records=100, img_per_s=img_per_s,
                          worker_cpu_s=ratio * 1e-3, main_cpu_s=main_us * 1e-6, broker_cpu_s=0.0, s3_cpu_s=0.0,
                          box_busy_share=0.5, threads={"main": main_us * 1e-6})

    turns = [run_of(110, 1.5, 300), run_of(45, 1.2, 310), run_of(48, 1.25, 290)]
    args = argparse.Namespace(size=224, photos=16, prepare_s=1e-3)
    out = report(args, 1e-3, turns, (0.0, 0.0))
    assert "Medians over the turns" in out and "| threads | 1 | 300 | 300.0 | 1.25 |" in out
    assert "main thread: 48 µs per record (target <= 50 µs): met" in out, "one bad turn out of three is noise"
    assert "worker CPU per record / bare decode: 1.25x (target <= 1.3x): met" in out
    single = report(args, 1e-3, turns[:1], (0.0, 0.0))
    assert "Medians" not in single and "main thread: 110 µs per record (target <= 50 µs): NOT met" in single


def test_the_loop_probe_counts_the_loops_steps_where_asked_and_cpu_bench_tabulates_them(tmp_path: Path) -> None:
    """cpu_bench --loop-profile: bench/loop_probe's sitecustomize wraps the loop's steps in a worker
    started with CLIP_LOOP_PROFILE, and the main thread's garbage collections once the loop has begun;
    writes their calls and thread-CPU time at exit from the process that ran the loop, and nothing
    anywhere else."""
    from bench.cpu_bench import LOOP_PROBE, RunFigures, _loop_rows, loop_steps

    script = ("from worker.stream.loop import Runtime\nfrom worker.images.wake import Wake\n"
              "wake = Wake()\nwake.signal()\nwake.wait(1.0)\nwake.close()\n"
              "try:\n    Runtime.step(None)\nexcept AttributeError:\n    pass\nimport gc\ngc.collect()\n")
    probe = {"PYTHONPATH": str(LOOP_PROBE)}
    written, unasked = tmp_path / "loop.json", tmp_path / "unasked.json"
    subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                   env=os.environ | probe | {"CLIP_LOOP_PROFILE": str(written)}, check=True, timeout=120)
    subprocess.run([sys.executable, "-c", "import worker.images.wake"], cwd=ROOT,
                   env=os.environ | probe | {"CLIP_LOOP_PROFILE": str(unasked)}, check=True, timeout=120)
    assert not unasked.exists(), "a process that never ran the loop writes nothing"
    steps = loop_steps(written, records=2)
    counted = {"Runtime.step", "Wake.wait", "gc, generation 2"}  # gc.collect(), once the loop had begun
    assert counted <= set(steps) <= counted | {"gc, generation 0", "gc, generation 1"}
    per_record, per_call = steps["Wake.wait"]
    assert 0 < per_record < per_call and per_call < 0.5, "thread CPU, not the wall time of a wait"

    run = RunFigures(preprocess_in="threads", preprocess_workers=1, records=2, img_per_s=1.0, worker_cpu_s=0.0,
                     main_cpu_s=0.0, broker_cpu_s=0.0, s3_cpu_s=0.0, box_busy_share=0.0, threads={},
                     loop={"Wake.wait": (20e-6, 40e-6)})
    assert _loop_rows([run])[-1] == "| Wake.wait | 20.0 (40.0) |"
