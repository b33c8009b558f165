"""`clip-worker embed` and `clip-worker enqueue`: their options, checked before the model loads, and
what each runs.

    clip-worker embed SOURCE... [--output DIR] [--format jsonl|avro|parquet] [--part-size N] [--overwrite]
    clip-worker enqueue SOURCE... [--dry-run]

SOURCE is a file, a folder, a manifest (.jsonl) or an s3://bucket/prefix (inputs.py). embed writes one
JSON line per input to stdout, or parts to DIR (sinks.py), and exits 1 when any input failed;
enqueue takes S3 sources only. A bad option or source exits 2 before anything is loaded, torch included
(the engine and the batch run are imported by `embed` itself).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from worker.batch.enqueue import enqueue
from worker.batch.formats import FORMATS, FormatName, part_format
from worker.batch.inputs import InputSource, read_inputs
from worker.batch.progress import Progress, Tally
from worker.batch.sinks import PartSink, RowSink, StdoutSink
from worker.config import Settings
from worker.errors import ConfigError
from worker.formats.encoding import embedding_schema
from worker.s3.source import S3Source, make_s3_client

if TYPE_CHECKING:
    from worker.engine import Embedder

DEFAULT_PART_SIZE = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, help="embed: a folder of parts (default: JSON lines to stdout)")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="embed: the parts' format")
    parser.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE, help="embed: rows per part")
    parser.add_argument("--overwrite", action="store_true", help="embed: delete the output's parts first")
    parser.add_argument("--dry-run", action="store_true", help="enqueue, replay: count, produce nothing")


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    sources: tuple[InputSource, ...]
    output: Path | None = None
    format: FormatName = "jsonl"
    part_size: int = DEFAULT_PART_SIZE
    overwrite: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EmbedOptions:
        """Raises ConfigError naming the option."""
        if not args.sources:
            raise ConfigError("SOURCE", "name files, folders, manifests or s3:// prefixes to embed")
        if args.output is None and args.format != "jsonl":
            raise ConfigError("--output", f"{args.format} is written to files: name a folder")
        if args.output is None and args.overwrite:
            raise ConfigError("--overwrite", "only with --output")
        if args.part_size < 1:
            raise ConfigError("--part-size", "must be at least 1")
        return cls(sources=tuple(InputSource.parse(a) for a in args.sources), output=args.output,
                   format=args.format, part_size=args.part_size, overwrite=args.overwrite)


def embed_command(settings: Settings, args: argparse.Namespace) -> int:
    return 1 if embed(settings, EmbedOptions.from_args(args)).failed else 0


def embed(
    settings: Settings, options: EmbedOptions, *, embedder: Embedder | None = None, s3_client: Any | None = None,
    stdout: TextIO | None = None, stderr: TextIO | None = None,
) -> Tally:
    """Embed every input of `options`; rows without an output folder go to `stdout`, the summary line to
    `stderr` (default: the process's). Loads the model (unless given) only once the output has been checked."""
    from worker.batch.run import BatchRun
    from worker.engine import Embedder, frozen_heap, share_cores

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    sink: RowSink
    written: set[str] = set()
    if options.output is None:
        sink = StdoutSink(stdout)
    else:
        fmt = part_format(options.format, schema=embedding_schema(settings.model.output_field))
        parts = PartSink(options.output, fmt=fmt, part_size=options.part_size, overwrite=options.overwrite)
        sink, written = parts, parts.written_ids()
    if embedder is None:  # this process's own: it shares the cores with the preprocess workers
        embedder = Embedder.load(settings.model)
        share_cores(embedder.device, preprocess_workers=settings.model.preprocess_workers)
    s3 = S3Source(client=s3_client or make_s3_client(settings.s3), settings=settings.s3)
    progress = Progress(stderr)
    run = BatchRun(settings=settings, embedder=embedder, sink=sink, written=written, progress=progress, s3=s3)
    try:
        with frozen_heap():
            run.run(read_inputs(options.sources, s3=s3))
    finally:
        sink.close()
        progress.close()
        print(progress.tally.summary(), file=stderr, flush=True)
    return progress.tally


def enqueue_command(settings: Settings, args: argparse.Namespace) -> int:
    sources = [InputSource.parse(argument) for argument in args.sources]
    if not sources or any(source.kind not in ("s3-prefix", "manifest") for source in sources):
        raise ConfigError("SOURCE", "enqueue takes s3:// prefixes and manifests: the workers read S3 only")
    s3 = S3Source(client=make_s3_client(settings.s3), settings=settings.s3)
    tally = enqueue(read_inputs(sources, s3=s3), kafka=settings.kafka, dry_run=args.dry_run, report=sys.stderr)
    print(tally.summary(topic=settings.kafka.input_topic, dry_run=args.dry_run), flush=True)
    return 1 if tally.refused else 0
