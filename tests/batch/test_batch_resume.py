"""A batch run is a process that can die anywhere: SIGKILL it once its first part is written, and the
rerun over the same output writes no id twice and misses none."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from harness.photos import photo_corpus
from tests.test_cli import clip_worker, tiny_env

N_IMAGES = 240
PART_SIZE = 4


def test_a_run_killed_after_its_first_part_resumes_with_no_id_twice_and_none_missing(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    folder, output = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    corpus = photo_corpus(long_sides=(640,), qualities=(85, 95))  # 640 px: slow enough to be caught mid-run
    for i in range(N_IMAGES):
        name, data = corpus[i % len(corpus)]
        (folder / f"{i:04d}-{name}").write_bytes(data)
    env = tiny_env(tiny_checkpoint) | {"CLIP_WORKER_MODEL__PREPROCESS_WORKERS": "1",
                                       "CLIP_WORKER_MODEL__INFERENCE_BATCH_SIZE": str(PART_SIZE)}
    args = ["embed", str(folder), "--output", str(output), "--part-size", str(PART_SIZE)]

    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen([sys.executable, "-m", "worker", *args], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not (output / "part-00000.jsonl").exists():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.002)
    finally:
        first.kill()
        first.wait()
    written = sorted(output.glob("part-*.jsonl"))
    before = sum(len(path.read_text().splitlines()) for path in written)
    assert PART_SIZE <= before < N_IMAGES, "killed mid-run, after its first part"
    assert all(len(path.read_text().splitlines()) == PART_SIZE for path in written), "only whole parts are visible"

    rerun = clip_worker(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {before} (already in the output)" in rerun.stderr.splitlines()[-1]
    ids = [json.loads(line)["id"] for path in output.glob("part-*.jsonl") for line in path.read_text().splitlines()]
    assert len(ids) == len(set(ids)), "no id twice"
    assert set(ids) == {str(path) for path in folder.iterdir()}, "no id missing"
    assert not list(output.glob(".*.tmp")), "the rerun cleared what the kill left half-written"
