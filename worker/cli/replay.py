"""`clip-worker replay`: dead letters back to the input topic, once what failed them is fixed.

The reading, filtering and producing are worker/replay.py's; this module holds the command's options
(the filters, --to and --dry-run) and turns them into its ReplayOptions.
"""

from __future__ import annotations

import argparse

from worker.config import Settings
from worker.stream.replay import ReplayOptions, instant, replay_command

NAME = "replay"
SUMMARY = "dead letters back to the input, once their cause is fixed"
DESCRIPTION = """\
Read the dead-letter topic from its beginning to its current end and produce each dead letter that
matches every filter given, as the original record was (key, value, headers, timestamp), to the
input topic or --to. Dead letters cut to fit their topic are counted, never replayed. Replay keeps
no position: a second run replays the same records again, so keep runs apart with --since/--until.

Settings (Kafka) come from CLIP_WORKER_* environment variables. Prints the counts by stage and
exception class; exit code 0 when every replayed record was acknowledged, 1 when one was refused,
2 on an invalid option or setting."""
EXAMPLE = "clip-worker replay --stage fetch --exception SourceNotFound --since 2024-06-01T00:00 --dry-run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", action="append", default=[], help="only this stage, e.g. fetch (repeatable)")
    parser.add_argument("--exception", action="append", default=[], metavar="CLASS",
                        help="only this exception class, e.g. SourceNotFound (repeatable)")
    parser.add_argument("--since", type=instant, metavar="TIME",
                        help="original timestamp at or after this ISO 8601 time (UTC unless it has a zone)")
    parser.add_argument("--until", type=instant, metavar="TIME", help="original timestamp before this time")
    parser.add_argument("--to", metavar="TOPIC", help="produce here instead of the input topic")
    parser.add_argument("--dry-run", action="store_true", help="count what would be replayed, produce nothing")


def options(args: argparse.Namespace) -> ReplayOptions:
    return ReplayOptions(to_topic=args.to, stages=frozenset(args.stage), exceptions=frozenset(args.exception),
                         since_ms=args.since, until_ms=args.until, dry_run=args.dry_run)


def handle(settings: Settings, args: argparse.Namespace) -> int:
    return replay_command(settings.kafka, options(args))
