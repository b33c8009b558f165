"""Batch mode's throughput next to the stream's, on the same images, model and batch size.

Stream: bench/pipeline_bench.py's end-to-end run (a real broker and moto's S3 server, `python -m worker`,
N messages over the photo corpus). Batch: `python -m worker embed` on a manifest of the same N
inputs, the same objects on a moto S3 server in one run and the same photos as local files in the
other, written as Avro parts. All three rates are measured alike: from the outputs' embedded_at
stamps, the first 10% dropped, so that model load and start-up are not counted.

    .venv/bin/python bench/batch_bench.py --model tiny-vit --images 1000 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import fastavro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

from bench.pipeline_bench import bench_settings, end_to_end, steady_rate
from harness.photos import photo_corpus
from harness.s3_server import S3Server, fill_bucket
from harness.workers import settings_env
from worker.config import Settings


def batch_rate(settings: Settings, uris: list[str], *, env: dict[str, str], folder: Path) -> float:
    """`clip-worker embed` on a manifest of `uris` (ids m0, m1, ...); img/s from its Avro rows' stamps."""
    folder.mkdir()
    manifest = folder / "inputs.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"m{i}", "uri": uri}) + "\n" for i, uri in enumerate(uris)))
    with (folder / "embed.log").open("wb") as log:
        subprocess.run([sys.executable, "-m", "worker", "embed", str(manifest), "--output", str(folder / "out"),
                        "--format", "avro", "--part-size", "1000000"],
                       env=os.environ | settings_env(settings) | env, stdout=log, stderr=log, check=True)
    stamps = []
    for part in (folder / "out").glob("part-*.avro"):
        with part.open("rb") as file:
            stamps.extend(record["embedded_at"].timestamp() for record in fastavro.reader(file))  # type: ignore[call-overload,index]
    assert len(stamps) == len(uris), f"{len(stamps)} of {len(uris)} embedded: see {folder / 'embed.log'}"
    return steady_rate(sorted(stamps))


def from_s3(settings: Settings, images: list[tuple[str, bytes]], n: int, folder: Path) -> float:
    with S3Server() as s3:
        fill_bucket(s3, "bench", images)
        s3_settings = settings.s3.model_copy(update={"endpoint_url": s3.endpoint_url})
        uris = [f"s3://bench/{images[i % len(images)][0]}" for i in range(n)]
        return batch_rate(settings.model_copy(update={"s3": s3_settings}), uris, env=s3.env(), folder=folder)


def from_files(settings: Settings, images: list[tuple[str, bytes]], n: int, folder: Path) -> float:
    photos = folder.with_name(folder.name + "-photos")
    photos.mkdir()
    for name, data in images:
        (photos / name).write_bytes(data)
    uris = [str(photos / images[i % len(images)][0]) for i in range(n)]
    return batch_rate(settings, uris, env={}, folder=folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mode", choices=["fast", "exact"], default="fast")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(args.model, Path(tmp), batch=args.batch, mode=args.mode)
        images = photo_corpus()
        stream = end_to_end(settings, images, messages=args.images, log=Path(tmp) / "worker.log")
        s3 = from_s3(settings, images, args.images, Path(tmp) / "batch-s3")
        files = from_files(settings, images, args.images, Path(tmp) / "batch-files")
    print("| model | mode | batch | images | stream img/s | batch from S3 img/s | batch from files img/s "
          "| S3 batch / stream | files batch / stream |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.model} | {args.mode} | {args.batch} | {args.images} | {stream:.1f} | {s3:.1f} | {files:.1f} "
          f"| {s3 / stream:.2f} | {files / stream:.2f} |")


if __name__ == "__main__":
    main()
