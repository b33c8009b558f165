"""`clip-worker embed SOURCE...`: embed files, folders, manifests or s3:// prefixes once, without Kafka.

Its options are checked here, before anything is loaded (torch included: worker/batch/commands.py
imports the engine only when the run starts), so a wrong option or source exits 2 at once. The run
itself is worker/batch/commands.py's embed(); this module turns the command line into its
EmbedOptions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.batch.commands import DEFAULT_PART_SIZE, EmbedOptions, embed
from worker.batch.formats import FORMATS
from worker.batch.inputs import InputSource
from worker.config import Settings
from worker.errors import ConfigError

NAME = "embed"
SUMMARY = "embed files, folders, manifests or s3:// prefixes once"
DESCRIPTION = """\
Embed images once with the worker's model and stages, without Kafka. Each SOURCE is:

  s3://bucket/prefix   every object under the prefix (its id is its s3:// URI)
  FOLDER               every image file under it, recursively (its id is its path)
  FILE.jsonl           a manifest: an id, a uri (s3:// or local) and metadata per line
  FILE                 that file

Without --output, one JSON line per input goes to stdout. With --output, rows are written to a folder
in parts of --part-size rows, each part whole; a second run over the same folder skips the inputs
already written, so an interrupted run resumes. Settings (the model, S3) come from CLIP_WORKER_*
environment variables. Exit code 0 when every input was embedded, 1 when one failed (it has an error
row), 2 on an invalid option, source or setting."""
EXAMPLE = "clip-worker embed photos/ s3://bucket/2024/ --output embeddings/ --format parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="a file, folder, manifest or s3:// prefix")
    parser.add_argument("--output", type=Path, metavar="DIR", help="a folder of parts (default: JSON lines to stdout)")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="the parts' format (default: jsonl)")
    parser.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE, metavar="N",
                        help=f"rows per part (default: {DEFAULT_PART_SIZE})")
    parser.add_argument("--overwrite", action="store_true", help="delete the output folder's parts first")


def options(args: argparse.Namespace) -> EmbedOptions:
    """Raises ConfigError naming the option."""
    if args.output is None and args.format != "jsonl":
        raise ConfigError("--output", f"{args.format} is written to files: name a folder")
    if args.output is None and args.overwrite:
        raise ConfigError("--overwrite", "only with --output")
    if args.part_size < 1:
        raise ConfigError("--part-size", "must be at least 1")
    return EmbedOptions(sources=tuple(InputSource.parse(a) for a in args.sources), output=args.output,
                        format=args.format, part_size=args.part_size, overwrite=args.overwrite)


def handle(settings: Settings, args: argparse.Namespace) -> int:
    """Options first (exit 2 before anything loads), then the weights, fetched as `run` fetches them."""
    from worker.weights import fetch_weights, with_weights

    embed_options = options(args)
    model = with_weights(settings, fetch_weights(settings))
    return 1 if embed(settings.model_copy(update={"model": model}), embed_options).failed else 0
