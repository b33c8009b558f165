"""`clip-worker enqueue SOURCE...`: an s3:// prefix or a manifest into the input topic, for the workers.

The producing is worker/batch/enqueue.py's; this module holds the command's options and refuses, before
anything is listed, a source the workers could not read (they read S3 only, so a local file or folder
cannot be enqueued).
"""

from __future__ import annotations

import argparse
import sys

from worker.batch.enqueue import enqueue
from worker.batch.inputs import InputSource, read_inputs
from worker.config import Settings
from worker.errors import ConfigError
from worker.s3.reader import S3Reader, make_s3_client

NAME = "enqueue"
SUMMARY = "produce an s3:// prefix or a manifest into the input topic"
DESCRIPTION = """\
Produce one input message per object under each s3:// prefix, or per line of each manifest (.jsonl),
to the input topic, as any upstream producer writes them; the running workers embed them. Workers
read S3 only: a manifest line naming a local path is refused (a line on stderr).

Settings (Kafka, S3) come from CLIP_WORKER_* environment variables. Prints the counts; exit code 0
when every input was enqueued, 1 when one was refused, 2 on an invalid option, source or setting."""
EXAMPLE = "clip-worker enqueue s3://bucket/2024/ --dry-run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="an s3:// prefix or a manifest (.jsonl)")
    parser.add_argument("--dry-run", action="store_true", help="count what would be enqueued, produce nothing")


def handle(settings: Settings, args: argparse.Namespace) -> int:
    sources = [InputSource.parse(argument) for argument in args.sources]
    if not sources or any(source.kind not in ("s3-prefix", "manifest") for source in sources):
        raise ConfigError("SOURCE", "enqueue takes s3:// prefixes and manifests: the workers read S3 only")
    s3 = S3Reader(client=make_s3_client(settings.s3), settings=settings.s3)
    tally = enqueue(read_inputs(sources, s3=s3), kafka=settings.kafka, dry_run=args.dry_run, report=sys.stderr)
    print(tally.summary(topic=settings.kafka.input_topic, dry_run=args.dry_run), flush=True)
    return 1 if tally.refused else 0
